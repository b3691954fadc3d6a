// The RMT encoder (P2, kind rmt_encoder): [CLS][mem][SEP] x [SEP] per segment, bidirectional,
// learned absolute positions, the memory carried with gradient, a CLS classification head on the
// last segment. docs/MODELS.md "rmt_encoder" is the contract this file implements.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/profile.hpp"
#include "kernels/threads.hpp"
#include "model/model.hpp"
#include "ops/activation.hpp"
#include "ops/cross_entropy.hpp"
#include "ops/dropout.hpp"
#include "ops/embedding.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"

namespace rmt::model {

LayerDims Model::encoder_dims(int64_t Bs) const {
    const int64_t Q = config_.query_rows();
    LayerDims d{Bs, Q, 0, config_.d_model, config_.attn_dim(), config_.n_heads, config_.head_size(),
                config_.d_ff, float(config_.layer_norm_eps)};
    d.relative = false;
    d.gelu = true;
    d.mask_batch_stride = Q * Q;
    return d;
}

void Model::encoder_segment_forward(SegmentActivations& seg, const int32_t* tokens, int64_t B,
                                    const float* memory, DropoutStream& drop) {
    const int64_t C = config_.d_model, T = config_.segment_len, M = config_.num_mem_tokens,
                  Q = config_.query_rows(), L = config_.n_layers;
    const int32_t pad = int32_t(config_.pad_id);
    // The samples with at least one content token run; the others skip this segment.
    seg.rows.clear();
    for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t)
            if (tokens[b * T + t] != pad) {
                seg.rows.push_back(b);
                break;
            }
    const int64_t Bs = int64_t(seg.rows.size());
    seg.P = 0;
    seg.dropout_p = drop.active() ? drop.p : 0.0f;
    if (Bs == 0) return;
    // Row ids [CLS, mem x M, SEP, x_1..x_T, SEP] (-1 on the memory rows) and the key mask: every
    // query sees every key except content rows holding pad_id.
    {
    RMT_PROFILE_SCOPE("glue.mask");
    seg.ids.assign(Bs * Q, -1);
    seg.allowed.assign(Bs * Q * Q, 1);
    for (int64_t i = 0; i < Bs; ++i) {
        const int32_t* x = tokens + seg.rows[i] * T;
        int32_t* id = seg.ids.data() + i * Q;
        id[0] = int32_t(config_.cls_id);
        id[M + 1] = int32_t(config_.sep_id);
        id[Q - 1] = int32_t(config_.sep_id);
        std::memcpy(id + M + 2, x, sizeof(int32_t) * T);
        uint8_t* allowed = seg.allowed.data() + i * Q * Q;
        for (int64_t t = 0; t < T; ++t)
            if (x[t] == pad)
                for (int64_t q = 0; q < Q; ++q) allowed[q * Q + M + 2 + t] = 0;
    }
    }
    // emb_in = (E[id] or the memory) + pos_emb[row]; h0 = dropout(LN_emb(emb_in))
    const float* E = param("word_emb.weight");
    const float* pos = param("pos_emb.weight");
    {
    RMT_PROFILE_SCOPE("fwd.embedding");   // with the memory rows and the positions
    seg.emb_in.resize(Bs * Q * C);
    // The rows gathered by memcpy, then the positions added over the whole sample in one vector
    // call: a per-row add loop here compiled to 4-wide SSE (this file has no ISA flags) and each
    // of its rows waited for its table row.
    for (int64_t i = 0; i < Bs; ++i) {
        float* block = &seg.emb_in[i * Q * C];
        for (int64_t r = 0; r < Q; ++r) {
            const int32_t id = seg.ids[i * Q + r];
            const float* src = id >= 0 ? E + int64_t(id) * C : memory + (seg.rows[i] * M + r - 1) * C;
            std::memcpy(block + r * C, src, sizeof(float) * C);
        }
        ops::add_inplace<float>(block, pos, Q * C);
    }
    }
    {
    RMT_PROFILE_SCOPE("fwd.layernorm");
    seg.emb_mean.resize(Bs * Q);
    seg.emb_rstd.resize(Bs * Q);
    seg.h0.resize(Bs * Q * C);
    ops::layernorm_forward<float>(seg.h0.data(), seg.emb_mean.data(), seg.emb_rstd.data(),
                                  seg.emb_in.data(), param("emb_norm.weight"),
                                  param("emb_norm.bias"), Bs * Q, C, float(config_.layer_norm_eps));
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
    seg.R.clear();
    seg.layers.resize(L);
    const LayerDims dims = encoder_dims(Bs);
    set_last_layer_rows(seg);   // the last layer: the CLS and memory rows only
    for (int64_t l = 0; l < L; ++l) {
        const float* h = l == 0 ? seg.h0.data() : seg.layers[l - 1].out.data();
        layer_forward(seg.layers[l], layer_params(l), h, nullptr, seg.allowed.data(), nullptr,
                      layer_dims_of(seg, dims, l, L), drop);
    }
    {
    RMT_PROFILE_SCOPE("glue.copy");
    seg.cls_out.resize(Bs * C);
    const float* out = seg.layers[L - 1].out.data();
    for (int64_t i = 0; i < Bs; ++i)
        std::memcpy(&seg.cls_out[i * C], out + seg.last_out_row(i, 0, Q) * C, sizeof(float) * C);
    }
    encoder_head_forward(seg);
}

void Model::encoder_head_forward(SegmentActivations& seg) const {
    const int64_t C = config_.d_model, NC = config_.num_classes;
    const int64_t Bs = int64_t(seg.rows.size());
    // logits = cls_head(tanh(pooler(cls_out)))
    {
    RMT_PROFILE_SCOPE_FLOPS("fwd.linear.pooler", 2 * Bs * C * C);
    seg.pooled.resize(Bs * C);
    ops::linear_forward<float>(seg.pooled.data(), seg.cls_out.data(), param("pooler.weight"),
                               param("pooler.bias"), Bs, C, C);
    }
    {
    RMT_PROFILE_SCOPE("fwd.tanh");
    for (auto& x : seg.pooled) x = std::tanh(x);
    }
    RMT_PROFILE_SCOPE_FLOPS("fwd.linear.head", 2 * Bs * C * NC);
    seg.logits.resize(Bs * NC);
    ops::linear_forward<float>(seg.logits.data(), seg.pooled.data(), param("cls_head.weight"),
                               param("cls_head.bias"), Bs, C, NC);
}

void Model::encoder_head_backward(Buffer& dcls, const SegmentActivations& seg,
                                  const float* dlogits) {
    const int64_t C = config_.d_model, NC = config_.num_classes;
    const int64_t Bs = int64_t(seg.rows.size());
    Buffer dpooled = zeros(Bs * C);
    {
    RMT_PROFILE_SCOPE_FLOPS("bwd.linear.head", 4 * Bs * C * NC);
    ops::linear_backward<float>(dpooled.data(), grad("cls_head.weight"), grad("cls_head.bias"),
                                dlogits, seg.pooled.data(), param("cls_head.weight"), Bs, C, NC);
    }
    {
    RMT_PROFILE_SCOPE("bwd.tanh");
    for (int64_t i = 0; i < Bs * C; ++i) dpooled[i] *= 1.0f - seg.pooled[i] * seg.pooled[i];
    }
    RMT_PROFILE_SCOPE_FLOPS("bwd.linear.pooler", 4 * Bs * C * C);
    dcls.assign(Bs * C, 0.0f);
    ops::linear_backward<float>(dcls.data(), grad("pooler.weight"), grad("pooler.bias"),
                                dpooled.data(), seg.cls_out.data(), param("pooler.weight"), Bs, C, C);
}

void Model::encoder_segment_backward(Buffer& dmem, const SegmentActivations& seg,
                                     const Buffer& dfinal) {
    const int64_t C = config_.d_model, M = config_.num_mem_tokens, Q = config_.query_rows(),
                  V = config_.vocab_size, L = config_.n_layers, T = config_.segment_len;
    const int64_t Bs = int64_t(seg.rows.size());
    const LayerDims dims = encoder_dims(Bs);
    const float p = seg.dropout_p;
    Buffer d, dh;
    {
    RMT_PROFILE_SCOPE("glue.copy");
    d = dfinal;
    dh.resize(Bs * Q * C);
    }
    for (int64_t l = L - 1; l >= 0; --l) {
        {
        RMT_PROFILE_SCOPE("glue.zeros");
        dh.assign(Bs * Q * C, 0.0f);   // (after the last layer, dh holds its smaller dfinal)
        }
        const float* h = l == 0 ? seg.h0.data() : seg.layers[l - 1].out.data();
        auto g = layer_grads(l);
        layer_backward(dh.data(), g, d.data(), seg.layers[l], layer_params(l), h, nullptr,
                       layer_dims_of(seg, dims, l, L), p);
        std::swap(d, dh);
    }
    // h0 = dropout(LN_emb(emb_in))
    Buffer dln = zeros(int64_t(d.size()));
    if (!seg.keep_h0.empty()) {
        RMT_PROFILE_SCOPE("bwd.dropout");
        ops::dropout_backward<float>(dln.data(), d.data(), seg.keep_h0.data(), int64_t(d.size()), p);
    } else {
        RMT_PROFILE_SCOPE("glue.copy");
        dln = d;
    }
    Buffer demb = zeros(Bs * Q * C);
    {
    RMT_PROFILE_SCOPE("bwd.layernorm");
    ops::layernorm_backward<float>(demb.data(), grad("emb_norm.weight"), grad("emb_norm.bias"),
                                   dln.data(), seg.emb_in.data(), param("emb_norm.weight"),
                                   seg.emb_mean.data(), seg.emb_rstd.data(), Bs * Q, C);
    }
    // emb_in = (E[id] or memory) + pos_emb[row]
    float* dpos = grad("pos_emb.weight");
    float* dE = grad("word_emb.weight");
    RMT_PROFILE_SCOPE("bwd.embedding");   // with the memory rows and the positions
    dmem.assign(Bs * M * C, 0.0f);
    for (int64_t i = 0; i < Bs; ++i) {
        const float* g = &demb[i * Q * C];
        for (int64_t k = 0; k < Q * C; ++k) dpos[k] += g[k];
        const int32_t* id = seg.ids.data() + i * Q;
        ops::embedding_backward<float>(dE, g, id, 1, V, C, 1.0f);                       // CLS
        ops::embedding_backward<float>(dE, g + (M + 1) * C, id + M + 1, T + 2, V, C, 1.0f);   // SEP x SEP
        std::memcpy(&dmem[i * M * C], g + C, sizeof(float) * M * C);
    }
}

void Model::encoder_step(StreamState& st, const int32_t* tokens, float* logits_out) {
    const int64_t B = st.batch, C = config_.d_model, M = config_.num_mem_tokens,
                  T = config_.segment_len, Q = config_.query_rows(), NC = config_.num_classes;
    if (logits_out) std::fill(logits_out, logits_out + B * NC, std::numeric_limits<float>::quiet_NaN());
    // The encoder's samples are independent, so with threads each one runs a contiguous share of
    // the batch through the whole segment, its kernels serial (they are inside a parallel
    // region): one parallel region a segment instead of one or more per op, whose products are
    // too small to split well (the P2 encoder's: 77 x 77 x 16 heads, 770 x 64 x 64 linears).
    // A batch smaller than the thread count keeps the per-op threads (shares would leave threads
    // idle).
    const int64_t threads = kernels::get_num_threads();
    const int64_t shares = kernels::in_parallel_region() || B < threads ? 1 : threads;
    while (st.shares() > shares) {   // fewer threads than the last segment's
        if (st.pool) st.pool->give_back(std::move(st.more_share_workspaces.back()));
        st.more_share_workspaces.pop_back();
    }
    while (st.shares() < shares)
        st.more_share_workspaces.push_back(st.pool ? st.pool->take() : SegmentActivations{});
    auto run_share = [&](int64_t c) {
        const int64_t b0 = B * c / shares, b1 = B * (c + 1) / shares;
        DropoutStream drop;   // inference: no dropout
        encoder_segment_forward(st.share_workspace(c), tokens + b0 * T, b1 - b0,
                                st.memory.data() + b0 * M * C, drop);
    };
    if (shares == 1) {
        run_share(0);
    } else {
        // An exception must not leave a parallel region: each share keeps its own, and the state
        // changes only once every share has run.
        std::vector<std::exception_ptr> errors(static_cast<size_t>(shares));
#ifdef RMT_HAVE_OPENMP
#pragma omp parallel for schedule(static, 1) num_threads(int(shares))
#endif
        for (int64_t c = 0; c < shares; ++c) {
            try {
                run_share(c);
            } catch (...) {
                errors[size_t(c)] = std::current_exception();
            }
        }
        for (const auto& e : errors)
            if (e) std::rethrow_exception(e);
    }
    // the logits and the memory the segment wrote, share by share
    for (int64_t c = 0; c < shares; ++c) {
        const SegmentActivations& seg = st.share_workspace(c);
        const int64_t b0 = B * c / shares;
        const float* out = seg.rows.empty() ? nullptr : seg.layers[config_.n_layers - 1].out.data();
        for (int64_t i = 0; i < int64_t(seg.rows.size()); ++i) {
            const int64_t b = b0 + seg.rows[i];
            if (logits_out) std::memcpy(logits_out + b * NC, &seg.logits[i * NC], sizeof(float) * NC);
            std::memcpy(&st.memory[b * M * C], out + seg.last_out_row(i, 1, Q) * C,
                        sizeof(float) * M * C);
        }
    }
    ++st.segments_seen;
}

ClassifyResult Model::classify_loss_and_grad(const int32_t* tokens, const int32_t* labels,
                                             int64_t B, int64_t Ltot, int64_t bptt_depth,
                                             float* logits_out, bool compute_grad,
                                             int64_t normaliser) {
    if (config_.kind != Kind::RMTEncoder)
        throw std::invalid_argument(std::string("classify needs kind 'rmt_encoder', this model is '") +
                                    kind_name(config_.kind) + "'");
    const int64_t C = config_.d_model, T = config_.segment_len, M = config_.num_mem_tokens,
                  Q = config_.query_rows(), NC = config_.num_classes;
    if (B < 1) throw std::invalid_argument("batch is empty");
    if (Ltot < T || Ltot % T != 0)
        throw std::invalid_argument("sequence length " + std::to_string(Ltot) +
                                    " is not a positive multiple of segment_len " + std::to_string(T));
    const int64_t S = Ltot / T;
    const bool full_depth = bptt_depth < 0 || bptt_depth >= S;
    // Every sample must end on the last segment (the caller right-aligns them).
    for (int64_t b = 0; b < B; ++b) {
        bool any = false;
        for (int64_t t = 0; t < T; ++t) any |= tokens[b * Ltot + (S - 1) * T + t] != config_.pad_id;
        if (!any)
            throw std::invalid_argument("sample " + std::to_string(b) +
                                        " has only padding in its last segment: right-align the "
                                        "samples so that every one ends on the last segment");
    }

    DropoutStream drop;
    drop.p = training_ ? float(config_.dropout) : 0.0f;
    drop.seed = dropout_seed_;
    drop.counter = (dropout_calls_++) << 40;

    // ---- forward ----
    UnrollBuffers buffers(*workspace_, S, compute_grad && labels != nullptr && training_);
    std::vector<SegmentActivations>& segs = buffers.segs();
    Buffer memory(B * M * C);
    {
    RMT_PROFILE_SCOPE("glue.memory");
    for (int64_t b = 0; b < B; ++b)
        std::memcpy(&memory[b * M * C], param("mem_tokens"), sizeof(float) * M * C);
    }
    std::vector<int32_t> toks(B * T);
    for (int64_t s = 0; s < S; ++s) {
        {
        RMT_PROFILE_SCOPE("glue.split");
        for (int64_t b = 0; b < B; ++b)
            std::memcpy(&toks[b * T], tokens + b * Ltot + s * T, sizeof(int32_t) * T);
        }
        SegmentActivations& seg = segs[s];
        encoder_segment_forward(seg, toks.data(), B, memory.data(), drop);
        if (s + 1 < S && !seg.rows.empty()) {
            RMT_PROFILE_SCOPE("glue.memory");
            // Rows 1..M of the last layer are the next memory; a skipped sample keeps its own.
            const float* out = seg.layers[config_.n_layers - 1].out.data();
            for (int64_t i = 0; i < int64_t(seg.rows.size()); ++i)
                std::memcpy(&memory[seg.rows[i] * M * C], out + seg.last_out_row(i, 1, Q) * C,
                            sizeof(float) * M * C);
        }
    }
    SegmentActivations& last = segs[S - 1];   // every sample ran: rows = 0..B-1
    if (logits_out) std::memcpy(logits_out, last.logits.data(), sizeof(float) * B * NC);
    ClassifyResult result;
    result.samples = B;
    if (!labels) return result;
    for (int64_t b = 0; b < B; ++b)
        if (labels[b] < 0 || labels[b] >= NC)
            throw std::invalid_argument("label " + std::to_string(labels[b]) + " of sample " +
                                        std::to_string(b) + " is not in [0, num_classes = " +
                                        std::to_string(NC) + ")");
    double loss_sum = 0;
    {
    RMT_PROFILE_SCOPE("fwd.cross_entropy");
    Buffer losses(B);
    last.lse.resize(B);
    ops::cross_entropy_forward<float>(losses.data(), last.lse.data(), last.logits.data(), labels,
                                      nullptr, B, NC, -100);
    for (float x : losses) loss_sum += x;
    }
    const double denom = normaliser > 0 ? double(normaliser) : double(B);
    result.loss = loss_sum / denom;
    if (!compute_grad) return result;

    // ---- backward, last segment first ----
    // streams[a] (B, M, C): gradient at the memory leaving the current segment, for the samples
    // whose loss is a of their own (non-empty) segments later; bptt_depth = k keeps a <= k. With
    // full depth one merged stream. A skipped sample hands its stream on at the same age.
    const int64_t n_streams = full_depth ? 1 : bptt_depth + 1;
    std::vector<Buffer> streams(n_streams + 1);
    float* dtok = grad("mem_tokens");
    auto deposit = [&](std::vector<Buffer>& into, int64_t age, int64_t s, int64_t b,
                       const float* src) {
        if (s == 0) {   // the memory entering segment 0 is mem_tokens
            for (int64_t k = 0; k < M * C; ++k) dtok[k] += src[k];
            return;
        }
        if (into[age].empty()) into[age].assign(B * M * C, 0.0f);
        float* dst = &into[age][b * M * C];
        for (int64_t k = 0; k < M * C; ++k) dst[k] += src[k];
    };
    Buffer dhead;
    {
        Buffer dlosses(B, float(1.0 / denom)), dlogits(B * NC, 0.0f);
        {
        RMT_PROFILE_SCOPE("bwd.cross_entropy");
        ops::cross_entropy_backward<float>(dlogits.data(), dlosses.data(), last.logits.data(),
                                           last.lse.data(), labels, nullptr, B, NC, -100);
        }
        encoder_head_backward(dhead, last, dlogits.data());
    }
    Buffer dmem;
    for (int64_t s = S - 1; s >= 0; --s) {
        const SegmentActivations& seg = segs[s];
        const int64_t Bs = int64_t(seg.rows.size());
        std::vector<Buffer> next(n_streams + 1);
        // Skipped samples: identity, same age.
        {
        RMT_PROFILE_SCOPE("glue.memory");
        std::vector<uint8_t> ran(B, 0);
        for (auto b : seg.rows) ran[b] = 1;
        for (int64_t a = 0; a < n_streams; ++a) {
            if (streams[a].empty()) continue;
            for (int64_t b = 0; b < B; ++b)
                if (!ran[b]) deposit(next, a, s, b, &streams[a][b * M * C]);
        }
        }
        for (int64_t a = 0; a < n_streams && Bs > 0; ++a) {
            const bool head = s == S - 1 && a == 0;
            if (!head && streams[a].empty()) continue;
            Buffer dfinal = zeros(Bs * seg.last_out_rows(Q) * C);   // at CLS and the memory
            {
            RMT_PROFILE_SCOPE("glue.copy");
            for (int64_t i = 0; i < Bs; ++i) {
                const int64_t b = seg.rows[i];
                if (head)
                    std::memcpy(&dfinal[seg.last_out_row(i, 0, Q) * C], &dhead[b * C],
                                sizeof(float) * C);
                if (!streams[a].empty()) {
                    float* dst = &dfinal[seg.last_out_row(i, 1, Q) * C];
                    const float* src = &streams[a][b * M * C];
                    for (int64_t k = 0; k < M * C; ++k) dst[k] += src[k];
                }
            }
            }
            encoder_segment_backward(dmem, seg, dfinal);
            const int64_t age_out = full_depth ? 0 : a + 1;
            if (!full_depth && age_out > bptt_depth) continue;   // a constant for this loss
            RMT_PROFILE_SCOPE("glue.memory");
            for (int64_t i = 0; i < Bs; ++i) deposit(next, age_out, s, seg.rows[i], &dmem[i * M * C]);
        }
        streams = std::move(next);
    }
    return result;
}

}  // namespace rmt::model
