#include "ops/linear.hpp"

#include <algorithm>
#include <vector>

#include "kernels/gemm.hpp"
#include "kernels/threads.hpp"

namespace rmt::ops {
namespace {

// Fork threads only for work worth it (a few tens of thousands of elements), and never from
// inside a parallel region.
bool worth_threads(int64_t work) {
    return work >= (int64_t(1) << 15) && !kernels::in_parallel_region() &&
           kernels::get_num_threads() > 1;
}

}  // namespace

template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, int64_t N, int64_t IC,
                    int64_t OC) {
    if (bias) {
        // out = bias broadcast, then out += inp W^T: the bias rides in as beta = 1. The
        // broadcast is split by rows between the threads, as the GEMM then splits its rows.
#pragma omp parallel for schedule(static) if (worth_threads(N * OC))
        for (int64_t n = 0; n < N; ++n)
            for (int64_t o = 0; o < OC; ++o) out[n * OC + o] = bias[o];
        kernels::gemm<T>(false, true, N, OC, IC, T(1), inp, IC, weight, IC, T(1), out, OC);
    } else {
        kernels::gemm<T>(false, true, N, OC, IC, T(1), inp, IC, weight, IC, T(0), out, OC);
    }
}

template <typename T>
void linear_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     int64_t N, int64_t IC, int64_t OC, bool overwrite_dinp) {
    // dinp += dout @ W           (out = inp W^T); beta = 0 never reads dinp
    if (dinp)
        kernels::gemm<T>(false, false, N, IC, OC, T(1), dout, OC, weight, IC,
                         overwrite_dinp ? T(0) : T(1), dinp, IC);
    // dweight += dout^T @ inp
    kernels::gemm<T>(true, false, OC, IC, N, T(1), dout, OC, inp, IC, T(1), dweight, IC);
    // dbias += sum over rows of dout: parts of kRowsPerPart rows sum into their own slots, added
    // in order, so the sum does not depend on the thread count
    if (dbias) {
        constexpr int64_t kRowsPerPart = 64;
        const int64_t parts = (N + kRowsPerPart - 1) / kRowsPerPart;
        std::vector<T> part_sums(size_t(parts * OC));
#pragma omp parallel for schedule(static) if (worth_threads(N * OC))
        for (int64_t part = 0; part < parts; ++part) {
            T* __restrict__ sum = part_sums.data() + part * OC;
            std::fill(sum, sum + OC, T(0));
            for (int64_t n = part * kRowsPerPart; n < std::min(N, (part + 1) * kRowsPerPart); ++n) {
                const T* __restrict__ row = dout + n * OC;
                for (int64_t o = 0; o < OC; ++o) sum[o] += row[o];
            }
        }
        for (int64_t part = 0; part < parts; ++part)
            for (int64_t o = 0; o < OC; ++o) dbias[o] += part_sums[size_t(part * OC + o)];
    }
}

template void linear_forward<float>(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t);
template void linear_forward<double>(double*, const double*, const double*, const double*, int64_t, int64_t, int64_t);
template void linear_backward<float>(float*, float*, float*, const float*, const float*, const float*, int64_t, int64_t, int64_t, bool);
template void linear_backward<double>(double*, double*, double*, const double*, const double*, const double*, int64_t, int64_t, int64_t, bool);

}  // namespace rmt::ops
