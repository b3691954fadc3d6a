// Multi-head attention products, with heads interleaved along C (C = NH * hs) exactly as a
// linear projection leaves them: head h of token t is x[t, h*hs : (h+1)*hs]. No head is copied
// out; only the keys (and, in the backward, the values) of one head are transposed into scratch
// for the products against them.
//
// Masks: allowed (Tq, Tk), 1 = query i may attend key j, shared by the batch when
// mask_batch_stride = 0, or one (Tq, Tk) block per batch row when it is Tq * Tk (padding).
// A query with no allowed key outputs zeros.
#pragma once
#include <cstdint>

namespace rmt::ops {

// out (B, Tq, C) = softmax(q k^T / sqrt(hs) | mask) v per head; probs (B, NH, Tq, Tk) saved.
template <typename T>
void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, const uint8_t* allowed,
                       int64_t mask_batch_stride, int64_t B, int64_t Tq, int64_t Tk, int64_t NH,
                       int64_t hs);

// Accumulates dq (B, Tq, C), dk (B, Tk, C), dv (B, Tk, C). With overwrite, dq, dk and dv are
// written instead: each (batch, head) pair zeroes its own slices in cache first and their old
// contents are never read, so fresh buffers need no zero fill.
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* probs, int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t hs,
                        bool overwrite = false);

// Transformer-XL relative attention. The Q queries are the last Q of the K key positions
// (K = cache + Q). rk (K, C) = R W_r^T, where row r encodes distance K-1-r. Per head:
//   S[i,j] = ((q_i + u) . k_j + (q_i + v) . rk[j + Q-1-i]) / sqrt(hs)
// The index j + Q-1-i is Transformer-XL's "rel shift"; a key after its query (only reachable under
// a non-causal mask) has j + Q-1-i >= K and gets no positional term.
// u_bias, v_bias (C,) = (NH, hs). out (B, Q, C), probs (B, NH, Q, K) saved.
template <typename T>
void rel_attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, const T* rk,
                           const T* u_bias, const T* v_bias, const uint8_t* allowed,
                           int64_t mask_batch_stride, int64_t B, int64_t Q, int64_t K, int64_t NH,
                           int64_t hs);

// Accumulates dq (B,Q,C), dk, dv (B,K,C), drk (K,C), du, dv_bias (C,). overwrite as in
// attention_backward, for dq, dk and dv only (drk, du and dv_bias always accumulate).
template <typename T>
void rel_attention_backward(T* dq, T* dk, T* dv, T* drk, T* du_bias, T* dv_bias, const T* dout,
                            const T* q, const T* k, const T* v, const T* rk, const T* u_bias,
                            const T* v_bias, const T* probs, int64_t B, int64_t Q, int64_t K,
                            int64_t NH, int64_t hs, bool overwrite = false);

// R (K, C): row r = [sin(p f) | cos(p f)] for p = min(K-1-r, clamp_len) (clamp_len <= 0: none),
// f_i = 1 / 10000^(2i/C), i < C/2. C must be even. A constant: no backward.
template <typename T>
void rel_position_encoding(T* R, int64_t K, int64_t C, int64_t clamp_len);

}  // namespace rmt::ops
