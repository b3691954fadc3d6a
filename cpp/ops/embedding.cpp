#include "ops/embedding.hpp"

#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/isa.hpp"

namespace rmt::ops {

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t N, int64_t V, int64_t C,
                       T scale) {
    for (int64_t n = 0; n < N; ++n) {
        // A bad id would read outside the table: refuse it even if the caller did not check.
        if (ids[n] < 0 || ids[n] >= V)
            throw std::out_of_range("token id " + std::to_string(ids[n]) + " outside [0, " +
                                    std::to_string(V) + ")");
        std::memcpy(out + n * C, table + int64_t(ids[n]) * C, sizeof(T) * C);
        kernels::vec<T>().scale(out + n * C, scale, C);
    }
}

template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int64_t N, int64_t V,
                        int64_t C, T scale) {
    // Serial over tokens: two tokens with the same id add into the same row.
    for (int64_t n = 0; n < N; ++n) {
        if (ids[n] < 0 || ids[n] >= V)
            throw std::out_of_range("token id " + std::to_string(ids[n]) + " outside [0, " +
                                    std::to_string(V) + ")");
        kernels::vec<T>().axpy(scale, dout + n * C, dtable + int64_t(ids[n]) * C, C);
    }
}

template void embedding_forward<float>(float*, const int32_t*, const float*, int64_t, int64_t, int64_t, float);
template void embedding_forward<double>(double*, const int32_t*, const double*, int64_t, int64_t, int64_t, double);
template void embedding_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t, int64_t, float);
template void embedding_backward<double>(double*, const double*, const int32_t*, int64_t, int64_t, int64_t, double);

}  // namespace rmt::ops
