// Token embedding with the sqrt(C) scale of Transformer-XL: out = table[ids] * scale.
#pragma once
#include <cstdint>

namespace rmt::ops {

// out (N, C); ids (N,) in [0, V); table (V, C)
template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t N, int64_t V, int64_t C,
                       T scale);

// dtable (V, C) += scatter of dout (N, C) * scale by ids. Accumulates.
template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int64_t N, int64_t V,
                        int64_t C, T scale);

}  // namespace rmt::ops
