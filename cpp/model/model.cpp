#include "model/model.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>

#include "kernels/profile.hpp"
#include "kernels/threads.hpp"
#include "ops/attention.hpp"
#include "ops/cross_entropy.hpp"
#include "ops/dropout.hpp"
#include "ops/embedding.hpp"
#include "ops/linear.hpp"
#include "ops/masks.hpp"

namespace rmt::model {

Model::UnrollBuffers::UnrollBuffers(UnrollWorkspace& shared, int64_t S, bool reuse)
    : shared_(shared), lock_(shared.busy, std::defer_lock) {
    if (reuse) lock_.try_lock();
    segs().resize(size_t(S));
}

void Model::set_training(bool training) {
    training_ = training;
    if (!training) {
        std::lock_guard<std::mutex> lock(workspace_->busy);
        std::vector<SegmentActivations>().swap(workspace_->segs);
    } else {
        // training unrolls in workspace_, not in stream workspaces: what finished streams left
        // behind is only memory held until the next eval-mode stream
        workspace_pool_->clear();
    }
}

Model::Model(const ModelConfig& config, uint64_t seed) : config_(config) {
    config_.validate();
    const int64_t V = config_.vocab_size, C = config_.d_model, D = config_.attn_dim(),
                  F = config_.d_ff, NH = config_.n_heads, hs = config_.head_size(),
                  M = config_.num_mem_tokens;
    const bool encoder = config_.kind == Kind::RMTEncoder;
    layout_.add("word_emb.weight", {V, C});
    if (M > 0) layout_.add("mem_tokens", {M, C});
    if (encoder) {
        // BERT-style embedding: learned absolute positions and an embedding LayerNorm.
        layout_.add("pos_emb.weight", {config_.query_rows(), C});
        layout_.add("emb_norm.weight", {C});
        layout_.add("emb_norm.bias", {C});
    }
    if (!config_.untie_rel_bias && !encoder) {
        layout_.add("r_w_bias", {NH, hs});
        layout_.add("r_r_bias", {NH, hs});
    }
    for (int64_t l = 0; l < config_.n_layers; ++l) {
        const std::string p = "layers." + std::to_string(l) + ".";
        LayerOffsets off{};
        off.qkv = layout_.add(p + "attn.qkv.weight", {3 * D, C});
        if (!encoder) off.r = layout_.add(p + "attn.r.weight", {D, C});
        off.o = layout_.add(p + "attn.o.weight", {C, D});
        if (config_.untie_rel_bias && !encoder) {
            off.u = layout_.add(p + "attn.r_w_bias", {NH, hs});
            off.v = layout_.add(p + "attn.r_r_bias", {NH, hs});
        }
        off.ln1_w = layout_.add(p + "attn.norm.weight", {C});
        off.ln1_b = layout_.add(p + "attn.norm.bias", {C});
        off.fc1_w = layout_.add(p + "ff.fc1.weight", {F, C});
        off.fc1_b = layout_.add(p + "ff.fc1.bias", {F});
        off.fc2_w = layout_.add(p + "ff.fc2.weight", {C, F});
        off.fc2_b = layout_.add(p + "ff.fc2.bias", {C});
        off.ln2_w = layout_.add(p + "ff.norm.weight", {C});
        off.ln2_b = layout_.add(p + "ff.norm.bias", {C});
        layer_offsets_.push_back(off);
    }
    if (!config_.untie_rel_bias && !encoder)
        for (auto& off : layer_offsets_) {
            off.u = layout_.find("r_w_bias").offset;
            off.v = layout_.find("r_r_bias").offset;
        }
    if (encoder) {
        const int64_t NC = config_.num_classes;
        layout_.add("pooler.weight", {C, C});
        layout_.add("pooler.bias", {C});
        layout_.add("cls_head.weight", {NC, C});
        layout_.add("cls_head.bias", {NC});
    } else {
        layout_.add("out_bias", {V});
    }
    params_.assign(layout_.total(), 0.0f);
    grads_.assign(layout_.total(), 0.0f);
    initialize(seed);
}

int64_t Model::num_parameters() const {
    int64_t n = 0;
    for (auto& s : layout_.slots()) n += s.size();
    return n;
}

void Model::initialize(uint64_t seed) {
    std::mt19937_64 gen(seed);
    const float stdv = float(config_.init_std);
    std::normal_distribution<float> normal(0.0f, stdv);
    std::normal_distribution<float> unit(0.0f, 1.0f);
    std::fill(params_.begin(), params_.end(), 0.0f);
    for (auto& slot : layout_.slots()) {
        float* p = params_.data() + slot.offset;
        const int64_t n = slot.size();
        const std::string& name = slot.name;
        auto ends_with = [&](const std::string& suffix) {
            return name.size() >= suffix.size() &&
                   name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
        };
        if (name == "mem_tokens") continue;   // after the embedding, whose std it may use
        if (ends_with("norm.weight")) {
            for (int64_t i = 0; i < n; ++i) p[i] = 1.0f + normal(gen);
        } else if (ends_with(".bias") || name == "out_bias") {
            // biases start at zero
        } else {
            for (int64_t i = 0; i < n; ++i) p[i] = normal(gen);   // weights, u, v
        }
    }
    if (layout_.contains("mem_tokens")) {
        const auto& slot = layout_.find("mem_tokens");
        float* p = params_.data() + slot.offset;
        const int64_t M = config_.num_mem_tokens, C = config_.d_model;
        if (config_.mem_init == "repeat") {
            // LM-RMT: one N(0,1) vector repeated M times; positions break the symmetry.
            for (int64_t c = 0; c < C; ++c) p[c] = unit(gen);
            for (int64_t m = 1; m < M; ++m) std::memcpy(p + m * C, p, sizeof(float) * C);
        } else {
            // HF wrapper: N(0,1) scaled by the std of the embedding table.
            const auto& emb = layout_.find("word_emb.weight");
            const float* e = params_.data() + emb.offset;
            double sum = 0, sq = 0;
            for (int64_t i = 0; i < emb.size(); ++i) sum += e[i], sq += double(e[i]) * e[i];
            const double mean = sum / emb.size();
            const float std_emb = float(std::sqrt(std::max(0.0, sq / emb.size() - mean * mean)));
            for (int64_t i = 0; i < M * C; ++i) p[i] = unit(gen) * std_emb;
        }
    }
}

LayerTensors<const float> Model::layer_params(int64_t l) const {
    return LayerTensors<const float>(params_.data(), layer_offsets_[l]);
}
LayerTensors<float> Model::layer_grads(int64_t l) {
    return LayerTensors<float>(grads_.data(), layer_offsets_[l]);
}
const float* Model::param(const std::string& name) const {
    return params_.data() + layout_.find(name).offset;
}
float* Model::grad(const std::string& name) { return grads_.data() + layout_.find(name).offset; }

void Model::build_mask(std::vector<uint8_t>& allowed, int64_t P) const {
    const int64_t M = config_.num_mem_tokens, T = config_.segment_len, Q = config_.query_rows();
    const int64_t K = P + Q;
    RMT_PROFILE_SCOPE("glue.mask");
    allowed.assign(Q * K, 0);
    switch (config_.kind) {
        case Kind::RMT:
            ops::rmt_decoder_mask(allowed.data(), M, T, P);
            break;
        case Kind::MemTr:
            // Memory rows see the memory block; token rows see it and their causal past.
            for (int64_t i = 0; i < Q; ++i)
                for (int64_t j = 0; j < K; ++j)
                    allowed[i * K + j] = i < M ? (j < M) : (j < M || j <= i);
            break;
        default: {
            const bool same_length = config_.same_length && !training_ && P + Q > config_.mem_len;
            ops::causal_mask(allowed.data(), Q, P, same_length ? config_.mem_len : 0);
        }
    }
}

void Model::segment_forward(SegmentActivations& seg, const int32_t* tokens, int64_t B,
                            const float* memory, const std::vector<Buffer>& caches,
                            int64_t P, DropoutStream& drop) {
    const int64_t C = config_.d_model, T = config_.segment_len, M = config_.num_mem_tokens,
                  Q = config_.query_rows(), V = config_.vocab_size, L = config_.n_layers;
    const int64_t off = config_.token_row_offset();
    const float* emb = param("word_emb.weight");
    seg.P = P;
    seg.dropout_p = drop.active() ? drop.p : 0.0f;
    // h0 = [m; e; m] (rmt), [mem_tokens; e] (memtr) or e, then dropout on all of it (LM-RMT
    // concatenates the memory before its embedding dropout).
    {
    RMT_PROFILE_SCOPE("fwd.embedding");   // with the memory rows copied in
    seg.h0.assign(B * Q * C, 0.0f);
    for (int64_t b = 0; b < B; ++b) {
        float* h = seg.h0.data() + b * Q * C;
        ops::embedding_forward<float>(h + off * C, tokens + b * T, emb, T, V, C,
                                      float(std::sqrt(double(C))));
        if (config_.kind == Kind::RMT) {
            std::memcpy(h, memory + b * M * C, sizeof(float) * M * C);
            std::memcpy(h + (M + T) * C, memory + b * M * C, sizeof(float) * M * C);
        } else if (config_.kind == Kind::MemTr) {
            std::memcpy(h, param("mem_tokens"), sizeof(float) * M * C);
        }
    }
    }
    if (drop.active()) {
        RMT_PROFILE_SCOPE("fwd.dropout");
        seg.keep_h0.resize(seg.h0.size());
        ops::dropout_forward<float>(seg.h0.data(), seg.keep_h0.data(), seg.h0.data(),
                                    int64_t(seg.h0.size()), drop.p, drop.seed, drop.counter);
        drop.counter += seg.h0.size();
    } else {
        seg.keep_h0.clear();
    }
    const int64_t K = P + Q;
    {
    RMT_PROFILE_SCOPE("fwd.rel_position");
    seg.R.resize(K * C);
    ops::rel_position_encoding<float>(seg.R.data(), K, C, config_.clamp_len);
    }
    if (drop.active()) {
        RMT_PROFILE_SCOPE("fwd.dropout");
        std::vector<uint8_t> keep(seg.R.size());
        ops::dropout_forward<float>(seg.R.data(), keep.data(), seg.R.data(), int64_t(seg.R.size()),
                                    drop.p, drop.seed, drop.counter);
        drop.counter += seg.R.size();
    }
    build_mask(seg.allowed, P);
    seg.layers.resize(L);
    const LayerDims dims = decoder_dims(B, P);
    set_last_layer_rows(seg);
    for (int64_t l = 0; l < L; ++l) {
        const float* h = l == 0 ? seg.h0.data() : seg.layers[l - 1].out.data();
        layer_forward(seg.layers[l], layer_params(l), h, P > 0 ? caches[l].data() : nullptr,
                      seg.allowed.data(), seg.R.data(), layer_dims_of(seg, dims, l, L), drop);
    }
    // The head reads the token rows of the last layer: logits = out E^T + out_bias (tied).
    {
    RMT_PROFILE_SCOPE("glue.copy");
    seg.token_out.resize(B * T * C);
    const float* out = seg.layers[L - 1].out.data();
    for (int64_t b = 0; b < B; ++b)
        std::memcpy(&seg.token_out[b * T * C], out + seg.last_out_row(b, off, Q) * C,
                    sizeof(float) * T * C);
    }
    RMT_PROFILE_SCOPE_FLOPS("fwd.linear.head", 2 * B * T * C * V);
    seg.logits.resize(B * T * V);
    ops::linear_forward<float>(seg.logits.data(), seg.token_out.data(), emb, param("out_bias"),
                               B * T, C, V);
}

LayerDims Model::decoder_dims(int64_t B, int64_t P) const {
    return LayerDims{B, config_.query_rows(), P, config_.d_model, config_.attn_dim(),
                     config_.n_heads, config_.head_size(), config_.d_ff,
                     float(config_.layer_norm_eps)};
}

void Model::set_last_layer_rows(SegmentActivations& seg) const {
    const int64_t M = config_.num_mem_tokens;
    seg.last_out_begin = config_.kind == Kind::RMT || config_.kind == Kind::MemTr ? M : 0;
    seg.last_out_end = config_.kind == Kind::RMTEncoder ? 1 + M : 0;
}

LayerDims Model::layer_dims_of(const SegmentActivations& seg, LayerDims dims, int64_t l,
                               int64_t L) {
    if (l == L - 1) {
        dims.out_begin = seg.last_out_begin;
        dims.out_end = seg.last_out_end;
    }
    return dims;
}

// (The recomputation uses the parameters as they are now: the maps are the step's only while the
// parameters have not changed since it, as for any state.)
Buffer Model::attention_probs(const SegmentActivations& seg, int64_t layer) const {
    const int64_t L = config_.n_layers, Q = config_.query_rows(), C = config_.d_model;
    if (layer < 0 || layer >= int64_t(seg.layers.size()))
        throw std::invalid_argument("no such layer in this segment");
    if (layer < L - 1 || seg.last_out_rows(Q) == Q) return seg.layers[size_t(layer)].probs;
    // The last layer again, on all rows, from what the segment kept: its input (the layer
    // below's output), its keys' cache rows (the front of k_in), the mask and R. Inference has
    // no dropout, so this is what the segment computed on the rows it kept.
    const bool encoder = config_.kind == Kind::RMTEncoder;
    const int64_t B = int64_t(seg.h0.size()) / (Q * C);   // the batch rows that ran
    const LayerDims dims = encoder ? encoder_dims(B)
                                   : decoder_dims(B, seg.P);
    const LayerActivations& last = seg.layers[size_t(L - 1)];
    const float* h = L == 1 ? seg.h0.data() : seg.layers[size_t(L - 2)].out.data();
    Buffer cache;
    if (seg.P > 0) {
        const int64_t K = seg.P + Q;
        cache.resize(B * seg.P * C);
        for (int64_t b = 0; b < B; ++b)
            std::memcpy(&cache[b * seg.P * C], &last.k_in[b * K * C], sizeof(float) * seg.P * C);
    }
    LayerActivations all_rows;
    DropoutStream no_dropout;
    layer_forward(all_rows, layer_params(L - 1), h, seg.P > 0 ? cache.data() : nullptr,
                  seg.allowed.data(), seg.R.empty() ? nullptr : seg.R.data(), dims, no_dropout);
    return std::move(all_rows.probs);
}

void Model::segment_backward(Buffer& dh0, const SegmentActivations& seg,
                             const Buffer& dfinal, int64_t B, const int32_t* tokens) {
    const int64_t C = config_.d_model, T = config_.segment_len, Q = config_.query_rows(),
                  V = config_.vocab_size, L = config_.n_layers;
    const LayerDims dims = decoder_dims(B, seg.P);
    const float p = seg.dropout_p;
    Buffer d, dh;
    {
    RMT_PROFILE_SCOPE("glue.copy");
    d = dfinal;
    dh.resize(B * Q * C);
    }
    for (int64_t l = L - 1; l >= 0; --l) {
        {
        RMT_PROFILE_SCOPE("glue.zeros");
        dh.assign(B * Q * C, 0.0f);   // (after the last layer, dh holds its smaller dfinal)
        }
        const float* h = l == 0 ? seg.h0.data() : seg.layers[l - 1].out.data();
        auto g = layer_grads(l);
        layer_backward(dh.data(), g, d.data(), seg.layers[l], layer_params(l), h, seg.R.data(),
                       layer_dims_of(seg, dims, l, L), p);
        std::swap(d, dh);
    }
    // h0 = dropout([m; e; m])
    if (!seg.keep_h0.empty()) {
        RMT_PROFILE_SCOPE("bwd.dropout");
        dh0.assign(d.size(), 0.0f);
        ops::dropout_backward<float>(dh0.data(), d.data(), seg.keep_h0.data(), int64_t(d.size()), p);
    } else {
        RMT_PROFILE_SCOPE("glue.copy");
        dh0 = d;
    }
    // e = E[x] * sqrt(C) on the token rows
    const int64_t off = config_.token_row_offset();
    float* demb = grad("word_emb.weight");
    RMT_PROFILE_SCOPE("bwd.embedding");
    for (int64_t b = 0; b < B; ++b)
        ops::embedding_backward<float>(demb, dh0.data() + (b * Q + off) * C, tokens + b * T, T, V, C,
                                       float(std::sqrt(double(C))));
}

void Model::advance_caches(std::vector<Buffer>& caches, int64_t& P,
                           const SegmentActivations& seg, int64_t B) const {
    // Cache of layer l: the last mem_len rows of [cache_l; token rows of the layer's input], a
    // constant for every later segment.
    const int64_t C = config_.d_model, T = config_.segment_len, Q = config_.query_rows();
    const int64_t off = config_.token_row_offset();
    const int64_t newP = std::min(config_.mem_len, P + T);
    RMT_PROFILE_SCOPE("glue.cache");
    for (int64_t l = 0; l < config_.n_layers; ++l) {
        const float* h = l == 0 ? seg.h0.data() : seg.layers[l - 1].out.data();
        Buffer next(B * newP * C);
        for (int64_t b = 0; b < B; ++b)
            for (int64_t r = 0; r < newP; ++r) {
                const int64_t src = P + T - newP + r;   // row in [cache; tokens]
                const float* from = src < P ? &caches[l][(b * P + src) * C]
                                            : h + (b * Q + off + src - P) * C;
                std::memcpy(&next[(b * newP + r) * C], from, sizeof(float) * C);
            }
        caches[l] = std::move(next);
    }
    P = newP;
}

namespace {

size_t bytes_held(const Buffer& v) { return v.capacity() * sizeof(float); }
template <typename U>
size_t bytes_held(const std::vector<U>& v) { return v.capacity() * sizeof(U); }

// (every buffer of LayerActivations: a field added there belongs here too)
size_t bytes_held(const LayerActivations& a) {
    return bytes_held(a.k_in) + bytes_held(a.h_rows) + bytes_held(a.q) + bytes_held(a.k) + bytes_held(a.v) +
           bytes_held(a.rk) + bytes_held(a.probs) + bytes_held(a.attn) + bytes_held(a.keep_proj) +
           bytes_held(a.res1) + bytes_held(a.ln1_mean) + bytes_held(a.ln1_rstd) + bytes_held(a.o) +
           bytes_held(a.fc1) + bytes_held(a.act) + bytes_held(a.keep_act) + bytes_held(a.keep_ff) +
           bytes_held(a.res2) + bytes_held(a.ln2_mean) + bytes_held(a.ln2_rstd) + bytes_held(a.out);
}

}  // namespace

size_t bytes_held(const SegmentActivations& s) {
    size_t total = bytes_held(s.allowed) + bytes_held(s.R) + bytes_held(s.h0) +
                   bytes_held(s.keep_h0) + bytes_held(s.token_out) + bytes_held(s.logits) +
                   bytes_held(s.lse) + bytes_held(s.rows) + bytes_held(s.ids) +
                   bytes_held(s.emb_in) + bytes_held(s.emb_mean) + bytes_held(s.emb_rstd) +
                   bytes_held(s.cls_out) + bytes_held(s.pooled);
    for (const LayerActivations& a : s.layers) total += bytes_held(a);
    return total;
}

void WorkspacePool::give_back(SegmentActivations&& ws) {
    if (ws.layers.empty()) return;   // never ran (or moved from): nothing worth keeping
    const size_t bytes = bytes_held(ws);
    std::lock_guard<std::mutex> lock(mutex);
    if (int64_t(spare.size()) < std::max<int64_t>(1, kernels::get_num_threads()) &&
        spare_bytes + bytes <= kMaxBytes) {
        spare_bytes += bytes;
        spare.push_back(std::move(ws));
    }
}

void WorkspacePool::clear() {
    std::lock_guard<std::mutex> lock(mutex);
    std::vector<SegmentActivations>().swap(spare);
    spare_bytes = 0;
}

size_t WorkspacePool::bytes() {
    std::lock_guard<std::mutex> lock(mutex);
    return spare_bytes;
}

SegmentActivations WorkspacePool::take() {
    std::lock_guard<std::mutex> lock(mutex);
    if (spare.empty()) return {};
    SegmentActivations ws = std::move(spare.back());
    spare.pop_back();
    spare_bytes -= bytes_held(ws);
    // What ran in it belongs to another stream: attention() of the new state must not see it
    // (it also refuses a state no segment has run through).
    ws.rows.clear();
    return ws;
}

StreamState::~StreamState() {
    if (!pool) return;
    try {   // a destructor must not throw: a workspace that cannot be kept is freed instead
        pool->give_back(std::move(workspace));
        for (auto& ws : more_share_workspaces) pool->give_back(std::move(ws));
    } catch (...) {
    }
}

StreamState Model::init_stream(int64_t batch) const {
    if (batch < 1) throw std::invalid_argument("batch must be >= 1");
    StreamState st;
    st.pool = workspace_pool_;
    if (st.pool) st.workspace = st.pool->take();
    st.batch = batch;
    st.mem_tokens = config_.num_mem_tokens;
    st.d_model = config_.d_model;
    st.caches.resize(config_.n_layers);
    if (config_.recurrent_memory()) {
        const int64_t M = config_.num_mem_tokens, C = config_.d_model;
        st.memory.resize(batch * M * C);
        for (int64_t b = 0; b < batch; ++b)
            std::memcpy(&st.memory[b * M * C], param("mem_tokens"), sizeof(float) * M * C);
    }
    return st;
}

void Model::step(StreamState& st, const int32_t* tokens, float* logits_out) {
    const int64_t B = st.batch, C = config_.d_model, T = config_.segment_len,
                  M = config_.num_mem_tokens, Q = config_.query_rows(), V = config_.vocab_size;
    if (config_.kind == Kind::RMTEncoder) return encoder_step(st, tokens, logits_out);
    DropoutStream drop;   // inference: no dropout
    SegmentActivations& seg = st.workspace;
    segment_forward(seg, tokens, B, st.memory.empty() ? nullptr : st.memory.data(), st.caches, st.P, drop);
    {
    RMT_PROFILE_SCOPE("glue.copy");
    if (logits_out) std::memcpy(logits_out, seg.logits.data(), sizeof(float) * B * T * V);
    if (config_.kind == Kind::RMT) {
        const float* out = seg.layers[config_.n_layers - 1].out.data();
        for (int64_t b = 0; b < B; ++b)
            std::memcpy(&st.memory[b * M * C],
                        out + seg.last_out_row(b, M + T, Q) * C, sizeof(float) * M * C);
    }
    }
    if (config_.has_cache()) advance_caches(st.caches, st.P, seg, B);
    ++st.segments_seen;
}

UnrollResult Model::loss_and_grad(const int32_t* tokens, const int32_t* targets,
                                  const float* loss_mask, int64_t B, int64_t Ltot,
                                  int64_t bptt_depth, float* logits_out, const float* init_memory,
                                  float* init_memory_grad, bool compute_grad,
                                  int64_t normaliser) {
    const int64_t C = config_.d_model, T = config_.segment_len, M = config_.num_mem_tokens,
                  Q = config_.query_rows(), V = config_.vocab_size, L = config_.n_layers;
    if (config_.kind == Kind::RMTEncoder)
        throw std::invalid_argument("kind 'rmt_encoder' is a classifier: use classify_loss_and_grad");
    if (B < 1) throw std::invalid_argument("batch is empty");
    if (Ltot < T || Ltot % T != 0)
        throw std::invalid_argument("sequence length " + std::to_string(Ltot) +
                                    " is not a positive multiple of segment_len " + std::to_string(T));
    const int64_t S = Ltot / T;
    const bool rmt = config_.kind == Kind::RMT;
    const bool full_depth = bptt_depth < 0 || bptt_depth >= S;

    // Normaliser of the mean: tokens with a target and a non-zero loss-mask weight.
    int64_t selected = 0;
    {
    RMT_PROFILE_SCOPE("glue.count");
    for (int64_t i = 0; i < B * Ltot; ++i)
        if (targets[i] != -100 && (!loss_mask || loss_mask[i] != 0.0f)) ++selected;
    }

    DropoutStream drop;
    drop.p = training_ ? float(config_.dropout) : 0.0f;
    drop.seed = dropout_seed_;
    drop.counter = (dropout_calls_++) << 40;   // each call its own stretch of the stream

    // ---- forward over the unroll ----
    UnrollBuffers buffers(*workspace_, S, compute_grad && training_);
    std::vector<SegmentActivations>& segs = buffers.segs();
    std::vector<Buffer> memories(S);   // memory entering each segment (rmt)
    std::vector<Buffer> caches(L);
    std::vector<std::vector<int32_t>> seg_tokens(S), seg_targets(S);
    std::vector<Buffer> seg_mask(S);
    if (rmt) {
        RMT_PROFILE_SCOPE("glue.memory");
        memories[0].resize(B * M * C);
        for (int64_t b = 0; b < B; ++b)
            std::memcpy(&memories[0][b * M * C], init_memory ? init_memory + b * M * C : param("mem_tokens"),
                        sizeof(float) * M * C);
    }
    double loss_sum = 0;
    int64_t P = 0;
    for (int64_t s = 0; s < S; ++s) {
        auto& toks = seg_tokens[s];
        auto& tgts = seg_targets[s];
        {
        RMT_PROFILE_SCOPE("glue.split");
        toks.resize(B * T);
        tgts.resize(B * T);
        if (loss_mask) seg_mask[s].resize(B * T);
        for (int64_t b = 0; b < B; ++b)
            for (int64_t t = 0; t < T; ++t) {
                toks[b * T + t] = tokens[b * Ltot + s * T + t];
                tgts[b * T + t] = targets[b * Ltot + s * T + t];
                if (loss_mask) seg_mask[s][b * T + t] = loss_mask[b * Ltot + s * T + t];
            }
        }
        SegmentActivations& seg = segs[s];
        segment_forward(seg, toks.data(), B, rmt ? memories[s].data() : nullptr, caches, P, drop);
        {
        RMT_PROFILE_SCOPE("fwd.cross_entropy");
        Buffer losses(B * T);
        seg.lse.resize(B * T);
        ops::cross_entropy_forward<float>(losses.data(), seg.lse.data(), seg.logits.data(), tgts.data(),
                                          loss_mask ? seg_mask[s].data() : nullptr, B * T, V, -100);
        for (float x : losses) loss_sum += x;
        }
        if (logits_out) {
            RMT_PROFILE_SCOPE("glue.copy");
            for (int64_t b = 0; b < B; ++b)
                std::memcpy(logits_out + (b * Ltot + s * T) * V, &seg.logits[b * T * V],
                            sizeof(float) * T * V);
        }
        if (rmt && s + 1 < S) {
            // The write block's last-layer outputs are the next segment's memory.
            RMT_PROFILE_SCOPE("glue.memory");
            memories[s + 1].resize(B * M * C);
            const float* out = seg.layers[L - 1].out.data();
            for (int64_t b = 0; b < B; ++b)
                std::memcpy(&memories[s + 1][b * M * C],
                            out + seg.last_out_row(b, M + T, Q) * C, sizeof(float) * M * C);
        }
        if (config_.has_cache()) advance_caches(caches, P, seg, B);
    }
    UnrollResult result;
    result.selected = selected;
    const double denom = normaliser > 0 ? double(normaliser) : double(selected);
    result.loss = selected > 0 ? loss_sum / denom : 0.0;
    if (selected == 0 || !compute_grad) return result;   // nothing to learn from: zero gradient

    // ---- backward, last segment first ----
    // streams[a]: gradient at the current segment's memory output that comes from the loss of the
    // segment a steps later (bptt_depth = k keeps a <= k). With full depth one merged stream.
    const int64_t n_streams = full_depth ? 1 : bptt_depth + 1;
    std::vector<Buffer> streams(n_streams + 1);
    float* demb = grad("word_emb.weight");
    float* dbias = grad("out_bias");
    const float* emb = param("word_emb.weight");
    const int64_t off = config_.token_row_offset();
    Buffer dh0;
    for (int64_t s = S - 1; s >= 0; --s) {
        SegmentActivations& seg = segs[s];
        // Loss head: dlogits, then the gradient at the token rows of the last layer.
        Buffer dlogits = zeros(B * T * V);
        {
        RMT_PROFILE_SCOPE("bwd.cross_entropy");
        Buffer dlosses(B * T, float(1.0 / denom));
        ops::cross_entropy_backward<float>(dlogits.data(), dlosses.data(), seg.logits.data(),
                                           seg.lse.data(), seg_targets[s].data(),
                                           loss_mask ? seg_mask[s].data() : nullptr, B * T, V, -100);
        }
        Buffer dtoken = zeros(B * T * C);
        {
        RMT_PROFILE_SCOPE_FLOPS("bwd.linear.head", 4 * B * T * C * V);
        ops::linear_backward<float>(dtoken.data(), demb, dbias, dlogits.data(), seg.token_out.data(),
                                    emb, B * T, C, V);
        }
        recycle(dlogits);
        std::vector<Buffer> next_streams(n_streams + 1);
        const int64_t passes = (rmt && !full_depth) ? std::min<int64_t>(bptt_depth, S - 1 - s) + 1 : 1;
        for (int64_t a = 0; a < passes; ++a) {
            if (a > 0 && streams[a].empty()) continue;
            // at the last layer's output rows
            Buffer dfinal = zeros(B * seg.last_out_rows(Q) * C);
            {
            RMT_PROFILE_SCOPE("glue.copy");
            if (a == 0)
                for (int64_t b = 0; b < B; ++b)
                    std::memcpy(&dfinal[seg.last_out_row(b, off, Q) * C], &dtoken[b * T * C],
                                sizeof(float) * T * C);
            const Buffer& incoming = full_depth ? streams[0] : streams[a];
            if (rmt && !incoming.empty())
                for (int64_t b = 0; b < B; ++b) {
                    float* dst = &dfinal[seg.last_out_row(b, M + T, Q) * C];
                    const float* src = &incoming[b * M * C];
                    for (int64_t i = 0; i < M * C; ++i) dst[i] += src[i];
                }
            }
            segment_backward(dh0, seg, dfinal, B, seg_tokens[s].data());
            recycle(dfinal);
            if (config_.kind == Kind::MemTr) {
                RMT_PROFILE_SCOPE("glue.memory");
                float* dmem = grad("mem_tokens");
                for (int64_t b = 0; b < B; ++b)
                    for (int64_t i = 0; i < M * C; ++i) dmem[i] += dh0[b * Q * C + i];
            }
            if (!rmt) continue;
            // The memory entered at the read and the write rows.
            const int64_t age_out = full_depth ? 0 : a + 1;
            if (!full_depth && age_out > bptt_depth) continue;   // a constant for this loss
            RMT_PROFILE_SCOPE("glue.memory");
            Buffer dmem(B * M * C);
            for (int64_t b = 0; b < B; ++b)
                for (int64_t i = 0; i < M * C; ++i)
                    dmem[b * M * C + i] = dh0[b * Q * C + i] + dh0[(b * Q + M + T) * C + i];
            if (s > 0) {
                next_streams[age_out] = std::move(dmem);
            } else if (init_memory) {
                if (init_memory_grad)
                    for (int64_t i = 0; i < B * M * C; ++i) init_memory_grad[i] += dmem[i];
            } else {
                float* dtok = grad("mem_tokens");
                for (int64_t b = 0; b < B; ++b)
                    for (int64_t i = 0; i < M * C; ++i) dtok[i] += dmem[b * M * C + i];
                if (init_memory_grad)
                    for (int64_t i = 0; i < B * M * C; ++i) init_memory_grad[i] += dmem[i];
            }
        }
        streams = std::move(next_streams);
    }
    return result;
}

}  // namespace rmt::model
