// ReLU and GELU (exact erf form, or PyTorch's approximate='tanh').
#pragma once
#include <cstdint>

namespace rmt::ops {

template <typename T>
void relu_forward(T* out, const T* inp, int64_t n);
// dinp += dout * (inp > 0)
template <typename T>
void relu_backward(T* dinp, const T* dout, const T* inp, int64_t n);

template <typename T>
void gelu_forward(T* out, const T* inp, int64_t n, bool tanh_approximation);
// dinp += dout * gelu'(inp)
template <typename T>
void gelu_backward(T* dinp, const T* dout, const T* inp, int64_t n, bool tanh_approximation);

}  // namespace rmt::ops
