#include "ops/cross_entropy.hpp"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/isa.hpp"
#include "kernels/threads.hpp"

namespace rmt::ops {
namespace {

// A bad target would index outside the row: refuse it before any thread starts (an exception
// must not escape an OpenMP region), even if the caller did not check.
void check_targets(const int32_t* targets, int64_t N, int64_t V, int64_t ignore_index) {
    for (int64_t n = 0; n < N; ++n)
        if (targets[n] != ignore_index && (targets[n] < 0 || targets[n] >= V))
            throw std::out_of_range("target " + std::to_string(targets[n]) + " at row " +
                                    std::to_string(n) + " outside [0, " + std::to_string(V) + ")");
}

}  // namespace

template <typename T>
int64_t cross_entropy_forward(T* losses, T* lse, const T* logits, const int32_t* targets,
                              const T* weights, int64_t N, int64_t V, int64_t ignore_index) {
    check_targets(targets, N, V, ignore_index);
    const auto& vec = kernels::vec<T>();
    const bool parallel = kernels::worth_threads(N * V);
    int64_t selected = 0;
#pragma omp parallel if (parallel) reduction(+ : selected) num_threads(kernels::get_num_threads())
    {
        std::vector<T> row(V);   // exp_shift_sum works in place: a scratch copy of the row
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            const T* x = logits + n * V;
            // lse = max + log(sum exp(x - max))
            const T mx = vec.max(x, V);
            std::memcpy(row.data(), x, sizeof(T) * V);
            const T l = mx + std::log(vec.exp_shift_sum(row.data(), mx, V));
            lse[n] = l;
            const T w = weights ? weights[n] : T(1);
            if (targets[n] == ignore_index) {
                losses[n] = T(0);
                continue;
            }
            losses[n] = w * (l - x[targets[n]]);
            if (w != T(0)) ++selected;
        }
    }
    return selected;
}

template <typename T>
void cross_entropy_backward(T* dlogits, const T* dlosses, const T* logits, const T* lse,
                            const int32_t* targets, const T* weights, int64_t N, int64_t V,
                            int64_t ignore_index) {
    check_targets(targets, N, V, ignore_index);
    const auto& vec = kernels::vec<T>();
    const bool parallel = kernels::worth_threads(N * V);
#pragma omp parallel if (parallel) num_threads(kernels::get_num_threads())
    {
        std::vector<T> prob(V);
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            if (targets[n] == ignore_index) continue;
            // loss = w (lse - x[t])  ->  dx = dloss * w * (softmax(x) - onehot(t))
            const T g = dlosses[n] * (weights ? weights[n] : T(1));
            if (g == T(0)) continue;
            std::memcpy(prob.data(), logits + n * V, sizeof(T) * V);
            vec.exp_shift_sum(prob.data(), lse[n], V);   // softmax = exp(x - lse)
            T* dx = dlogits + n * V;
            vec.axpy(g, prob.data(), dx, V);
            dx[targets[n]] -= g;
        }
    }
}

template int64_t cross_entropy_forward<float>(float*, float*, const float*, const int32_t*, const float*, int64_t, int64_t, int64_t);
template int64_t cross_entropy_forward<double>(double*, double*, const double*, const int32_t*, const double*, int64_t, int64_t, int64_t);
template void cross_entropy_backward<float>(float*, const float*, const float*, const float*, const int32_t*, const float*, int64_t, int64_t, int64_t);
template void cross_entropy_backward<double>(double*, const double*, const double*, const double*, const int32_t*, const double*, int64_t, int64_t, int64_t);

}  // namespace rmt::ops
