#include "ops/layernorm.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

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
    // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dout * weight;
    // dweight += sum_n dout * xhat, dbias += sum_n dout.
    // The parameter sums are taken in the same pass as dx, while the row is in cache: each part
    // of kRowsPerPart rows sums into its own slot, and the slots are added in order at the end,
    // so the sums do not depend on the thread count (a second pass over all of dout and inp,
    // column block by column block, cost more than dx itself at 2304 x 128).
    constexpr int64_t kRowsPerPart = 64;
    const int64_t parts = (N + kRowsPerPart - 1) / kRowsPerPart;
    std::vector<T> part_sums(size_t(parts * 2 * C));
    const auto& vec = kernels::vec<T>();
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t part = 0; part < parts; ++part) {
        T* __restrict__ dw = part_sums.data() + part * 2 * C;
        T* __restrict__ db = dw + C;
        std::fill(dw, dw + 2 * C, T(0));
        for (int64_t n = part * kRowsPerPart; n < std::min(N, (part + 1) * kRowsPerPart); ++n) {
            if (overwrite_dinp) std::fill(dinp + n * C, dinp + (n + 1) * C, T(0));
            vec.layernorm_row_backward(dinp + n * C, dout + n * C, inp + n * C, weight, mean[n],
                                       rstd[n], C);
            const T* __restrict__ x = inp + n * C;
            const T* __restrict__ dy = dout + n * C;
            const T m = mean[n], r = rstd[n];
            for (int64_t c = 0; c < C; ++c) {
                dw[c] += dy[c] * ((x[c] - m) * r);
                db[c] += dy[c];
            }
        }
    }
    for (int64_t part = 0; part < parts; ++part) {
        const T* dw = part_sums.data() + part * 2 * C;
        const T* db = dw + C;
        for (int64_t c = 0; c < C; ++c) {
            dweight[c] += dw[c];
            dbias[c] += db[c];
        }
    }
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*, const float*, int64_t, int64_t, float);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*, const double*, int64_t, int64_t, double);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*, const float*, const float*, const float*, int64_t, int64_t, bool);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*, const double*, const double*, const double*, int64_t, int64_t, bool);

}  // namespace rmt::ops
