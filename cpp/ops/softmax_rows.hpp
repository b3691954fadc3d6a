// Serial row kernels shared by the softmax op and the attention ops (which call them per
// (batch, head) from inside their own parallel loop). Internal to cpp/ops.
#pragma once
#include <cstdint>
#include <vector>

namespace rmt::ops {

// Rows [begin, end) whose mask rows allow the same keys: all in [lo, hi), with masked keys
// inside that range (holes: then the run is one row) or none.
struct MaskRowRun {
    int64_t begin, end, lo, hi;
    bool holes;
};

// The runs of rows 0 .. R of mask allowed (mask_rows rows of N, row r's is r % mask_rows; null:
// every key allowed), in order.
std::vector<MaskRowRun> mask_row_runs(const uint8_t* allowed, int64_t R, int64_t N,
                                      int64_t mask_rows);

// masked_softmax_rows with the runs of its mask found beforehand: the attention ops find them
// once per mask, not once per head.
template <typename T>
void softmax_row_runs(T* probs, const T* scores, int64_t scores_stride, const uint8_t* allowed,
                      const std::vector<MaskRowRun>& runs, int64_t N, int64_t mask_rows);

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
