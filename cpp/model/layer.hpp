// One Transformer-XL layer (post-norm, relative positions), forward and backward side by side.
// docs/MODELS.md "One layer" is the contract; every model kind runs this same layer (rmt_encoder
// with plain attention and GELU, see LayerDims).
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/aligned.hpp"

namespace rmt::model {

// Offsets of one layer's tensors in the flat parameter (and gradient) buffer.
struct LayerOffsets {
    int64_t qkv, r, o, ln1_w, ln1_b, fc1_w, fc1_b, fc2_w, fc2_b, ln2_w, ln2_b, u, v;
};

// Pointers to one layer's tensors in a flat buffer (parameters or gradients).
template <typename P>
struct LayerTensors {
    P *qkv, *r, *o, *ln1_w, *ln1_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b, *ln2_w, *ln2_b, *u, *v;
    LayerTensors(P* base, const LayerOffsets& off)
        : qkv(base + off.qkv), r(base + off.r), o(base + off.o), ln1_w(base + off.ln1_w),
          ln1_b(base + off.ln1_b), fc1_w(base + off.fc1_w), fc1_b(base + off.fc1_b),
          fc2_w(base + off.fc2_w), fc2_b(base + off.fc2_b), ln2_w(base + off.ln2_w),
          ln2_b(base + off.ln2_b), u(base + off.u), v(base + off.v) {}
};

struct LayerDims {
    int64_t B, Q, P, C, D, NH, hs, F;   // P: cache rows before the Q query rows
    float eps;
    // The decoders use relative attention (W_r, u, v) and ReLU; the encoder (absolute learned
    // positions, BERT) plain attention and exact-erf GELU. With plain attention the r, u, v
    // tensors are never read (their offsets may be anything).
    bool relative = true;
    bool gelu = false;
    int64_t mask_batch_stride = 0;   // 0: one (Q, K) mask for the batch; Q * K: one per batch row
    // The rows of h whose outputs are wanted, [out_begin, out_end) of each batch row's Q (out_end
    // 0: up to Q). The others are keys and values only: a model's last layer, whose outputs on
    // its read-memory rows (rmt, memtr) or its token rows (rmt_encoder) nothing reads. Queries,
    // attention rows, W_o, the feed-forward and the norms then run for out_rows() rows, and
    // `out` has that many per batch row; without dropout the result on them is the same as with
    // all rows (with dropout, the layer draws fewer masks, so later masks of the stream differ).
    // Relative attention needs out_end = Q (its shift takes the queries as the last keys).
    int64_t out_begin = 0, out_end = 0;
    int64_t K() const { return P + Q; }
    int64_t out_stop() const { return out_end > 0 ? out_end : Q; }
    int64_t out_rows() const { return out_stop() - out_begin; }
    bool all_rows() const { return out_rows() == Q; }
};

// Seeded dropout: every call takes a fresh range of the counter stream, so a run is
// reproducible from (seed, the order of calls) and independent of the thread count.
struct DropoutStream {
    float p = 0;
    uint64_t seed = 0;
    uint64_t counter = 0;
    bool active() const { return p > 0; }
};

// What the backward pass of one layer needs from its forward (shapes in comments).
struct LayerActivations {
    Buffer k_in;      // (B, K, C)  [cache; h]
    Buffer h_rows;    // (B, Qo, C) the rows of h that are queries, when not all are; Qo =
                      // LayerDims::out_rows(), = Q when all rows are wanted
    Buffer q;         // (B, Qo, D)
    Buffer k, v;      // (B, K, D)
    Buffer rk;        // (K, D), relative attention only
    Buffer probs;     // (B, NH, Qo, K)
    Buffer attn;      // (B, Qo, D)   softmax(S) v, input of W_o
    std::vector<uint8_t> keep_proj;
    Buffer res1;      // (B, Qo, C)   h + dropout(attn W_o^T), input of LN1
    Buffer ln1_mean, ln1_rstd;   // (B*Qo)
    Buffer o;         // (B, Qo, C)   LN1 output
    Buffer fc1;       // (B, Qo, F)   pre-activation (GELU only: the ReLU's backward masks by act > 0)
    Buffer act;       // (B, Qo, F)   dropout(relu or gelu(fc1))
    std::vector<uint8_t> keep_act;
    std::vector<uint8_t> keep_ff;
    Buffer res2;      // (B, Qo, C)   o + dropout(fc2), input of LN2
    Buffer ln2_mean, ln2_rstd;
    Buffer out;       // (B, Qo, C)   layer output
};

// h (B, Q, C) layer input; cache (B, P, C) or null when P = 0; allowed (Q, K) mask (or B of them,
// see LayerDims::mask_batch_stride); R (K, C) relative position encoding (after its dropout), null
// with plain attention. Writes a.out (B, Qo, C), Qo = d.out_rows().
void layer_forward(LayerActivations& a, const LayerTensors<const float>& w, const float* h,
                   const float* cache, const uint8_t* allowed, const float* R, const LayerDims& d,
                   DropoutStream& drop);

// Accumulates dh (B, Q, C) and the layer's parameter gradients g from dout (B, Qo, C). The cache
// gets no gradient (Transformer-XL stops it). h is the same input given to the forward.
void layer_backward(float* dh, LayerTensors<float>& g, const float* dout, const LayerActivations& a,
                    const LayerTensors<const float>& w, const float* h, const float* R,
                    const LayerDims& d, float dropout_p);

// A zero-filled buffer of n floats (timed as glue.zeros when profiling), reusing the storage of
// a buffer given back with recycle() on this thread when one is large enough.
Buffer zeros(int64_t n);
// n floats from the same pool, contents unspecified: for a buffer the next op overwrites whole.
Buffer pooled_buffer(int64_t n);
// Gives v's storage to this thread's pool for zeros() and pooled_buffer() (v is left empty).
void recycle(Buffer& v);

}  // namespace rmt::model
