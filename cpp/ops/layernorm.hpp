// Layer norm over the last dimension (PyTorch's nn.LayerNorm, biased variance).
#pragma once
#include <cstdint>

namespace rmt::ops {

// out (N, C) = (inp - mean) * rstd * weight + bias; saves mean (N,), rstd (N,) for backward.
template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias,
                       int64_t N, int64_t C, T eps);

// Accumulates dinp (N, C), dweight (C,), dbias (C,). With overwrite_dinp, dinp is written
// instead (each row zeroed in cache by the thread that owns it; old contents never read).
template <typename T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                        const T* mean, const T* rstd, int64_t N, int64_t C,
                        bool overwrite_dinp = false);

}  // namespace rmt::ops
