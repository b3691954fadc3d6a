// Serial row kernels shared by the softmax op and the attention ops (which call them per
// (batch, head) from inside their own parallel loop). Internal to cpp/ops.
#pragma once
#include <cstdint>

namespace rmt::ops {

// probs (R, N) = softmax of scores (R, N, row stride scores_stride >= N) under
// allowed[r % mask_rows] (see softmax.hpp); probs may alias scores (in place, stride N).
template <typename T>
void masked_softmax_rows(T* probs, const T* scores, int64_t scores_stride, const uint8_t* allowed,
                         int64_t R, int64_t N, int64_t mask_rows);

// dscores (R, N) (= or +=) scale * probs * (dprobs - <dprobs, probs>); dscores may alias dprobs
// when overwrite is true.
template <typename T>
void softmax_rows_backward(T* dscores, const T* dprobs, const T* probs, int64_t R, int64_t N,
                           T scale, bool overwrite);

}  // namespace rmt::ops
