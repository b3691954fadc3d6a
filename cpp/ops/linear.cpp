#include "ops/linear.hpp"

#include "kernels/gemm.hpp"
#include "kernels/threads.hpp"
#include "ops/row_parts.hpp"

namespace rmt::ops {

template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, int64_t N, int64_t IC,
                    int64_t OC) {
    if (bias) {
        // out = bias broadcast, then out += inp W^T: the bias rides in as beta = 1. The
        // broadcast is split by rows between the threads, as the GEMM then splits its rows.
#pragma omp parallel for schedule(static) if (kernels::worth_threads(N * OC)) \
    num_threads(kernels::get_num_threads())
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
    // dbias += sum over rows of dout, in row parts (the same sums at any thread count)
    if (dbias)
        sum_row_parts(dbias, OC, N, kernels::worth_threads(N * OC),
                      [&](int64_t n, T* __restrict__ slot) {
                          const T* __restrict__ row = dout + n * OC;
                          for (int64_t o = 0; o < OC; ++o) slot[o] += row[o];
                      });
}

template void linear_forward<float>(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t);
template void linear_forward<double>(double*, const double*, const double*, const double*, int64_t, int64_t, int64_t);
template void linear_backward<float>(float*, float*, float*, const float*, const float*, const float*, int64_t, int64_t, int64_t, bool);
template void linear_backward<double>(double*, double*, double*, const double*, const double*, const double*, int64_t, int64_t, int64_t, bool);

}  // namespace rmt::ops
