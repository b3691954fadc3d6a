// Per (batch, head) the products are small GEMMs on strided head slices (row stride C), so no
// head is ever transposed or copied out; the (batch, head) pairs run in parallel and the GEMM
// inside each one stays on its thread (kernels::gemm goes serial inside a parallel region).
#include "ops/attention.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/gemm.hpp"
#include "kernels/isa.hpp"
#include "kernels/threads.hpp"
#include "ops/softmax_rows.hpp"

namespace rmt::ops {

using kernels::gemm;

namespace {

// Threads pay off only past some tens of microseconds of work: waking them costs more than a
// tiny (batch, head) loop, and much more when other processes hold the cores.
bool is_small(int64_t B, int64_t NH, int64_t Tq, int64_t Tk, int64_t hs) {
    return B * NH * Tq * Tk * (hs + 8) < (int64_t(1) << 16);
}

// Split the (batch, head) pairs over threads? (Otherwise a single large pair lets each GEMM
// use the threads itself.)
bool split_heads(int64_t B, int64_t NH, int64_t Tq, int64_t Tk, int64_t hs) {
    return B * NH > 1 && !is_small(B, NH, Tq, Tk, hs) && !kernels::in_parallel_region();
}

// kernels::gemm starts its own threads unless it runs inside a parallel region; a small problem
// keeps every GEMM on the calling thread for the scope of this guard.
class SerialIfSmall {
public:
    SerialIfSmall(int64_t B, int64_t NH, int64_t Tq, int64_t Tk, int64_t hs) {
#ifdef RMT_HAVE_OPENMP
        if (is_small(B, NH, Tq, Tk, hs) && !kernels::in_parallel_region()) {
            saved_ = omp_get_max_threads();
            omp_set_num_threads(1);
        }
#endif
    }
    ~SerialIfSmall() {
#ifdef RMT_HAVE_OPENMP
        if (saved_ > 0) omp_set_num_threads(saved_);
#endif
    }
    SerialIfSmall(const SerialIfSmall&) = delete;
    SerialIfSmall& operator=(const SerialIfSmall&) = delete;

private:
    int saved_ = 0;
};

// Heads this small go through kernels' small_gemm on per-thread packed copies (K^T and V with
// rows padded to 64 bytes) instead of the blocked GEMM: for a 76 x 76 x 16 head (the P2 encoder)
// the blocked GEMM's packing and set-up cost several times the arithmetic.
bool small_heads(int64_t Tq, int64_t Tk, int64_t hs) {
    return Tq * Tk * hs <= (int64_t(1) << 20) && hs <= 128;
}

int64_t round_up(int64_t n, int64_t unit) { return (n + unit - 1) / unit * unit; }

// One (batch, head) of the forward pass with small_gemm. kt (hs x Tkp), vp (Tk x hsp) and
// scores (Tq x Tkp) are the caller's per-thread scratch; their padding columns stay zero.
template <typename T>
void small_head_forward(T* oh, T* p, const T* qh, const T* kh, const T* vh, const uint8_t* allowed,
                        int64_t Tq, int64_t Tk, int64_t C, int64_t hs, T scale, T* kt, T* vp,
                        T* scores) {
    const auto& vec = kernels::vec<T>();
    const int64_t Tkp = round_up(Tk, kernels::pad_elements<T>());
    const int64_t hsp = round_up(hs, kernels::pad_elements<T>());
    for (int64_t j = 0; j < Tk; ++j)
        for (int64_t d = 0; d < hs; ++d) kt[d * Tkp + j] = kh[j * C + d];
    // S = q k^T / sqrt(hs) into padded rows, then the masked softmax into probs
    vec.small_gemm(Tq, Tkp, hs, scale, qh, C, kt, Tkp, scores, Tkp, false);
    for (int64_t i = 0; i < Tq; ++i) std::copy(scores + i * Tkp, scores + i * Tkp + Tk, p + i * Tk);
    masked_softmax_rows<T>(p, p, allowed, Tq, Tk, Tq);
    // out = P v: straight into the head's columns when hs is already padded
    if (hsp == hs) {
        vec.small_gemm(Tq, hs, Tk, T(1), p, Tk, vh, C, oh, C, false);
        return;
    }
    for (int64_t j = 0; j < Tk; ++j) std::copy(vh + j * C, vh + j * C + hs, vp + j * hsp);
    vec.small_gemm(Tq, hsp, Tk, T(1), p, Tk, vp, hsp, scores, hsp, false);
    for (int64_t i = 0; i < Tq; ++i) std::copy(scores + i * hsp, scores + i * hsp + hs, oh + i * C);
}

}  // namespace

template <typename T>
void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, const uint8_t* allowed,
                       int64_t mask_batch_stride, int64_t B, int64_t Tq, int64_t Tk, int64_t NH,
                       int64_t hs) {
    const int64_t C = NH * hs;
    const T scale = T(1) / std::sqrt(T(hs));
    if (small_heads(Tq, Tk, hs)) {
        const int64_t pad = kernels::pad_elements<T>();
        const int64_t Tkp = round_up(Tk, pad), hsp = round_up(hs, pad);
#ifdef RMT_HAVE_OPENMP
#pragma omp parallel if (split_heads(B, NH, Tq, Tk, hs))
#endif
        {
            std::vector<T> kt(size_t(hs * Tkp), T(0)), vp(size_t(Tk * hsp), T(0));
            std::vector<T> scores(size_t(Tq * std::max(Tkp, hsp)), T(0));
#ifdef RMT_HAVE_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (int64_t bh = 0; bh < B * NH; ++bh) {
                const int64_t b = bh / NH, h = bh % NH;
                small_head_forward<T>(out + b * Tq * C + h * hs, probs + bh * Tq * Tk,
                                      q + b * Tq * C + h * hs, k + b * Tk * C + h * hs,
                                      v + b * Tk * C + h * hs,
                                      allowed ? allowed + b * mask_batch_stride : nullptr, Tq, Tk,
                                      C, hs, scale, kt.data(), vp.data(), scores.data());
            }
        }
        return;
    }
    SerialIfSmall serial_if_small(B, NH, Tq, Tk, hs);
#ifdef RMT_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) if (split_heads(B, NH, Tq, Tk, hs))
#endif
    for (int64_t bh = 0; bh < B * NH; ++bh) {
        const int64_t b = bh / NH, h = bh % NH;
        const T* qh = q + b * Tq * C + h * hs;
        const T* kh = k + b * Tk * C + h * hs;
        const T* vh = v + b * Tk * C + h * hs;
        T* oh = out + b * Tq * C + h * hs;
        T* p = probs + bh * Tq * Tk;
        // S = q k^T / sqrt(hs), then the masked softmax in place
        gemm<T>(false, true, Tq, Tk, hs, scale, qh, C, kh, C, T(0), p, Tk);
        masked_softmax_rows<T>(p, p, allowed ? allowed + b * mask_batch_stride : nullptr, Tq, Tk,
                               Tq);
        // out = P v (a query with nothing allowed has P = 0, so outputs 0)
        gemm<T>(false, false, Tq, hs, Tk, T(1), p, Tk, vh, C, T(0), oh, C);
    }
}

template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* probs, int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t hs) {
    const int64_t C = NH * hs;
    const T scale = T(1) / std::sqrt(T(hs));
    SerialIfSmall serial_if_small(B, NH, Tq, Tk, hs);
#ifdef RMT_HAVE_OPENMP
#pragma omp parallel if (split_heads(B, NH, Tq, Tk, hs))
#endif
    {
        std::vector<T> ds(size_t(Tq * Tk));
#ifdef RMT_HAVE_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t bh = 0; bh < B * NH; ++bh) {
            const int64_t b = bh / NH, h = bh % NH;
            const T* qh = q + b * Tq * C + h * hs;
            const T* kh = k + b * Tk * C + h * hs;
            const T* vh = v + b * Tk * C + h * hs;
            const T* doh = dout + b * Tq * C + h * hs;
            const T* p = probs + bh * Tq * Tk;
            T* dqh = dq + b * Tq * C + h * hs;
            T* dkh = dk + b * Tk * C + h * hs;
            T* dvh = dv + b * Tk * C + h * hs;
            // out = P v:  dP = dout v^T,  dv += P^T dout
            gemm<T>(false, true, Tq, Tk, hs, T(1), doh, C, vh, C, T(0), ds.data(), Tk);
            gemm<T>(true, false, Tk, hs, Tq, T(1), p, Tk, doh, C, T(1), dvh, C);
            // P = softmax(S): dS = P (dP - <dP, P>), with the 1/sqrt(hs) of S folded in
            softmax_rows_backward<T>(ds.data(), ds.data(), p, Tq, Tk, scale, true);
            // S = q k^T:  dq += dS k,  dk += dS^T q
            gemm<T>(false, false, Tq, hs, Tk, T(1), ds.data(), Tk, kh, C, T(1), dqh, C);
            gemm<T>(true, false, Tk, hs, Tq, T(1), ds.data(), Tk, qh, C, T(1), dkh, C);
        }
    }
}

template <typename T>
void rel_attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, const T* rk,
                           const T* u_bias, const T* v_bias, const uint8_t* allowed,
                           int64_t mask_batch_stride, int64_t B, int64_t Q, int64_t K, int64_t NH,
                           int64_t hs) {
    const int64_t C = NH * hs;
    const T scale = T(1) / std::sqrt(T(hs));
    SerialIfSmall serial_if_small(B, NH, Q, K, hs);
#ifdef RMT_HAVE_OPENMP
#pragma omp parallel if (split_heads(B, NH, Q, K, hs))
#endif
    {
        std::vector<T> qu(size_t(Q * hs)), qv(size_t(Q * hs)), bd(size_t(Q * K));
#ifdef RMT_HAVE_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t bh = 0; bh < B * NH; ++bh) {
            const int64_t b = bh / NH, h = bh % NH;
            const T* qh = q + b * Q * C + h * hs;
            const T* kh = k + b * K * C + h * hs;
            const T* vh = v + b * K * C + h * hs;
            const T* rkh = rk + h * hs;
            const T* uh = u_bias + h * hs;
            const T* vbh = v_bias + h * hs;
            T* oh = out + b * Q * C + h * hs;
            T* p = probs + bh * Q * K;
            for (int64_t i = 0; i < Q; ++i)
                for (int64_t d = 0; d < hs; ++d) {
                    qu[i * hs + d] = qh[i * C + d] + uh[d];
                    qv[i * hs + d] = qh[i * C + d] + vbh[d];
                }
            // content term: S = (q + u) k^T / sqrt(hs)
            gemm<T>(false, true, Q, K, hs, scale, qu.data(), hs, kh, C, T(0), p, K);
            // position term against every distance: BD[i, m] = (q_i + v) . rk_m / sqrt(hs),
            // then the rel shift S[i, j] += BD[i, j + Q-1-i] where that index exists
            gemm<T>(false, true, Q, K, hs, scale, qv.data(), hs, rkh, C, T(0), bd.data(), K);
            for (int64_t i = 0; i < Q; ++i) {
                const int64_t shift = Q - 1 - i;
                const int64_t jend = K - shift;   // j + shift < K
                T* srow = p + i * K;
                const T* brow = bd.data() + i * K + shift;
                for (int64_t j = 0; j < jend; ++j) srow[j] += brow[j];
            }
            masked_softmax_rows<T>(p, p, allowed ? allowed + b * mask_batch_stride : nullptr, Q, K,
                                   Q);
            gemm<T>(false, false, Q, hs, K, T(1), p, K, vh, C, T(0), oh, C);
        }
    }
}

template <typename T>
void rel_attention_backward(T* dq, T* dk, T* dv, T* drk, T* du_bias, T* dv_bias, const T* dout,
                            const T* q, const T* k, const T* v, const T* rk, const T* u_bias,
                            const T* v_bias, const T* probs, int64_t B, int64_t Q, int64_t K,
                            int64_t NH, int64_t hs) {
    const int64_t C = NH * hs;
    const T scale = T(1) / std::sqrt(T(hs));
    SerialIfSmall serial_if_small(B, NH, Q, K, hs);
    // drk, du and dv_bias are shared by the batch rows: with B > 1 each row accumulates into its
    // own slice, summed at the end, so the (batch, head) pairs stay independent.
    std::vector<T> parts;
    if (B > 1) parts.assign(size_t(B * (K * C + 2 * C)), T(0));
    auto part = [&](int64_t b) { return parts.data() + b * (K * C + 2 * C); };
#ifdef RMT_HAVE_OPENMP
#pragma omp parallel if (split_heads(B, NH, Q, K, hs))
#endif
    {
        std::vector<T> qu(size_t(Q * hs)), qv(size_t(Q * hs)), dqx(size_t(Q * hs));
        std::vector<T> ds(size_t(Q * K)), dbd(size_t(Q * K));
#ifdef RMT_HAVE_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t bh = 0; bh < B * NH; ++bh) {
            const int64_t b = bh / NH, h = bh % NH;
            const T* qh = q + b * Q * C + h * hs;
            const T* kh = k + b * K * C + h * hs;
            const T* vh = v + b * K * C + h * hs;
            const T* rkh = rk + h * hs;
            const T* uh = u_bias + h * hs;
            const T* vbh = v_bias + h * hs;
            const T* doh = dout + b * Q * C + h * hs;
            const T* p = probs + bh * Q * K;
            T* dqh = dq + b * Q * C + h * hs;
            T* dkh = dk + b * K * C + h * hs;
            T* dvh = dv + b * K * C + h * hs;
            T* drkh = (B > 1 ? part(b) : drk) + h * hs;
            T* duh = (B > 1 ? part(b) + K * C : du_bias) + h * hs;
            T* dvbh = (B > 1 ? part(b) + K * C + C : dv_bias) + h * hs;
            for (int64_t i = 0; i < Q; ++i)
                for (int64_t d = 0; d < hs; ++d) {
                    qu[i * hs + d] = qh[i * C + d] + uh[d];
                    qv[i * hs + d] = qh[i * C + d] + vbh[d];
                }
            // out = P v:  dP = dout v^T,  dv += P^T dout
            gemm<T>(false, true, Q, K, hs, T(1), doh, C, vh, C, T(0), ds.data(), K);
            gemm<T>(true, false, K, hs, Q, T(1), p, K, doh, C, T(1), dvh, C);
            // P = softmax(S): dS = P (dP - <dP, P>) / sqrt(hs)  (the gradient of both terms)
            softmax_rows_backward<T>(ds.data(), ds.data(), p, Q, K, scale, true);
            // content term (q + u) k^T:  d(q + u) = dS k  (to dq and du),  dk += dS^T (q + u)
            gemm<T>(false, false, Q, hs, K, T(1), ds.data(), K, kh, C, T(0), dqx.data(), hs);
            for (int64_t i = 0; i < Q; ++i)
                for (int64_t d = 0; d < hs; ++d) {
                    dqh[i * C + d] += dqx[i * hs + d];
                    duh[d] += dqx[i * hs + d];
                }
            gemm<T>(true, false, K, hs, Q, T(1), ds.data(), K, qu.data(), hs, T(1), dkh, C);
            // rel shift backward: scatter dS[i, j] back to BD[i, j + Q-1-i]
            for (int64_t i = 0; i < Q; ++i) {
                const int64_t shift = std::min(Q - 1 - i, K);
                const int64_t jend = K - shift;
                T* brow = dbd.data() + i * K;
                std::fill(brow, brow + shift, T(0));
                std::copy(ds.data() + i * K, ds.data() + i * K + jend, brow + shift);
            }
            // position term (q + v) rk^T:  d(q + v) = dBD rk (to dq and dv_bias),
            // drk += dBD^T (q + v)
            gemm<T>(false, false, Q, hs, K, T(1), dbd.data(), K, rkh, C, T(0), dqx.data(), hs);
            for (int64_t i = 0; i < Q; ++i)
                for (int64_t d = 0; d < hs; ++d) {
                    dqh[i * C + d] += dqx[i * hs + d];
                    dvbh[d] += dqx[i * hs + d];
                }
            gemm<T>(true, false, K, hs, Q, T(1), dbd.data(), K, qv.data(), hs, T(1), drkh, C);
        }
    }
    if (B > 1) {
        for (int64_t b = 0; b < B; ++b) {
            const T* src = part(b);
            for (int64_t x = 0; x < K * C; ++x) drk[x] += src[x];
            for (int64_t c = 0; c < C; ++c) {
                du_bias[c] += src[K * C + c];
                dv_bias[c] += src[K * C + C + c];
            }
        }
    }
}

template <typename T>
void rel_position_encoding(T* R, int64_t K, int64_t C, int64_t clamp_len) {
    const int64_t half = C / 2;
    for (int64_t r = 0; r < K; ++r) {
        int64_t p = K - 1 - r;
        if (clamp_len > 0) p = std::min(p, clamp_len);
        for (int64_t i = 0; i < half; ++i) {
            const double f = 1.0 / std::pow(10000.0, double(2 * i) / double(C));
            R[r * C + i] = T(std::sin(double(p) * f));
            R[r * C + half + i] = T(std::cos(double(p) * f));
        }
    }
}

#define RMT_INSTANTIATE(T)                                                                         \
    template void attention_forward<T>(T*, T*, const T*, const T*, const T*, const uint8_t*,       \
                                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t);      \
    template void attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,        \
                                        const T*, int64_t, int64_t, int64_t, int64_t, int64_t);    \
    template void rel_attention_forward<T>(T*, T*, const T*, const T*, const T*, const T*,         \
                                           const T*, const T*, const uint8_t*, int64_t, int64_t,   \
                                           int64_t, int64_t, int64_t, int64_t);                    \
    template void rel_attention_backward<T>(T*, T*, T*, T*, T*, T*, const T*, const T*, const T*,  \
                                            const T*, const T*, const T*, const T*, const T*,      \
                                            int64_t, int64_t, int64_t, int64_t, int64_t);          \
    template void rel_position_encoding<T>(T*, int64_t, int64_t, int64_t);

RMT_INSTANTIATE(float)
RMT_INSTANTIATE(double)
#undef RMT_INSTANTIATE

}  // namespace rmt::ops
