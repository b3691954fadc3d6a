// Softmax over the last dimension under a boolean mask (1 = may attend).
#pragma once
#include <cstdint>

namespace rmt::ops {

// probs (R, N): row r is softmax(scores[r]) over the positions where allowed[r % mask_rows] is 1,
// and 0 elsewhere. A row with nothing allowed is all zeros (no NaN). allowed may be null (no mask).
template <typename T>
void masked_softmax_forward(T* probs, const T* scores, const uint8_t* allowed, int64_t R, int64_t N,
                            int64_t mask_rows);

// Accumulates dscores (R, N) += probs * (dprobs - sum(dprobs * probs)).
template <typename T>
void masked_softmax_backward(T* dscores, const T* dprobs, const T* probs, int64_t R, int64_t N);

}  // namespace rmt::ops
