// ReLU and GELU (exact erf form, or PyTorch's approximate='tanh'), and the residual add.
#pragma once
#include <cstdint>

namespace rmt::ops {

template <typename T>
void relu_forward(T* out, const T* inp, int64_t n);
// dinp += dout * (inp > 0). With overwrite, dinp = dout * (inp > 0): its old contents are never
// read (each thread zeroes its own chunk in cache first), so a fresh buffer needs no zero fill.
template <typename T>
void relu_backward(T* dinp, const T* dout, const T* inp, int64_t n, bool overwrite = false);

template <typename T>
void gelu_forward(T* out, const T* inp, int64_t n, bool tanh_approximation);
// dinp += dout * gelu'(inp); overwrite as relu_backward.
template <typename T>
void gelu_backward(T* dinp, const T* dout, const T* inp, int64_t n, bool tanh_approximation,
                   bool overwrite = false);

// y += x: the residual connections (forward and backward), split between the threads.
template <typename T>
void add_inplace(T* y, const T* x, int64_t n);

}  // namespace rmt::ops
