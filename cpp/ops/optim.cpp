#include "ops/optim.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/isa.hpp"
#include "kernels/threads.hpp"

namespace rmt::ops {
namespace {

// Flat buffers are cut into fixed chunks: threads take whole chunks, and reductions add the
// per-chunk partial sums in chunk order, so results do not depend on the thread count.
constexpr int64_t kChunk = 8192;

}  // namespace

template <typename T>
void adam_step(T* param, const T* grad, T* m, T* v, int64_t n, int64_t step, const AdamHyper<T>& h) {
    const auto& vec = kernels::vec<T>();
    // PyTorch (torch/optim/adam.py, _single_tensor_adam): bias_correction1 = 1 - beta1^step,
    // step_size = lr / bias_correction1, denom = sqrt(v) / sqrt(1 - beta2^step) + eps.
    const T bias_correction1 = T(1) - T(std::pow(double(h.beta1), double(step)));
    const T bias_correction2_sqrt = T(std::sqrt(1.0 - std::pow(double(h.beta2), double(step))));
    const bool l2 = !h.decoupled_weight_decay && h.weight_decay != T(0);
    // AdamW: param *= 1 - lr * wd before the update; Adam: grad += wd * param instead.
    const T decay = h.decoupled_weight_decay ? T(1) - h.lr * h.weight_decay : T(1);
    const int64_t n_chunks = (n + kChunk - 1) / kChunk;
    const bool parallel = kernels::worth_threads(n, 4 * kChunk);
#pragma omp parallel if (parallel) num_threads(kernels::get_num_threads())
    {
        std::vector<T> g_l2(l2 ? kChunk : 0);
#pragma omp for schedule(static)
        for (int64_t c = 0; c < n_chunks; ++c) {
            const int64_t i0 = c * kChunk, len = std::min(kChunk, n - i0);
            const T* g = grad + i0;
            if (l2) {
                for (int64_t i = 0; i < len; ++i) g_l2[i] = grad[i0 + i] + h.weight_decay * param[i0 + i];
                g = g_l2.data();
            }
            vec.adamw(param + i0, g, m + i0, v + i0, len, h.lr, h.beta1, h.beta2, h.eps, decay,
                      bias_correction1, bias_correction2_sqrt);
        }
    }
}

template <typename T>
double grad_norm(const T* grad, int64_t n) {
    const int64_t n_chunks = (n + kChunk - 1) / kChunk;
    std::vector<double> partial(n_chunks);
    const bool parallel = kernels::worth_threads(n, 4 * kChunk);
#pragma omp parallel for schedule(static) if (parallel) num_threads(kernels::get_num_threads())
    for (int64_t c = 0; c < n_chunks; ++c) {
        const int64_t i0 = c * kChunk, i1 = std::min(n, i0 + kChunk);
        // Eight running sums, added in a fixed order: one sum is a chain of dependent double
        // adds, 4 cycles each, which made this pass 5x slower than reading the gradients.
        double s[8] = {};
        int64_t i = i0;
        for (; i + 8 <= i1; i += 8)
            for (int j = 0; j < 8; ++j) s[j] += double(grad[i + j]) * double(grad[i + j]);
        for (; i < i1; ++i) s[0] += double(grad[i]) * double(grad[i]);
        partial[c] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    }
    double total = 0;
    for (double s : partial) total += s;
    return std::sqrt(total);
}

template <typename T>
void clip_grad_norm_given(T* grad, int64_t n, double max_norm, double norm) {
    // torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), applied when below 1.
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) {
        const T s = T(coef);
        const auto& vec = kernels::vec<T>();
        const int64_t n_chunks = (n + kChunk - 1) / kChunk;
        const bool parallel = kernels::worth_threads(n, 4 * kChunk);
#pragma omp parallel for schedule(static) if (parallel) num_threads(kernels::get_num_threads())
        for (int64_t c = 0; c < n_chunks; ++c)
            vec.scale(grad + c * kChunk, s, std::min(kChunk, n - c * kChunk));
    }
}

template <typename T>
double clip_grad_norm(T* grad, int64_t n, double max_norm) {
    const double norm = grad_norm(grad, n);
    clip_grad_norm_given(grad, n, max_norm, norm);
    return norm;
}

template <typename T>
void clip_grad_value(T* grad, int64_t n, double clip_value) {
    const T hi = T(clip_value), lo = -hi;
    for (int64_t i = 0; i < n; ++i) grad[i] = std::min(std::max(grad[i], lo), hi);
}

template void adam_step<float>(float*, const float*, float*, float*, int64_t, int64_t, const AdamHyper<float>&);
template void adam_step<double>(double*, const double*, double*, double*, int64_t, int64_t, const AdamHyper<double>&);
template double grad_norm<float>(const float*, int64_t);
template double grad_norm<double>(const double*, int64_t);
template double clip_grad_norm<float>(float*, int64_t, double);
template double clip_grad_norm<double>(double*, int64_t, double);
template void clip_grad_norm_given<float>(float*, int64_t, double, double);
template void clip_grad_norm_given<double>(double*, int64_t, double, double);
template void clip_grad_value<float>(float*, int64_t, double);
template void clip_grad_value<double>(double*, int64_t, double);

}  // namespace rmt::ops
