// Inverted dropout with a counter-based RNG: element i keeps iff hash(seed, offset + i) >= p, so
// the mask depends only on (seed, offset, i): reproducible whatever the thread count.
#pragma once
#include <cstdint>

namespace rmt::ops {

// out (n,) = inp * keep / (1 - p); keep (n,) receives the 0/1 mask. p in [0, 1).
template <typename T>
void dropout_forward(T* out, uint8_t* keep, const T* inp, int64_t n, T p, uint64_t seed,
                     uint64_t offset);

// dinp += dout * keep / (1 - p)
template <typename T>
void dropout_backward(T* dinp, const T* dout, const uint8_t* keep, int64_t n, T p);

}  // namespace rmt::ops
