// Cross-entropy over selected rows, fused with the softmax (log-sum-exp saved for backward).
#pragma once
#include <cstdint>

namespace rmt::ops {

// losses (N,) = weight_n * (lse_n - logits[n, target_n]) for selected rows, 0 for rows whose
// target == ignore_index; lse (N,) saved. weights (N,) is a loss mask / per-row weight, or null
// (all 1). Returns the number of selected rows (the caller's normaliser for a mean).
template <typename T>
int64_t cross_entropy_forward(T* losses, T* lse, const T* logits, const int32_t* targets,
                              const T* weights, int64_t N, int64_t V, int64_t ignore_index);

// Accumulates dlogits (N, V) += dlosses_n * weight_n * (softmax(logits_n) - onehot(target_n)).
template <typename T>
void cross_entropy_backward(T* dlogits, const T* dlosses, const T* logits, const T* lse,
                            const int32_t* targets, const T* weights, int64_t N, int64_t V,
                            int64_t ignore_index);

}  // namespace rmt::ops
