#include "ops/layernorm.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/isa.hpp"
#include "kernels/threads.hpp"

namespace rmt::ops {
namespace {

// Fork threads only for work worth it, and never from inside a parallel region.
bool worth_threads(int64_t work) {
    return work >= (int64_t(1) << 15) && !kernels::in_parallel_region() &&
           kernels::get_num_threads() > 1;
}

}  // namespace

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias,
                       int64_t N, int64_t C, T eps) {
    const bool parallel = worth_threads(N * C);
    const auto& vec = kernels::vec<T>();
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t n = 0; n < N; ++n)
        vec.layernorm_row(out + n * C, inp + n * C, weight, bias, C, eps, mean + n, rstd + n);
}

template <typename T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                        const T* mean, const T* rstd, int64_t N, int64_t C,
                        bool overwrite_dinp) {
    const bool parallel = worth_threads(N * C);
    // out = xhat * weight + bias, xhat = (x - mean) * rstd:
    // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dout * weight.
    const auto& vec = kernels::vec<T>();
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t n = 0; n < N; ++n) {
        if (overwrite_dinp) std::fill(dinp + n * C, dinp + (n + 1) * C, T(0));
        vec.layernorm_row_backward(dinp + n * C, dout + n * C, inp + n * C, weight, mean[n],
                                   rstd[n], C);
    }
    // dweight += sum_n dout * xhat, dbias += sum_n dout: each thread owns a block of columns and
    // walks the rows in order, so the sums do not depend on the thread count.
    constexpr int64_t block = 64;
    const int64_t n_blocks = (C + block - 1) / block;
#pragma omp parallel for schedule(static) if (parallel && n_blocks > 1)
    for (int64_t b = 0; b < n_blocks; ++b) {
        const int64_t c0 = b * block, c1 = std::min(C, c0 + block);
        for (int64_t n = 0; n < N; ++n) {
            const T* x = inp + n * C;
            const T* dy = dout + n * C;
            const T m = mean[n], r = rstd[n];
            for (int64_t c = c0; c < c1; ++c) {
                dweight[c] += dy[c] * ((x[c] - m) * r);
                dbias[c] += dy[c];
            }
        }
    }
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*, const float*, int64_t, int64_t, float);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*, const double*, int64_t, int64_t, double);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*, const float*, const float*, const float*, int64_t, int64_t, bool);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*, const double*, const double*, const double*, int64_t, int64_t, bool);

}  // namespace rmt::ops
