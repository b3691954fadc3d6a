#include "ops/layernorm.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/isa.hpp"
#include "kernels/threads.hpp"
#include "ops/row_parts.hpp"

namespace rmt::ops {
template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias,
                       int64_t N, int64_t C, T eps) {
    const bool parallel = kernels::worth_threads(N * C);
    const auto& vec = kernels::vec<T>();
    // blocks of rows: the kernel interleaves the rows of a call
    constexpr int64_t kBlockRows = 32;
    const int64_t blocks = (N + kBlockRows - 1) / kBlockRows;
#pragma omp parallel for schedule(static) if (parallel) num_threads(kernels::get_num_threads())
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t n0 = blk * kBlockRows, rows = std::min(kBlockRows, N - n0);
        vec.layernorm_rows(out + n0 * C, inp + n0 * C, weight, bias, rows, C, eps, mean + n0,
                           rstd + n0);
    }
}

template <typename T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                        const T* mean, const T* rstd, int64_t N, int64_t C,
                        bool overwrite_dinp) {
    const bool parallel = kernels::worth_threads(N * C);
    // out = xhat * weight + bias, xhat = (x - mean) * rstd:
    // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dout * weight;
    // dweight += sum_n dout * xhat, dbias += sum_n dout.
    // The parameter sums are taken in the same pass as dx, while the row is in cache (a second
    // pass over all of dout and inp, column block by column block, cost more than dx itself at
    // 2304 x 128): slot = [dweight part | dbias part].
    const auto& vec = kernels::vec<T>();
    std::vector<T> sums(size_t(2 * C), T(0));
    sum_row_parts(sums.data(), 2 * C, N, parallel, [&](int64_t n, T* __restrict__ slot) {
        if (overwrite_dinp) std::fill(dinp + n * C, dinp + (n + 1) * C, T(0));
        vec.layernorm_row_backward(dinp + n * C, dout + n * C, inp + n * C, weight, mean[n],
                                   rstd[n], C);
        const T* __restrict__ x = inp + n * C;
        const T* __restrict__ dy = dout + n * C;
        const T m = mean[n], r = rstd[n];
        for (int64_t c = 0; c < C; ++c) {
            slot[c] += dy[c] * ((x[c] - m) * r);
            slot[C + c] += dy[c];
        }
    });
    for (int64_t c = 0; c < C; ++c) {
        dweight[c] += sums[size_t(c)];
        dbias[c] += sums[size_t(C + c)];
    }
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*, const float*, int64_t, int64_t, float);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*, const double*, int64_t, int64_t, double);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*, const float*, const float*, const float*, int64_t, int64_t, bool);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*, const double*, const double*, const double*, int64_t, int64_t, bool);

}  // namespace rmt::ops
