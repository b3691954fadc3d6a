#include "model/layer.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "ops/activation.hpp"
#include "ops/attention.hpp"
#include "ops/dropout.hpp"
#include "ops/layernorm.hpp"
#include "ops/linear.hpp"
#include "kernels/profile.hpp"

namespace rmt::model {
namespace {

// out = dropout(x) in place, recording the keep mask (skipped entirely when p = 0).
void dropout_inplace(Buffer& x, std::vector<uint8_t>& keep, DropoutStream& drop) {
    if (!drop.active()) {
        keep.clear();
        return;
    }
    RMT_PROFILE_SCOPE("fwd.dropout");
    keep.resize(x.size());
    ops::dropout_forward<float>(x.data(), keep.data(), x.data(), int64_t(x.size()), drop.p, drop.seed,
                                drop.counter);
    drop.counter += x.size();
}

// The gradient through a dropout site: dx = dy * keep / (1 - p), or dy itself when p = 0.
const float* dropout_grad(const Buffer& dy, const std::vector<uint8_t>& keep, float p,
                          Buffer& scratch) {
    if (keep.empty()) return dy.data();
    RMT_PROFILE_SCOPE("bwd.dropout");
    scratch.assign(dy.size(), 0.0f);
    ops::dropout_backward<float>(scratch.data(), dy.data(), keep.data(), int64_t(dy.size()), p);
    return scratch.data();
}

}  // namespace

namespace {

// The backward pass needs a dozen gradient buffers per layer and segment, of the same few sizes
// every step. Allocated fresh, the large ones come from mmap and every page faults in again (as
// costly as a fill), so returned buffers wait in a per-thread pool, bounded in count and bytes,
// and zeros() and pooled_buffer() reuse the smallest one that fits.
struct ZeroPool {
    std::vector<Buffer> free;
    size_t bytes = 0;
};
thread_local ZeroPool zero_pool;
constexpr size_t kPoolMaxBuffers = 64;
constexpr size_t kPoolMaxBytes = size_t(1) << 30;

}  // namespace

namespace {

// The pooled buffer that fits n floats most tightly (empty if none does), taken out of the pool.
Buffer take_pooled(size_t n) {
    auto& free = zero_pool.free;
    size_t best = free.size();
    for (size_t i = 0; i < free.size(); ++i)
        if (free[i].capacity() >= n &&
            (best == free.size() || free[i].capacity() < free[best].capacity()))
            best = i;
    if (best == free.size()) return {};
    Buffer v = std::move(free[best]);
    free.erase(free.begin() + std::ptrdiff_t(best));
    zero_pool.bytes -= v.capacity() * sizeof(float);
    return v;
}

}  // namespace

Buffer zeros(int64_t n) {
    RMT_PROFILE_SCOPE("glue.zeros");
    Buffer v = take_pooled(size_t(n));
    v.assign(size_t(n), 0.0f);   // within a pooled buffer's capacity: no allocation
    return v;
}

Buffer pooled_buffer(int64_t n) {
    Buffer v = take_pooled(size_t(n));
    // no fill beyond what resize value-initialises: the part past the pooled vector's old size
    // (everything, when no pooled buffer fits and this one is new)
    v.resize(size_t(n));
    return v;
}

void recycle(Buffer& v) {
    const size_t bytes = v.capacity() * sizeof(float);
    if (bytes > 0 && zero_pool.free.size() < kPoolMaxBuffers &&
        zero_pool.bytes + bytes <= kPoolMaxBytes) {
        zero_pool.bytes += bytes;
        zero_pool.free.push_back(std::move(v));
    }
    v = Buffer();
}

void layer_forward(LayerActivations& a, const LayerTensors<const float>& w, const float* h,
                   const float* cache, const uint8_t* allowed, const float* R, const LayerDims& d,
                   DropoutStream& drop) {
    const int64_t B = d.B, Q = d.Q, P = d.P, K = d.K(), C = d.C, D = d.D, F = d.F;
    if (d.out_begin < 0 || d.out_stop() > Q || d.out_rows() < 1 ||
        (d.relative && d.out_stop() != Q))
        throw std::invalid_argument("layer_forward: output rows [" + std::to_string(d.out_begin) +
                                    ", " + std::to_string(d.out_stop()) + ") do not fit " +
                                    std::to_string(Q) + " rows");
    const int64_t Qo = d.out_rows(), NQ = B * Qo;
    // k_in = [cache; h] per batch row: keys and values see the cache, queries only h. Without a
    // cache k_in is h itself: no copy (k_in stays empty).
    const float* k_src = h;
    if (P > 0) {
        RMT_PROFILE_SCOPE("glue.concat");
        a.k_in.resize(B * K * C);
        for (int64_t b = 0; b < B; ++b) {
            std::memcpy(&a.k_in[b * K * C], cache + b * P * C, sizeof(float) * P * C);
            std::memcpy(&a.k_in[(b * K + P) * C], h + b * Q * C, sizeof(float) * Q * C);
        }
        k_src = a.k_in.data();
    } else {
        a.k_in.clear();
    }
    // The query rows of h: all of it, or a copy of the wanted rows (every row-wise op below then
    // reads one contiguous (B, Qo, C) block).
    const float* hq = h;
    if (!d.all_rows()) {
        RMT_PROFILE_SCOPE("glue.copy");
        a.h_rows.resize(NQ * C);
        for (int64_t b = 0; b < B; ++b)
            std::memcpy(&a.h_rows[b * Qo * C], h + (b * Q + d.out_begin) * C,
                        sizeof(float) * Qo * C);
        hq = a.h_rows.data();
    } else {
        a.h_rows.clear();
    }
    // the mask's rows of those queries (its row stride is K; a per-batch-row mask keeps its
    // batch stride)
    const uint8_t* allowed_rows = allowed ? allowed + d.out_begin * K : nullptr;
    // q = h Wq^T, k = k_in Wk^T, v = k_in Wv^T: the three row blocks of qkv.weight (3D, C).
    {
    RMT_PROFILE_SCOPE_FLOPS("fwd.linear.qkv", 2 * (NQ + 2 * B * K) * C * D);
    a.q.resize(NQ * D);
    a.k.resize(B * K * D);
    a.v.resize(B * K * D);
    ops::linear_forward<float>(a.q.data(), hq, w.qkv, nullptr, NQ, C, D);
    ops::linear_forward<float>(a.k.data(), k_src, w.qkv + D * C, nullptr, B * K, C, D);
    ops::linear_forward<float>(a.v.data(), k_src, w.qkv + 2 * D * C, nullptr, B * K, C, D);
    }
    a.probs.resize(B * d.NH * Qo * K);
    a.attn.resize(NQ * D);
    if (d.relative) {
        // rk = R Wr^T; attn = softmax(S | mask) v with S the Transformer-XL relative score
        {
        RMT_PROFILE_SCOPE_FLOPS("fwd.linear.r", 2 * K * C * D);
        a.rk.resize(K * D);
        ops::linear_forward<float>(a.rk.data(), R, w.r, nullptr, K, C, D);
        }
        RMT_PROFILE_SCOPE("fwd.rel_attention");
        ops::rel_attention_forward<float>(a.attn.data(), a.probs.data(), a.q.data(), a.k.data(),
                                          a.v.data(), a.rk.data(), w.u, w.v, allowed_rows,
                                          d.mask_batch_stride, B, Qo, K, d.NH, d.hs);
    } else {
        // attn = softmax(q k^T / sqrt(hs) | mask) v (absolute positions live in the embedding)
        a.rk.clear();
        RMT_PROFILE_SCOPE("fwd.attention");
        ops::attention_forward<float>(a.attn.data(), a.probs.data(), a.q.data(), a.k.data(),
                                      a.v.data(), allowed_rows, d.mask_batch_stride, B, Qo, K,
                                      d.NH, d.hs);
    }
    // res1 = h + dropout(attn Wo^T); o = LN1(res1)
    {
    RMT_PROFILE_SCOPE_FLOPS("fwd.linear.o", 2 * NQ * D * C);
    a.res1.resize(NQ * C);
    ops::linear_forward<float>(a.res1.data(), a.attn.data(), w.o, nullptr, NQ, D, C);
    }
    dropout_inplace(a.res1, a.keep_proj, drop);
    {
    RMT_PROFILE_SCOPE("glue.residual");
    ops::add_inplace<float>(a.res1.data(), hq, NQ * C);
    }
    {
    RMT_PROFILE_SCOPE("fwd.layernorm");
    a.ln1_mean.resize(NQ);
    a.ln1_rstd.resize(NQ);
    a.o.resize(NQ * C);
    ops::layernorm_forward<float>(a.o.data(), a.ln1_mean.data(), a.ln1_rstd.data(), a.res1.data(),
                                  w.ln1_w, w.ln1_b, NQ, C, d.eps);
    }
    // act = dropout(relu or gelu(o W1^T + b1)); res2 = o + dropout(act W2^T + b2); out = LN2(res2)
    a.act.resize(NQ * F);
    if (d.gelu) {
        {
        RMT_PROFILE_SCOPE_FLOPS("fwd.linear.fc1", 2 * NQ * C * F);
        a.fc1.resize(NQ * F);
        ops::linear_forward<float>(a.fc1.data(), a.o.data(), w.fc1_w, w.fc1_b, NQ, C, F);
        }
        RMT_PROFILE_SCOPE("fwd.gelu");
        ops::gelu_forward<float>(a.act.data(), a.fc1.data(), NQ * F, false);
    } else {
        // The GEMM applies the ReLU as it stores act; no pre-activation is kept, since the
        // backward's mask fc1 > 0 is act > 0 (and after the dropout below too: it scales the kept
        // values by 1 / (1 - p) > 0, and a dropped one has no gradient to mask).
        RMT_PROFILE_SCOPE_FLOPS("fwd.linear.fc1", 2 * NQ * C * F);
        a.fc1.clear();
        ops::linear_forward<float>(a.act.data(), a.o.data(), w.fc1_w, w.fc1_b, NQ, C, F,
                                   /*relu=*/true);
    }
    dropout_inplace(a.act, a.keep_act, drop);
    {
    RMT_PROFILE_SCOPE_FLOPS("fwd.linear.fc2", 2 * NQ * F * C);
    a.res2.resize(NQ * C);
    ops::linear_forward<float>(a.res2.data(), a.act.data(), w.fc2_w, w.fc2_b, NQ, F, C);
    }
    dropout_inplace(a.res2, a.keep_ff, drop);
    {
    RMT_PROFILE_SCOPE("glue.residual");
    ops::add_inplace<float>(a.res2.data(), a.o.data(), NQ * C);
    }
    RMT_PROFILE_SCOPE("fwd.layernorm");
    a.ln2_mean.resize(NQ);
    a.ln2_rstd.resize(NQ);
    a.out.resize(NQ * C);
    ops::layernorm_forward<float>(a.out.data(), a.ln2_mean.data(), a.ln2_rstd.data(), a.res2.data(),
                                  w.ln2_w, w.ln2_b, NQ, C, d.eps);
}

void layer_backward(float* dh, LayerTensors<float>& g, const float* dout, const LayerActivations& a,
                    const LayerTensors<const float>& w, const float* h, const float* R,
                    const LayerDims& d, float dropout_p) {
    const int64_t B = d.B, Q = d.Q, P = d.P, K = d.K(), C = d.C, D = d.D, F = d.F;
    const int64_t Qo = d.out_rows(), NQ = B * Qo;
    Buffer scratch;
    // The query rows' gradient (through the residual and q) goes straight into dh when every row
    // is a query; otherwise into dh_rows, added to its rows of dh at the end.
    const float* hq = d.all_rows() ? h : a.h_rows.data();
    Buffer dh_rows = d.all_rows() ? Buffer() : zeros(NQ * C);
    float* dhq = d.all_rows() ? dh : dh_rows.data();
    // The input gradients below go into fresh pooled buffers that the op writes whole (its
    // overwrite mode: each thread zeroes its own part in cache), not zero-filled first: at the
    // copy model's size the fills were 4-5% of a step.
    // out = LN2(res2)
    Buffer dres2 = pooled_buffer(NQ * C);
    {
    RMT_PROFILE_SCOPE("bwd.layernorm");
    ops::layernorm_backward<float>(dres2.data(), g.ln2_w, g.ln2_b, dout, a.res2.data(), w.ln2_w,
                                   a.ln2_mean.data(), a.ln2_rstd.data(), NQ, C,
                                   /*overwrite_dinp=*/true);
    }
    // res2 = o + dropout(act W2^T + b2): the residual hands dres2 to o unchanged
    const float* dff = dropout_grad(dres2, a.keep_ff, dropout_p, scratch);
    Buffer dact = pooled_buffer(NQ * F);
    {
    RMT_PROFILE_SCOPE_FLOPS("bwd.linear.fc2", 4 * NQ * F * C);
    ops::linear_backward<float>(dact.data(), g.fc2_w, g.fc2_b, dff, a.act.data(), w.fc2_w, NQ, F, C,
                                /*overwrite_dinp=*/true);
    }
    // dff (dres2 or its dropout) is read for the last time above: dres2 becomes d_o, the
    // gradient reaching o through the residual, and the fc1 product adds the rest to it
    Buffer d_o = std::move(dres2);
    // act = dropout(relu(fc1)); fc1 = o W1^T + b1
    const float* dact_pre = dropout_grad(dact, a.keep_act, dropout_p, scratch);
    Buffer dfc1 = pooled_buffer(NQ * F);
    if (d.gelu) {
        RMT_PROFILE_SCOPE("bwd.gelu");
        ops::gelu_backward<float>(dfc1.data(), dact_pre, a.fc1.data(), NQ * F, false,
                                  /*overwrite=*/true);
    } else {
        RMT_PROFILE_SCOPE("bwd.relu");
        ops::relu_backward<float>(dfc1.data(), dact_pre, a.act.data(), NQ * F, /*overwrite=*/true);
    }
    {
    RMT_PROFILE_SCOPE_FLOPS("bwd.linear.fc1", 4 * NQ * C * F);
    ops::linear_backward<float>(d_o.data(), g.fc1_w, g.fc1_b, dfc1.data(), a.o.data(), w.fc1_w, NQ,
                                C, F);
    }
    // o = LN1(res1)
    Buffer dres1 = pooled_buffer(NQ * C);
    {
    RMT_PROFILE_SCOPE("bwd.layernorm");
    ops::layernorm_backward<float>(dres1.data(), g.ln1_w, g.ln1_b, d_o.data(), a.res1.data(),
                                   w.ln1_w, a.ln1_mean.data(), a.ln1_rstd.data(), NQ, C,
                                   /*overwrite_dinp=*/true);
    }
    // res1 = h + dropout(attn Wo^T)
    {
    RMT_PROFILE_SCOPE("glue.residual");
    ops::add_inplace<float>(dhq, dres1.data(), NQ * C);
    }
    const float* dproj = dropout_grad(dres1, a.keep_proj, dropout_p, scratch);
    Buffer dattn = pooled_buffer(NQ * D);
    {
    RMT_PROFILE_SCOPE_FLOPS("bwd.linear.o", 4 * NQ * D * C);
    ops::linear_backward<float>(dattn.data(), g.o, nullptr, dproj, a.attn.data(), w.o, NQ, D, C,
                                /*overwrite_dinp=*/true);
    }
    // attn = softmax(S) v
    Buffer dq = pooled_buffer(NQ * D), dk = pooled_buffer(B * K * D),
                       dv = pooled_buffer(B * K * D);
    if (d.relative) {
        Buffer drk = zeros(K * D);
        {
        RMT_PROFILE_SCOPE("bwd.rel_attention");
        ops::rel_attention_backward<float>(dq.data(), dk.data(), dv.data(), drk.data(), g.u, g.v,
                                           dattn.data(), a.q.data(), a.k.data(), a.v.data(),
                                           a.rk.data(), w.u, w.v, a.probs.data(), B, Qo, K, d.NH,
                                           d.hs, /*overwrite=*/true);
        }
        // rk = R Wr^T (R is a constant)
        RMT_PROFILE_SCOPE_FLOPS("bwd.linear.r", 2 * K * C * D);
        ops::linear_backward<float>(nullptr, g.r, nullptr, drk.data(), R, w.r, K, C, D);
        recycle(drk);
    } else {
        RMT_PROFILE_SCOPE("bwd.attention");
        ops::attention_backward<float>(dq.data(), dk.data(), dv.data(), dattn.data(), a.q.data(),
                                       a.k.data(), a.v.data(), a.probs.data(), B, Qo, K, d.NH,
                                       d.hs, /*overwrite=*/true);
    }
    // k = k_in Wk^T, v = k_in Wv^T, q = h Wq^T. Without a cache k_in is h: its gradient goes
    // straight into dh.
    const bool cached = P > 0;
    Buffer dk_in = cached ? zeros(B * K * C) : Buffer();
    float* dk_src = cached ? dk_in.data() : dh;
    const float* k_src = cached ? a.k_in.data() : h;
    {
    RMT_PROFILE_SCOPE_FLOPS("bwd.linear.qkv", 4 * (NQ + 2 * B * K) * C * D);
    ops::linear_backward<float>(dk_src, g.qkv + D * C, nullptr, dk.data(), k_src, w.qkv + D * C,
                                B * K, C, D);
    ops::linear_backward<float>(dk_src, g.qkv + 2 * D * C, nullptr, dv.data(), k_src,
                                w.qkv + 2 * D * C, B * K, C, D);
    ops::linear_backward<float>(dhq, g.qkv, nullptr, dq.data(), hq, w.qkv, NQ, C, D);
    }
    if (cached) {
        RMT_PROFILE_SCOPE("glue.concat");
        // k_in = [cache; h]: the h rows pass their gradient on, the cache rows are a constant
        for (int64_t b = 0; b < B; ++b) {
            const float* src = &dk_in[(b * K + P) * C];
            float* dst = dh + b * Q * C;
            for (int64_t i = 0; i < Q * C; ++i) dst[i] += src[i];
        }
    }
    if (!d.all_rows()) {
        RMT_PROFILE_SCOPE("glue.residual");
        for (int64_t b = 0; b < B; ++b)
            ops::add_inplace<float>(dh + (b * Q + d.out_begin) * C, &dh_rows[b * Qo * C], Qo * C);
    }
    for (auto* v : {&dres2, &d_o, &dact, &dfc1, &dres1, &dattn, &dq, &dk, &dv, &dk_in, &dh_rows,
                    &scratch})
        recycle(*v);
}

}  // namespace rmt::model
