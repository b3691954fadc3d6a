// Linear layer y = x W^T + b, PyTorch's weight layout (out_features, in_features).
#pragma once
#include <cstdint>

namespace rmt::ops {

// out (N, OC) = inp (N, IC) @ weight (OC, IC)^T + bias (OC,); bias may be null. relu: out =
// relu(that), applied by the GEMM as it stores the finished sums (the ReLU's backward needs only
// out > 0, so the layer keeps no pre-activation).
template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, int64_t N, int64_t IC,
                    int64_t OC, bool relu = false);

// Accumulates: dinp (N, IC) += dout W; dweight (OC, IC) += dout^T inp; dbias (OC,) += sum_n dout.
// Any of dinp, dbias may be null (not needed). With overwrite_dinp, dinp = dout W instead: its
// old contents are never read, so a fresh buffer needs no zero fill first.
template <typename T>
void linear_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     int64_t N, int64_t IC, int64_t OC, bool overwrite_dinp = false);

}  // namespace rmt::ops
