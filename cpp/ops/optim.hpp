// Optimizer steps and gradient clipping on flat buffers (the model keeps all parameters in one
// contiguous buffer, all gradients in another with the same layout).
#pragma once
#include <cstdint>

namespace rmt::ops {

template <typename T>
struct AdamHyper {
    T lr = T(1e-3), beta1 = T(0.9), beta2 = T(0.999), eps = T(1e-8), weight_decay = T(0);
    bool decoupled_weight_decay = false;   // false: Adam (L2 added to the gradient); true: AdamW
};

// One step, PyTorch's torch.optim.Adam / AdamW semantics; step is 1-based (the step being taken).
template <typename T>
void adam_step(T* param, const T* grad, T* m, T* v, int64_t n, int64_t step, const AdamHyper<T>& h);

// The global L2 norm of grad (accumulated in double).
template <typename T>
double grad_norm(const T* grad, int64_t n);

// Scales grad by max_norm / (norm + 1e-6) when norm > max_norm (torch.nn.utils.clip_grad_norm_).
// Returns the norm before clipping.
template <typename T>
double clip_grad_norm(T* grad, int64_t n, double max_norm);

// The same with grad's norm already known (grad_norm's result): the trainer measures it for its
// step statistics first, and a second pass over every gradient to find it again cost as much.
template <typename T>
void clip_grad_norm_given(T* grad, int64_t n, double max_norm, double norm);

// Clamps every gradient to [-clip_value, clip_value].
template <typename T>
void clip_grad_value(T* grad, int64_t n, double clip_value);

}  // namespace rmt::ops
