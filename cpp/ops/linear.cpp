#include "ops/linear.hpp"

#include "kernels/gemm.hpp"
#include "kernels/threads.hpp"
#include "ops/row_parts.hpp"

namespace rmt::ops {

template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, int64_t N, int64_t IC,
                    int64_t OC, bool relu) {
    // out = inp W^T + bias: the GEMM adds the bias as it stores its first K slice (the broadcast
    // pass it replaced wrote and re-read the whole output: 10 MB at the LM model's fc1)
    kernels::gemm<T>(false, true, N, OC, IC, T(1), inp, IC, weight, IC, T(0), out, OC, bias, relu);
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

template void linear_forward<float>(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t, bool);
template void linear_forward<double>(double*, const double*, const double*, const double*, int64_t, int64_t, int64_t, bool);
template void linear_backward<float>(float*, float*, float*, const float*, const float*, const float*, int64_t, int64_t, int64_t, bool);
template void linear_backward<double>(double*, double*, double*, const double*, const double*, const double*, int64_t, int64_t, int64_t, bool);

}  // namespace rmt::ops
