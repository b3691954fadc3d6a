// The model kinds (transformer, memtr, txl, rmt incl. Tr-XL+RMT, rmt_encoder) over a multi-segment
// unroll: forward, backward with exact BPTT depth, and the parameter/gradient buffers.
// docs/MODELS.md is the contract this file implements.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "model/config.hpp"
#include "model/layer.hpp"
#include "model/parameters.hpp"

namespace rmt::model {

// Everything one segment's backward needs from its forward.
struct SegmentActivations {
    int64_t P = 0;                        // cache rows each layer saw
    // The last layer's output rows: [last_out_begin, last_out_end) of each batch row's Q
    // (LayerDims::out_begin, out_end; end 0: Q). Only those rows are computed there.
    int64_t last_out_begin = 0, last_out_end = 0;
    int64_t last_out_rows(int64_t Q) const {
        return (last_out_end > 0 ? last_out_end : Q) - last_out_begin;
    }
    // Where row r (of the Q) of batch row b sits in the last layer's output (or its gradient),
    // (B, last_out_rows(Q), C), in rows; r must be one of the computed rows.
    int64_t last_out_row(int64_t b, int64_t r, int64_t Q) const {
        return b * last_out_rows(Q) + r - last_out_begin;
    }
    float dropout_p = 0;                  // the dropout this forward applied (the backward's)
    std::vector<uint8_t> allowed;         // (Q, P + Q) mask
    Buffer R;                 // (P + Q, C) relative encoding after its dropout
    Buffer h0;                // (B, Q, C) layer-0 input after dropout
    std::vector<uint8_t> keep_h0;
    std::vector<LayerActivations> layers;
    Buffer token_out;         // (B, T, C) last-layer token rows, input of the head
    Buffer logits;            // (B, T, V); rmt_encoder: (Bs, num_classes)
    Buffer lse;               // (B, T)
    // rmt_encoder only. The segment runs for the Bs samples whose content is not all padding
    // (`rows`, ascending); every other array has Bs rows.
    std::vector<int64_t> rows;            // (Bs) batch rows that ran
    std::vector<int32_t> ids;             // (Bs, Q) [CLS, -1 x M, SEP, x, SEP]
    Buffer emb_in;            // (Bs, Q, C) E[id] or memory, + pos_emb: LN_emb input
    Buffer emb_mean, emb_rstd;
    Buffer cls_out;           // (Bs, C) last-layer CLS row
    Buffer pooled;            // (Bs, C) tanh(pooler(cls_out))
};

// The activation workspaces of finished streams, which the model's next stream states start
// from: a stream's first segment would otherwise fault in every page of fresh workspaces
// (several MB: 2% of a P2 encoder stream of 32 segments on one thread, 5% on two, where the
// threads' faults contend). Holds at most as many as one state uses (one per thread) and at most
// kMaxBytes in all: what a stream of a large batch used (700 MB for a batch-256 Transformer-XL
// stream) is freed when it ends, not kept for as long as the model lives. Training mode
// empties it (set_training(true)), as eval mode frees the training unroll's workspace.
struct WorkspacePool {
    static constexpr size_t kMaxBytes = size_t(256) << 20;
    std::mutex mutex;
    std::vector<SegmentActivations> spare;
    size_t spare_bytes = 0;   // bytes_held of spare
    void give_back(SegmentActivations&& ws);
    SegmentActivations take();   // a spare workspace, or an empty one
    void clear();
    size_t bytes();
};

// The heap bytes a workspace's buffers hold (their capacities).
size_t bytes_held(const SegmentActivations& s);

// What one segment hands the next at inference: the memory (rmt), the per-layer caches (txl,
// Tr-XL+RMT) and a reusable activation workspace, so that streaming any number of segments
// runs in memory that does not grow.
struct StreamState {
    StreamState() = default;
    StreamState(const StreamState&) = default;
    StreamState(StreamState&&) = default;
    StreamState& operator=(const StreamState&) = default;
    StreamState& operator=(StreamState&&) = default;
    ~StreamState();   // its workspaces go back to the pool
    int64_t batch = 0, mem_tokens = 0, d_model = 0;
    Buffer memory;                 // (B, M, C)
    std::vector<Buffer> caches;    // per layer (B, P, C)
    int64_t P = 0;
    int64_t segments_seen = 0;
    SegmentActivations workspace;
    // rmt_encoder with more than one thread: each thread runs a contiguous share of the batch
    // through the segment (Model::encoder_step), share c in share_workspace(c), in batch order.
    std::vector<SegmentActivations> more_share_workspaces;   // shares 1, 2, ... of the last segment
    int64_t shares() const { return int64_t(more_share_workspaces.size()) + 1; }
    SegmentActivations& share_workspace(int64_t c) {
        return c == 0 ? workspace : more_share_workspaces[size_t(c - 1)];
    }
    const SegmentActivations& share_workspace(int64_t c) const {
        return c == 0 ? workspace : more_share_workspaces[size_t(c - 1)];
    }
    std::shared_ptr<WorkspacePool> pool;   // the model's (none: workspaces are freed)
};

struct ClassifyResult {
    double loss = 0;            // mean cross-entropy of the last segment's CLS logits
    int64_t samples = 0;
};

struct UnrollResult {
    double loss = 0;            // weighted mean over the selected tokens of the whole unroll
    int64_t selected = 0;       // number of tokens in the mean
};

class Model {
public:
    Model(const ModelConfig& config, uint64_t seed);

    const ModelConfig& config() const { return config_; }
    const ParameterLayout& layout() const { return layout_; }
    float* params() { return params_.data(); }
    float* grads() { return grads_.data(); }
    int64_t num_parameters() const;   // without alignment padding

    // Evaluation mode also frees the activation buffers that training keeps between steps (see
    // workspace_). Do not change the mode while another thread's call on this model runs.
    void set_training(bool training);
    // Layer `layer`'s attention probabilities in the segment that ran in seg (batch rows that
    // ran, heads, all Q query rows, keys): the stored ones, or, for a last layer that computed
    // only the rows something reads, those of all rows recomputed from its stored input.
    Buffer attention_probs(const SegmentActivations& seg, int64_t layer) const;
    // What finished streams left for the next ones to start from (WorkspacePool), in bytes.
    size_t spare_stream_workspace_bytes() const { return workspace_pool_->bytes(); }
    bool training() const { return training_; }
    // Seeding restarts the stream: the dropout masks of the calls that follow depend only on
    // (seed, their order since this call), so a resumed run can replay them.
    void set_dropout_seed(uint64_t seed) {
        dropout_seed_ = seed;
        dropout_calls_ = 0;
    }

    // Re-draws every parameter with the initialisation of docs/MODELS.md.
    void initialize(uint64_t seed);

    // One forward and backward over whole sequences: tokens, targets (B, L) with L = S * T,
    // loss_mask (B, L) or null. Accumulates parameter gradients into grads() (the caller zeroes
    // them). bptt_depth < 0: full. logits_out (B, L, V) may be null. init_memory (B, M, C) may be
    // null (rmt then starts from mem_tokens); init_memory_grad (B, M, C) receives its gradient.
    // compute_grad = false runs the forward only (evaluation): nothing is accumulated.
    // normaliser > 0 divides the loss sum by it instead of this call's own token count, so that
    // micro-batches of one batch add up to exactly the batch's mean and gradient.
    UnrollResult loss_and_grad(const int32_t* tokens, const int32_t* targets, const float* loss_mask,
                               int64_t B, int64_t L, int64_t bptt_depth, float* logits_out,
                               const float* init_memory, float* init_memory_grad,
                               bool compute_grad = true, int64_t normaliser = 0);

    // rmt_encoder: one forward and backward over right-aligned sequences tokens (B, L), L = S * T,
    // pad_id marking empty positions; labels (B,) in [0, num_classes) or null (no loss, no
    // gradient). The loss is the mean cross-entropy of the last segment's CLS logits (divided by
    // normaliser instead of B when > 0). logits_out (B, num_classes) may be null. Accumulates
    // parameter gradients when compute_grad and labels are given. Throws std::invalid_argument if
    // a sample's last segment is empty.
    ClassifyResult classify_loss_and_grad(const int32_t* tokens, const int32_t* labels, int64_t B,
                                          int64_t L, int64_t bptt_depth, float* logits_out,
                                          bool compute_grad = true, int64_t normaliser = 0);

    // A fresh stream for `batch` sequences: memory from mem_tokens, empty caches.
    StreamState init_stream(int64_t batch) const;
    // Runs one segment tokens (B, T) forward (no gradient) from the stream's memory and caches,
    // writes logits (B, T, V) and advances the stream. rmt_encoder: logits (B, num_classes) of
    // the segment's CLS row; a sample whose segment is all padding keeps its memory and gets NaN
    // logits.
    void step(StreamState& state, const int32_t* tokens, float* logits_out);

private:
    void advance_caches(std::vector<Buffer>& caches, int64_t& P,
                        const SegmentActivations& seg, int64_t B) const;
    LayerTensors<const float> layer_params(int64_t l) const;
    LayerTensors<float> layer_grads(int64_t l);
    const float* param(const std::string& name) const;
    float* grad(const std::string& name);
    void build_mask(std::vector<uint8_t>& allowed, int64_t P) const;
    // Runs segment `s` forward from its memory (B, M, C) and caches; fills `seg`. The last
    // layer computes only the rows something reads (seg.last_out_begin: the read-memory rows of
    // rmt and memtr are keys and values only there; attention_probs recomputes them).
    void segment_forward(SegmentActivations& seg, const int32_t* tokens, int64_t B,
                         const float* memory, const std::vector<Buffer>& caches,
                         int64_t P, DropoutStream& drop);
    // The rows of the last layer whose outputs are read: [begin, end) of each batch row's Q
    // (end 0: Q). rmt [read | tokens | write] and memtr [memory | tokens]: not the first M (the
    // loss reads the tokens, the next segment the write block); rmt_encoder [CLS, memory, SEP,
    // x, SEP]: the CLS and memory rows only (the head and the next segment).
    void set_last_layer_rows(SegmentActivations& seg) const;
    // The dims of layer l of segment seg from the segment's common dims.
    static LayerDims layer_dims_of(const SegmentActivations& seg, LayerDims dims, int64_t l,
                                   int64_t L);
    // One backward pass through a segment from the gradient at its last-layer output rows
    // (B, Q - seg.last_out_begin, C); accumulates parameter gradients; returns the gradient at
    // its layer-0 input (B, Q, C).
    void segment_backward(Buffer& dh0, const SegmentActivations& seg,
                          const Buffer& dfinal, int64_t B, const int32_t* tokens);

    // rmt_encoder: runs the non-empty samples of segment tokens (B, T) from memory (B, M, C).
    void encoder_segment_forward(SegmentActivations& seg, const int32_t* tokens, int64_t B,
                                 const float* memory, DropoutStream& drop);
    // Backward through the samples that ran (dfinal (Bs, Q, C) at the last-layer outputs);
    // accumulates parameter gradients, writes the gradient at the entering memory (Bs, M, C).
    void encoder_segment_backward(Buffer& dmem, const SegmentActivations& seg,
                                  const Buffer& dfinal);
    // The CLS head: logits (Bs, num_classes) from seg.cls_out; its backward returns dcls (Bs, C).
    void encoder_head_forward(SegmentActivations& seg) const;
    void encoder_head_backward(Buffer& dcls, const SegmentActivations& seg,
                               const float* dlogits);
    LayerDims encoder_dims(int64_t Bs) const;
    // The decoder kinds' layer dims: B batch rows, P cache rows (relative attention, ReLU).
    LayerDims decoder_dims(int64_t B, int64_t P) const;
    void encoder_step(StreamState& state, const int32_t* tokens, float* logits_out);

    ModelConfig config_;
    ParameterLayout layout_;
    std::shared_ptr<WorkspacePool> workspace_pool_ = std::make_shared<WorkspacePool>();
    Buffer params_;
    Buffer grads_;
    std::vector<LayerOffsets> layer_offsets_;
    bool training_ = false;
    uint64_t dropout_seed_ = 0;
    uint64_t dropout_calls_ = 0;

    // The activations of the last training unroll, whose buffers the next one reuses: allocated
    // afresh, every step faulted their pages in and zero-filled them again (a third of the time
    // of the copy model's forward projections). A call that finds the workspace busy (another
    // thread's call on the same model) uses buffers of its own.
    struct UnrollWorkspace {
        std::mutex busy;
        std::vector<SegmentActivations> segs;
    };
    // Each Model owns its workspace: a copy or a moved-to model starts with an empty one of its
    // own (nothing to share, and a moved-from model keeps a usable one).
    class WorkspaceHandle {
    public:
        WorkspaceHandle() : ws_(std::make_unique<UnrollWorkspace>()) {}
        WorkspaceHandle(const WorkspaceHandle&) : WorkspaceHandle() {}
        WorkspaceHandle& operator=(const WorkspaceHandle&) { return *this; }
        UnrollWorkspace& operator*() const { return *ws_; }
        UnrollWorkspace* operator->() const { return ws_.get(); }

    private:
        std::unique_ptr<UnrollWorkspace> ws_;
    };
    WorkspaceHandle workspace_;

    // The workspace of one training call: the shared one when free (its segs resized to S), else
    // a private one. Holds the workspace until destroyed.
    class UnrollBuffers {
    public:
        UnrollBuffers(UnrollWorkspace& shared, int64_t S, bool reuse);
        std::vector<SegmentActivations>& segs() { return lock_.owns_lock() ? shared_.segs : own_; }

    private:
        UnrollWorkspace& shared_;
        std::unique_lock<std::mutex> lock_;
        std::vector<SegmentActivations> own_;
    };
};

}  // namespace rmt::model
