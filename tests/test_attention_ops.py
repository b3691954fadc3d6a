"""Masked softmax, the masks, attention and Transformer-XL relative attention: float64 finite
differences, PyTorch parity (incl. kimiyoung's _rel_shift formulation), awkward shapes, bad input."""
import math

import numpy as np
import pytest
import torch

import rmt
from helpers import assert_close, check_grads_fd

ops = rmt.ops

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


# ---------------------------------------------------------------------------------------------
# References

def torch_masked_softmax(scores, allowed):
    """Softmax over the last axis under `allowed` (broadcastable bool tensor); rows with nothing
    allowed are zeros (masked_fill -inf alone would give NaN there)."""
    if allowed is None:
        return torch.softmax(scores, -1)
    any_allowed = allowed.any(-1, keepdim=True)
    s = scores.masked_fill(~allowed, float("-inf")).masked_fill(~any_allowed, 0.0)
    return torch.softmax(s, -1) * any_allowed


def torch_attention(q, k, v, n_heads, allowed):
    """Explicit multi-head attention: reshape heads out of C, scores, mask, softmax, values."""
    B, Tq, C = q.shape
    Tk, hs = k.shape[1], C // n_heads
    qh = q.view(B, Tq, n_heads, hs).transpose(1, 2)
    kh = k.view(B, Tk, n_heads, hs).transpose(1, 2)
    vh = v.view(B, Tk, n_heads, hs).transpose(1, 2)
    s = qh @ kh.transpose(-1, -2) / math.sqrt(hs)
    mask = None
    if allowed is not None:
        mask = torch.as_tensor(allowed).bool()
        mask = mask[:, None] if mask.dim() == 3 else mask
    p = torch_masked_softmax(s, mask)
    return (p @ vh).transpose(1, 2).reshape(B, Tq, C), p


def torch_rel_attention_direct(q, k, v, rk, u, vb, n_heads, allowed):
    """S[i,j] = ((q_i+u).k_j + (q_i+v).rk[j+Q-1-i]) / sqrt(hs), the positional term gathered at
    the explicit index and dropped where the index is >= K."""
    B, Q, C = q.shape
    K, hs = k.shape[1], C // n_heads
    qh = q.view(B, Q, n_heads, hs).transpose(1, 2)
    kh = k.view(B, K, n_heads, hs).transpose(1, 2)
    vh = v.view(B, K, n_heads, hs).transpose(1, 2)
    rh = rk.view(K, n_heads, hs).transpose(0, 1)                       # (NH, K, hs)
    ac = (qh + u.view(n_heads, 1, hs)) @ kh.transpose(-1, -2)          # (B, NH, Q, K)
    bd_full = (qh + vb.view(n_heads, 1, hs)) @ rh.transpose(-1, -2)    # (B, NH, Q, K) by distance row
    i = torch.arange(Q)[:, None]
    j = torch.arange(K)[None, :]
    idx = j + Q - 1 - i
    valid = idx < K
    bd = torch.gather(bd_full, 3, idx.clamp(max=K - 1).expand(B, n_heads, Q, K)) * valid
    s = (ac + bd) / math.sqrt(hs)
    mask = None
    if allowed is not None:
        mask = torch.as_tensor(allowed).bool()
        mask = mask[:, None] if mask.dim() == 3 else mask
    p = torch_masked_softmax(s, mask)
    return (p @ vh).transpose(1, 2).reshape(B, Q, C), p


def _rel_shift(x):
    """kimiyoung/transformer-xl pytorch/mem_transformer.py, x (qlen, klen, bsz, n_head)."""
    zero_pad = torch.zeros((x.size(0), 1, *x.size()[2:]), device=x.device, dtype=x.dtype)
    x_padded = torch.cat([zero_pad, x], dim=1)
    x_padded = x_padded.view(x.size(1) + 1, x.size(0), *x.size()[2:])
    return x_padded[1:].view_as(x)


def torch_rel_attention_kimiyoung(q, k, v, rk, u, vb, n_heads, allowed):
    """RelPartialLearnableMultiHeadAttn's core, in its (time, batch, head, d) layout: AC + BD with
    BD computed against the full rk and then rel-shifted by pad/reshape."""
    B, Q, C = q.shape
    K, hs = k.shape[1], C // n_heads
    w_head_q = q.transpose(0, 1).reshape(Q, B, n_heads, hs)
    w_head_k = k.transpose(0, 1).reshape(K, B, n_heads, hs)
    w_head_v = v.transpose(0, 1).reshape(K, B, n_heads, hs)
    r_head_k = rk.view(K, n_heads, hs)
    rw_head_q = w_head_q + u.view(n_heads, hs)
    AC = torch.einsum("ibnd,jbnd->ijbn", rw_head_q, w_head_k)
    rr_head_q = w_head_q + vb.view(n_heads, hs)
    BD = torch.einsum("ibnd,jnd->ijbn", rr_head_q, r_head_k)
    BD = _rel_shift(BD)
    attn_score = (AC + BD) * (1 / hs ** 0.5)
    mask = torch.as_tensor(allowed).bool()                               # (Q, K) or (B, Q, K)
    mask = mask[:, :, None, None] if mask.dim() == 2 else mask.permute(1, 2, 0)[..., None]
    attn_score = attn_score.masked_fill(~mask, -float("inf"))
    attn_prob = torch.softmax(attn_score, dim=1)
    attn_vec = torch.einsum("ijbn,jbnd->ibnd", attn_prob, w_head_v)
    return attn_vec.reshape(Q, B, C).transpose(0, 1), attn_prob.permute(2, 3, 0, 1)


def run_torch(fn, arrays, upstream, *args):
    """fn(*tensors, *args) -> (out, probs); returns out, probs and the gradients of sum(out*up)."""
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, probs = fn(*tensors, *args)
    out.backward(torch.tensor(upstream))
    return out.detach().numpy(), probs.detach().numpy(), [t.grad.numpy() for t in tensors]


# ---------------------------------------------------------------------------------------------
# Masks

def np_causal(Tq, cache=0, window=0):
    K = cache + Tq
    m = np.tril(np.ones((Tq, K), bool), cache)
    if window > 0:
        m &= ~np.tril(np.ones((Tq, K), bool), cache - window)
    return m


def np_rmt_decoder(M, T, cache=0):
    Q, K = 2 * M + T, cache + 2 * M + T
    m = np.zeros((Q, K), bool)
    m[:M, :cache + M] = True                                  # read: cache + read block
    m[M:M + T, :cache + M] = True                             # tokens: cache + read block ...
    m[M:M + T, cache + M:cache + M + T] = np.tril(np.ones((T, T), bool))   # ... + causal past
    m[M + T:, :] = True                                       # write: everything
    return m


def make_mask(kind, B, Tq, Tk, rng):
    """(allowed, Tq, Tk) for a mask kind; allowed is None for unmasked (bidirectional)."""
    if kind == "none":
        return None
    if kind == "causal":
        return ops.causal_mask(Tq)
    if kind == "causal_cache":
        return ops.causal_mask(Tq, Tk - Tq)
    if kind == "same_length":
        return ops.causal_mask(Tq, Tk - Tq, max(1, Tk // 2))
    if kind == "padding":   # one (Tq, Tk) block per batch row, one row with nothing visible
        lengths = [(b * 3 + 1) % (Tk + 1) for b in range(B)]
        lengths[-1] = 0 if B > 1 else lengths[-1]
        return np.stack([ops.padding_mask(Tq, Tk, L) for L in lengths])
    if kind == "rmt":
        raise AssertionError("rmt masks fix their own shapes")
    if kind == "random":    # arbitrary per-batch mask incl. fully masked rows, as uint8
        m = (rng.random((B, Tq, Tk)) < 0.6).astype(np.uint8)
        m[0, 0] = 0
        return m
    raise AssertionError(kind)


def test_causal_mask_matches_numpy():
    for Tq, cache in [(1, 0), (4, 0), (3, 5), (6, 2)]:
        m = ops.causal_mask(Tq, cache)
        assert m.dtype == np.bool_ and m.shape == (Tq, cache + Tq)
        np.testing.assert_array_equal(m, np_causal(Tq, cache))
        for i in range(Tq):
            for j in range(cache + Tq):
                assert m[i, j] == (j <= cache + i)


@pytest.mark.parametrize("Tq,mlen,mem_len", [(4, 4, 4), (5, 3, 4), (3, 0, 2), (2, 1, 6), (6, 6, 3)])
def test_same_length_matches_kimiyoung(Tq, mlen, mem_len):
    # kimiyoung MemTransformerLM._forward, same_length branch (applied when klen > mem_len)
    klen = mlen + Tq
    all_ones = np.ones((Tq, klen))
    mask_len = klen - mem_len
    mask_shift_len = Tq - mask_len if mask_len > 0 else Tq
    masked = (np.triu(all_ones, 1 + mlen) + np.tril(all_ones, -mask_shift_len)) > 0
    ours = ops.causal_mask(Tq, mlen, mem_len)
    np.testing.assert_array_equal(ours, ~masked)
    # query i sees the last min(mlen + i + 1, mem_len) keys ending at itself
    np.testing.assert_array_equal(ours.sum(1), np.minimum(mlen + np.arange(Tq) + 1, mem_len))


def test_rmt_decoder_mask_table_and_cache():
    table = np.array([[1, 1, 0, 0, 0, 0, 0],
                      [1, 1, 0, 0, 0, 0, 0],
                      [1, 1, 1, 0, 0, 0, 0],
                      [1, 1, 1, 1, 0, 0, 0],
                      [1, 1, 1, 1, 1, 0, 0],
                      [1, 1, 1, 1, 1, 1, 1],
                      [1, 1, 1, 1, 1, 1, 1]], bool)          # shared/SPEC.md, M = 2, T = 3
    np.testing.assert_array_equal(ops.rmt_decoder_mask(2, 3), table)
    for M, T, cache in [(2, 3, 4), (1, 1, 0), (3, 5, 2), (0, 4, 3)]:
        m = ops.rmt_decoder_mask(M, T, cache)
        assert m.shape == (2 * M + T, cache + 2 * M + T)
        np.testing.assert_array_equal(m, np_rmt_decoder(M, T, cache))
    # with no memory it is the causal mask with a cache
    np.testing.assert_array_equal(ops.rmt_decoder_mask(0, 4, 3), ops.causal_mask(4, 3))


def test_padding_mask():
    for Tq, Tk, L in [(3, 5, 2), (1, 1, 1), (4, 4, 0), (2, 6, 9)]:
        m = ops.padding_mask(Tq, Tk, L)
        want = np.zeros((Tq, Tk), bool)
        want[:, :min(L, Tk)] = True
        np.testing.assert_array_equal(m, want)


# ---------------------------------------------------------------------------------------------
# Masked softmax

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,mask_rows", [((1, 1), 1), ((5, 17), None), ((2, 3, 33), 3),
                                             ((4, 7, 70), 7), ((6, 129), 2), ((3, 16), 1)])
def test_masked_softmax_matches_torch(isa, rng, dtype, shape, mask_rows):
    scores = (3 * rng.standard_normal(shape)).astype(dtype)
    N = shape[-1]
    allowed = None
    if mask_rows is not None:
        allowed = rng.random((mask_rows, N)) < 0.5
        allowed[0, 0] = True
        if mask_rows > 1:
            allowed[1] = False          # a fully masked row: zeros, no NaN
    dprobs = rng.standard_normal(shape).astype(dtype)
    probs = ops.masked_softmax_forward(scores, allowed)
    dscores = ops.masked_softmax_backward(dprobs, probs)
    t = torch.tensor(scores, requires_grad=True)
    mask = None
    if allowed is not None:
        R = scores.size // N
        mask = torch.tensor(np.tile(allowed, (R // mask_rows, 1)).reshape(shape))
    ref = torch_masked_softmax(t, mask)
    ref.backward(torch.tensor(dprobs))
    assert not np.isnan(probs).any()
    assert_close(probs, ref.detach().numpy(), what="probs", **TOL[dtype])
    assert_close(dscores, t.grad.numpy(), what="dscores", **TOL[dtype])
    if mask is not None:
        assert (probs[~mask.numpy()] == 0).all()


def test_masked_softmax_extreme_scores_and_uint8_mask(isa):
    scores = np.array([[1e4, -1e4, 3e4, 0.0], [-1e30, -1e30, -1e30, -1e30]], np.float32)
    allowed = np.array([[1, 1, 0, 1], [1, 0, 0, 1]], np.uint8)
    p = ops.masked_softmax_forward(scores, allowed)
    np.testing.assert_array_equal(p, [[1, 0, 0, 0], [0.5, 0, 0, 0.5]])
    p = ops.masked_softmax_forward(scores, allowed.astype(bool))
    np.testing.assert_array_equal(p, [[1, 0, 0, 0], [0.5, 0, 0, 0.5]])
    nothing = ops.masked_softmax_forward(scores, np.zeros((1, 4), np.uint8))
    np.testing.assert_array_equal(nothing, np.zeros((2, 4)))


def test_masked_softmax_backward_finite_differences(rng):
    scores = rng.standard_normal((3, 2, 6))
    allowed = rng.random((2, 6)) < 0.6
    allowed[0, :2] = True
    allowed[1] = False
    up = rng.standard_normal((3, 2, 6))
    check_grads_fd(lambda s: ops.masked_softmax_forward(s, allowed),
                   lambda d, s: (ops.masked_softmax_backward(d, ops.masked_softmax_forward(s, allowed)),),
                   {"scores": scores}, up)
    check_grads_fd(lambda s: ops.masked_softmax_forward(s),
                   lambda d, s: (ops.masked_softmax_backward(d, ops.masked_softmax_forward(s)),),
                   {"scores": scores}, up)


# ---------------------------------------------------------------------------------------------
# Attention

ATTN_SHAPES = [  # (B, Tq, Tk, C, NH)
    (1, 1, 1, 1, 1),       # T = 1, one head, hs = 1
    (2, 5, 5, 20, 4),      # C = 20 with 4 heads (hs = 5)
    (1, 7, 12, 8, 1),      # one head, Tq != Tk
    (3, 17, 33, 24, 3),    # tails that are not multiples of 16
    (2, 16, 16, 64, 4),
]
MASK_KINDS = ["none", "causal", "causal_cache", "same_length", "padding", "random"]


def attention_inputs(rng, B, Tq, Tk, C, dtype):
    q = rng.standard_normal((B, Tq, C)).astype(dtype)
    k = rng.standard_normal((B, Tk, C)).astype(dtype)
    v = rng.standard_normal((B, Tk, C)).astype(dtype)
    dout = rng.standard_normal((B, Tq, C)).astype(dtype)
    return q, k, v, dout


def check_attention(rng, B, Tq, Tk, C, NH, allowed, dtype):
    q, k, v, dout = attention_inputs(rng, B, Tq, Tk, C, dtype)
    out, probs = ops.attention_forward(q, k, v, NH, allowed)
    dq, dk, dv = ops.attention_backward(dout, q, k, v, probs, NH)
    ref, pref, (rq, rk, rv) = run_torch(torch_attention, [q, k, v], dout, NH, allowed)
    tol = TOL[dtype]
    assert out.dtype == dtype and probs.shape == (B, NH, Tq, Tk)
    assert_close(out, ref, what="out", **tol)
    assert_close(probs, pref, what="probs", **tol)
    assert_close(dq, rq, what="dq", **tol)
    assert_close(dk, rk, what="dk", **tol)
    assert_close(dv, rv, what="dv", **tol)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("B,Tq,Tk,C,NH", ATTN_SHAPES)
def test_attention_matches_torch(isa, rng, B, Tq, Tk, C, NH, kind, dtype):
    if kind == "causal":
        Tk = Tq                      # causal_mask(Tq) is (Tq, Tq)
    if kind in ("causal_cache", "same_length"):
        Tk = max(Tk, Tq)             # (Tq, cache + Tq)
    allowed = make_mask(kind, B, Tq, Tk, rng)
    out = check_attention(rng, B, Tq, Tk, C, NH, allowed, dtype)
    if kind == "padding" and B > 1:     # last batch row sees nothing: outputs zeros
        assert (out[-1] == 0).all()


@pytest.mark.parametrize("M,T,cache", [(2, 3, 0), (2, 5, 4), (1, 1, 1)])
def test_attention_rmt_decoder_mask_matches_torch(isa, rng, M, T, cache):
    allowed = ops.rmt_decoder_mask(M, T, cache)
    Q, K = allowed.shape
    check_attention(rng, 2, Q, K, 12, 3, allowed, np.float32)


def test_attention_backward_finite_differences(rng):
    B, Tq, Tk, C, NH = 2, 3, 5, 6, 2
    q, k, v, up = attention_inputs(rng, B, Tq, Tk, C, np.float64)
    allowed = (rng.random((B, Tq, Tk)) < 0.6).astype(np.uint8)
    allowed[:, :, 0] = 1
    allowed[1, 2] = 0                      # fully masked query
    for mask in (allowed, None, ops.causal_mask(Tq, Tk - Tq)):
        check_grads_fd(lambda q_, k_, v_: ops.attention_forward(q_, k_, v_, NH, mask)[0],
                       lambda d, q_, k_, v_: ops.attention_backward(
                           d, q_, k_, v_, ops.attention_forward(q_, k_, v_, NH, mask)[1], NH),
                       {"q": q, "k": k, "v": v}, up)


# ---------------------------------------------------------------------------------------------
# Relative attention

def rel_inputs(rng, B, Q, K, C, dtype):
    q, k, v, dout = attention_inputs(rng, B, Q, K, C, dtype)
    rk = rng.standard_normal((K, C)).astype(dtype)
    u = rng.standard_normal(C).astype(dtype)
    vb = rng.standard_normal(C).astype(dtype)
    return q, k, v, rk, u, vb, dout


def ours_rel(q, k, v, rk, u, vb, dout, NH, allowed):
    out, probs = ops.rel_attention_forward(q, k, v, rk, u, vb, NH, allowed)
    grads = ops.rel_attention_backward(dout, q, k, v, rk, u, vb, probs, NH)
    return out, probs, grads


REL_NAMES = ["dq", "dk", "dv", "drk", "du", "dv_bias"]


def compare_rel(ours, ref, dtype):
    out, probs, grads = ours
    rout, rprobs, rgrads = ref
    tol = TOL[dtype]
    assert_close(out, rout, what="out", **tol)
    assert_close(probs, rprobs, what="probs", **tol)
    for name, g, r in zip(REL_NAMES, grads, rgrads):
        assert g.dtype == dtype
        assert_close(g, r, what=name, **tol)


REL_SHAPES = [  # (B, Q, K, C, NH)
    (1, 1, 1, 1, 1),
    (1, 1, 6, 4, 2),       # streaming: one query over a cache
    (2, 5, 5, 20, 4),
    (2, 7, 12, 8, 1),
    (3, 17, 40, 24, 3),
    (2, 30, 45, 16, 2),    # two row blocks (24 + 6)
    (2, 60, 75, 16, 2),    # three row blocks of the kernel's 24, each with its own key end
]


# float32 on every shape; float64 (tight tolerances) on the two that exercise most
REL_CASES = [shape + (np.float32,) for shape in REL_SHAPES] + \
    [REL_SHAPES[2] + (np.float64,), REL_SHAPES[4] + (np.float64,)]


@pytest.mark.parametrize("kind", ["causal_cache", "same_length", "padding", "none", "random"])
@pytest.mark.parametrize("B,Q,K,C,NH,dtype", REL_CASES)
def test_rel_attention_matches_torch(isa, rng, B, Q, K, C, NH, kind, dtype):
    q, k, v, rk, u, vb, dout = rel_inputs(rng, B, Q, K, C, dtype)
    allowed = make_mask(kind, B, Q, K, rng)
    ours = ours_rel(q, k, v, rk, u, vb, dout, NH, allowed)
    ref = run_torch(torch_rel_attention_direct, [q, k, v, rk, u, vb], dout, NH, allowed)
    compare_rel(ours, ref, dtype)
    if kind in ("causal_cache", "same_length"):
        # where every key after its query is masked, kimiyoung's pad/reshape rel shift agrees
        kimi = run_torch(torch_rel_attention_kimiyoung, [q, k, v, rk, u, vb], dout, NH, allowed)
        compare_rel(ours, kimi, dtype)


@pytest.mark.parametrize("M,T,cache", [(2, 3, 0), (2, 5, 4), (1, 1, 2), (10, 24, 0), (4, 30, 8)])
def test_rel_attention_rmt_decoder_mask_matches_torch(isa, rng, M, T, cache):
    allowed = ops.rmt_decoder_mask(M, T, cache)
    Q, K = allowed.shape
    q, k, v, rk, u, vb, dout = rel_inputs(rng, 2, Q, K, 12, np.float32)
    ours = ours_rel(q, k, v, rk, u, vb, dout, 3, allowed)
    ref = run_torch(torch_rel_attention_direct, [q, k, v, rk, u, vb], dout, 3, allowed)
    compare_rel(ours, ref, np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rel_attention_row_blocks_at_their_edges(isa, rng, dtype):
    # The kernel works in blocks of 24 query rows, each up to its last allowed key (forward: the
    # mask; backward: the nonzero probabilities). Masks that make those ends uneven:
    B, Q, K, C, NH = 3, 64, 76, 16, 2
    q, k, v, rk, u, vb, dout = rel_inputs(rng, B, Q, K, C, dtype)
    causal = ops.causal_mask(Q, K - Q).astype(np.uint8)
    shared = causal.copy()
    shared[24:48] = 0                     # a whole middle block sees nothing (one shared mask)
    shared[50, 30:40] = 0                 # a hole inside a row's range (a run of its own)
    shared[52:, 70:] = 0                  # the last block ends before its last row's causal end
    per_row = np.stack([ops.padding_mask(Q, K, L) for L in (70, 30, 5)]).astype(np.uint8)
    per_row &= causal                     # ends that fall from one batch row to the next
    for allowed in (shared, per_row):
        ours = ours_rel(q, k, v, rk, u, vb, dout, NH, allowed)
        ref = run_torch(torch_rel_attention_direct, [q, k, v, rk, u, vb], dout, NH, allowed)
        compare_rel(ours, ref, dtype)
        if allowed is shared:
            assert (ours[0][:, 24:48] == 0).all()
    # large scores: allowed keys whose probability underflows to exactly 0, so the backward's
    # ends fall short of the forward's
    big = [x * (6 if dtype == np.float32 else 30) for x in (q, k)]
    ours = ours_rel(big[0], big[1], v, rk, u, vb, dout, NH, causal)
    assert (ours[1][causal[None, None].repeat(B, 0).repeat(NH, 1) == 1] == 0).any()
    ref = run_torch(torch_rel_attention_direct, [big[0], big[1], v, rk, u, vb], dout, NH, causal)
    compare_rel(ours, ref, dtype)


def rel_masks(B, Q, K):
    """The masks of the review cases: none, causal, per-row padding (under causal) and RMT's."""
    causal = ops.causal_mask(Q, K - Q).astype(np.uint8)
    lengths = [max(1, K - b * max(1, K // B)) for b in range(B)]
    per_row = np.stack([ops.padding_mask(Q, K, L) for L in lengths]).astype(np.uint8) & causal
    return {"none": None, "causal": causal, "per_row": per_row,
            "rmt": ops.rmt_decoder_mask(5, Q - 10, K - Q)}


@pytest.mark.parametrize("B,Q,K,C,NH,dtype", [
    (1, 50, 690, 64, 1, np.float32),    # 24 * Kp * hs > 2^20: the score products take the
    (2, 25, 700, 128, 2, np.float64),   # blocked GEMM, in row blocks of 24, 24 and 2
    (2, 49, 49, 16, 2, np.float32),     # Kp - K large: 15 pad columns in float
    (3, 47, 65, 24, 3, np.float64),     # 7 in double
    (2, 73, 81, 32, 2, np.float32),     # four row blocks, the last of one row
])
@pytest.mark.parametrize("kind", ["none", "causal", "per_row", "rmt"])
def test_rel_attention_ragged_keys_and_rows_match_torch(isa, rng, B, Q, K, C, NH, dtype, kind):
    q, k, v, rk, u, vb, dout = rel_inputs(rng, B, Q, K, C, dtype)
    allowed = rel_masks(B, Q, K)[kind]
    ours = ours_rel(q, k, v, rk, u, vb, dout, NH, allowed)
    ref = run_torch(torch_rel_attention_direct, [q, k, v, rk, u, vb], dout, NH, allowed)
    compare_rel(ours, ref, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rel_attention_keys_past_a_rows_end_never_reach_a_result(isa, rng, dtype):
    # Key ends 40 / 20 / 37 are rounded up to whole vectors in the score and dP rows, so those
    # rows hold products with the NaN keys and values in [end, rounded end): none may reach the
    # output, the probabilities or a gradient (0 * NaN would).
    B, Q, K, C, NH = 3, 30, 45, 16, 2
    q, k, v, rk, u, vb, dout = rel_inputs(rng, B, Q, K, C, dtype)
    ends = (40, 20, 37)
    allowed = np.stack([ops.padding_mask(Q, K, L) for L in ends]).astype(np.uint8)
    clean_k, clean_v = k.copy(), v.copy()
    for b, L in enumerate(ends):
        k[b, L:] = v[b, L:] = np.nan
        clean_k[b, L:] = clean_v[b, L:] = 0
    out, probs, grads = ours_rel(q, k, v, rk, u, vb, dout, NH, allowed)
    assert np.isfinite(out).all() and np.isfinite(probs).all()
    dq, dk, dv, drk, du, dv_bias = grads
    for b, L in enumerate(ends):
        assert np.isfinite(dk[b, :L]).all() and (dk[b, L:] == 0).all()
        assert np.isfinite(dv[b, :L]).all() and (dv[b, L:] == 0).all()
    rout, rprobs, rgrads = run_torch(torch_rel_attention_direct,
                                     [q, clean_k, clean_v, rk, u, vb], dout, NH, allowed)
    assert_close(out, rout, what="out", **TOL[dtype])
    assert_close(probs, rprobs, what="probs", **TOL[dtype])
    for name, g, r in zip(REL_NAMES, grads, rgrads):
        if name not in ("dk", "dv"):
            assert_close(g, r, what=name, **TOL[dtype])


def test_rel_attention_kimiyoung_pipeline_with_encoding(rng):
    # The whole positional path as kimiyoung builds it: pos_seq = klen-1 .. 0, R, rk = R W_r^T.
    B, Q, cache, C, NH = 2, 6, 4, 16, 4
    K = Q + cache
    pos_seq = np.arange(K - 1, -1, -1.0)
    inv_freq = 1 / (10000 ** (np.arange(0.0, C, 2.0) / C))
    sinusoid = np.outer(pos_seq, inv_freq)
    R_ref = np.concatenate([np.sin(sinusoid), np.cos(sinusoid)], -1)
    R = ops.rel_position_encoding(K, C, dtype=np.float64)
    assert_close(R, R_ref, rtol=1e-12, atol=1e-12, what="R")
    W_r = rng.standard_normal((C, C)) * 0.3
    rk = R @ W_r.T
    q, k, v, _, u, vb, dout = rel_inputs(rng, B, Q, K, C, np.float64)
    allowed = ops.causal_mask(Q, cache)
    ours = ours_rel(q, k, v, rk, u, vb, dout, NH, allowed)
    kimi = run_torch(torch_rel_attention_kimiyoung, [q, k, v, rk, u, vb], dout, NH, allowed)
    compare_rel(ours, kimi, np.float64)


def test_rel_attention_future_keys_get_no_positional_term(rng):
    # Bidirectional, Q = K, k = u = v = 0: the scores are the positional term alone, which a
    # key after its query (j + Q-1-i >= K) does not get.
    B, Q, C, NH = 1, 4, 3, 1
    q = rng.standard_normal((B, Q, C))
    k = np.zeros((B, Q, C))
    v = rng.standard_normal((B, Q, C))
    rk = 2 * rng.standard_normal((Q, C))
    zeros = np.zeros(C)
    _, probs = ops.rel_attention_forward(q, k, v, rk, zeros, zeros, NH)
    s = np.zeros((Q, Q))
    for i in range(Q):
        for j in range(Q):
            if j + Q - 1 - i < Q:
                s[i, j] = q[0, i] @ rk[j + Q - 1 - i] / math.sqrt(C)
    want = np.exp(s - s.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    assert_close(probs[0, 0], want, rtol=1e-12, atol=1e-12)


def test_rel_attention_backward_finite_differences(rng):
    B, Q, K, C, NH = 2, 3, 5, 4, 2
    q, k, v, rk, u, vb, up = rel_inputs(rng, B, Q, K, C, np.float64)
    allowed = (rng.random((B, Q, K)) < 0.7).astype(np.uint8)   # keys after queries included
    allowed[:, :, 1] = 1
    allowed[0, 1] = 0                                            # fully masked query
    for mask in (allowed, None, ops.causal_mask(Q, K - Q)):
        def fwd(q_, k_, v_, rk_, u_, vb_):
            return ops.rel_attention_forward(q_, k_, v_, rk_, u_, vb_, NH, mask)[0]

        def bwd(d, q_, k_, v_, rk_, u_, vb_):
            probs = ops.rel_attention_forward(q_, k_, v_, rk_, u_, vb_, NH, mask)[1]
            return ops.rel_attention_backward(d, q_, k_, v_, rk_, u_, vb_, probs, NH)

        check_grads_fd(fwd, bwd, {"q": q, "k": k, "v": v, "rk": rk, "u_bias": u, "v_bias": vb}, up)


@pytest.mark.parametrize("B,Q,K,C,NH", [(3, 16, 24, 32, 4),    # (batch, head) pairs split
                                         (1, 40, 48, 64, 1),    # one pair: the GEMMs split
                                         (2, 3, 5, 8, 2)])      # small: one thread
def test_attention_threads_give_identical_results(rng, B, Q, K, C, NH):
    q, k, v, rk, u, vb, dout = rel_inputs(rng, B, Q, K, C, np.float32)
    allowed = ops.causal_mask(Q, K - Q)
    previous = rmt.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            rmt.set_num_threads(n)
            out, probs, grads = ours_rel(q, k, v, rk, u, vb, dout, NH, allowed)
            a_out, a_probs = ops.attention_forward(q, k, v, NH, allowed)
            results.append([out, probs, *grads, a_out, a_probs,
                            *ops.attention_backward(dout, q, k, v, a_probs, NH)])
            # The ops leave the thread count alone (a build without OpenMP always has one).
            assert rmt.get_num_threads() == (n if rmt.has_openmp else 1)
    finally:
        rmt.set_num_threads(previous)
    for x, y in zip(*results):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("B,Q,K,C,NH", [(2, 50, 70, 32, 2), (3, 73, 81, 48, 3), (1, 50, 690, 64, 1)])
@pytest.mark.parametrize("kind", ["causal", "rmt", "per_row"])
def test_rel_attention_row_blocks_give_identical_results_as_threads_change(rng, B, Q, K, C, NH,
                                                                           kind):
    # several row blocks under a mask, with the thread count changed between calls (each thread's
    # score and dP rows are sized per call)
    q, k, v, rk, u, vb, dout = rel_inputs(rng, B, Q, K, C, np.float32)
    allowed = rel_masks(B, Q, K)[kind]
    previous = rmt.get_num_threads()
    try:
        results = []
        for n in (2, 1, 2, 1):
            rmt.set_num_threads(n)
            out, probs = ops.rel_attention_forward(q, k, v, rk, u, vb, NH, allowed)
            grads = ops.rel_attention_backward(dout, q, k, v, rk, u, vb, probs, NH, overwrite=True)
            assert all(np.isfinite(g).all() for g in grads)
            results.append([out, probs, *grads])
    finally:
        rmt.set_num_threads(previous)
    for later in results[1:]:
        for x, y in zip(results[0], later):
            np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------------------------
# Relative position encoding

@pytest.mark.parametrize("K,C,clamp_len", [(1, 2, 0), (5, 8, 0), (7, 20, 3), (9, 6, 20), (4, 4, -1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rel_position_encoding_matches_numpy(K, C, clamp_len, dtype):
    R = ops.rel_position_encoding(K, C, clamp_len=clamp_len, dtype=dtype)
    p = np.arange(K - 1, -1, -1.0)
    if clamp_len > 0:
        p = np.minimum(p, clamp_len)
    f = 1 / 10000 ** (2 * np.arange(C // 2) / C)
    want = np.concatenate([np.sin(np.outer(p, f)), np.cos(np.outer(p, f))], 1)
    assert R.dtype == dtype and R.shape == (K, C)
    assert_close(R, want, rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-7 if dtype == np.float32 else 1e-15)
    if clamp_len > 0 and K - 1 > clamp_len:      # rows at distance >= clamp_len are equal
        np.testing.assert_array_equal(R[0], R[K - 1 - clamp_len])


# ---------------------------------------------------------------------------------------------
# Bad input

def test_attention_ops_reject_bad_input():
    f32 = np.float32
    q = np.zeros((2, 3, 8), f32)
    k = np.zeros((2, 5, 8), f32)
    v = np.zeros((2, 5, 8), f32)
    with pytest.raises(ValueError, match="n_heads"):
        ops.attention_forward(q, k, v, 3)
    with pytest.raises(ValueError, match="n_heads"):
        ops.attention_forward(q, k, v, 0)
    with pytest.raises(ValueError, match="k"):
        ops.attention_forward(q, np.zeros((2, 5, 6), f32), v, 2)
    with pytest.raises(ValueError, match="k"):
        ops.attention_forward(q, np.zeros((1, 5, 8), f32), v, 2)
    with pytest.raises(ValueError, match="v"):
        ops.attention_forward(q, k, np.zeros((2, 4, 8), f32), 2)
    with pytest.raises(TypeError, match="v"):
        ops.attention_forward(q, k, v.astype(np.float64), 2)
    with pytest.raises(TypeError, match="q"):
        ops.attention_forward(q.astype(np.int32), k, v, 2)
    with pytest.raises(ValueError, match="q"):
        ops.attention_forward(np.zeros((3, 8), f32), k, v, 2)
    with pytest.raises(ValueError, match="q.*empty"):
        ops.attention_forward(np.zeros((2, 0, 8), f32), k, v, 2)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.attention_forward(np.zeros((2, 8, 3), f32).transpose(0, 2, 1), k, v, 2)
    with pytest.raises(TypeError, match="allowed"):
        ops.attention_forward(q, k, v, 2, np.ones((3, 5), np.int32))
    with pytest.raises(TypeError, match="allowed"):
        ops.attention_forward(q, k, v, 2, np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match="allowed"):
        ops.attention_forward(q, k, v, 2, np.ones((5, 3), bool))
    with pytest.raises(ValueError, match="allowed"):
        ops.attention_forward(q, k, v, 2, np.ones((3, 3, 5), bool))
    with pytest.raises(ValueError, match="allowed"):
        ops.attention_forward(q, k, v, 2, np.ones((1, 2, 3, 5), bool))
    with pytest.raises(ValueError, match="allowed"):
        ops.attention_forward(q, k, v, 2, np.ones((5, 3), bool).T)
    out, probs = ops.attention_forward(q, k, v, 2)
    with pytest.raises(ValueError, match="probs"):
        ops.attention_backward(out, q, k, v, probs[:, :1].copy(), 2)
    with pytest.raises(ValueError, match="probs"):
        ops.attention_backward(out, q, k, v, probs, 4)
    with pytest.raises(ValueError, match="dout"):
        ops.attention_backward(out[:, :2].copy(), q, k, v, probs, 2)
    with pytest.raises(TypeError, match="dout"):
        ops.attention_backward(out.astype(np.float64), q, k, v, probs, 2)

    rk, u, vb = np.zeros((5, 8), f32), np.zeros(8, f32), np.zeros(8, f32)
    with pytest.raises(ValueError, match="rk"):
        ops.rel_attention_forward(q, k, v, np.zeros((4, 8), f32), u, vb, 2)
    with pytest.raises(ValueError, match="u_bias"):
        ops.rel_attention_forward(q, k, v, rk, np.zeros(4, f32), vb, 2)
    with pytest.raises(ValueError, match="v_bias"):
        ops.rel_attention_forward(q, k, v, rk, u, np.zeros((2, 4), f32), 2)
    with pytest.raises(TypeError, match="v_bias"):
        ops.rel_attention_forward(q, k, v, rk, u, vb.astype(np.float64), 2)
    with pytest.raises(ValueError, match="fewer than"):
        ops.rel_attention_forward(k, q, q, np.zeros((3, 8), f32), u, vb, 2)
    with pytest.raises(ValueError, match="n_heads"):
        ops.rel_attention_forward(q, k, v, rk, u, vb, 5)
    with pytest.raises(ValueError, match="allowed"):
        ops.rel_attention_forward(q, k, v, rk, u, vb, 2, np.ones((3, 4), bool))
    out, probs = ops.rel_attention_forward(q, k, v, rk, u, vb, 2)
    with pytest.raises(ValueError, match="probs"):
        ops.rel_attention_backward(out, q, k, v, rk, u, vb, probs[..., :4].copy(), 2)
    with pytest.raises(ValueError, match="dout"):
        ops.rel_attention_backward(np.zeros((2, 3, 4), f32), q, k, v, rk, u, vb, probs, 2)

    with pytest.raises(ValueError, match="allowed"):
        ops.masked_softmax_forward(np.zeros((6, 4), f32), np.ones((4, 4), bool))   # 4 does not divide 6
    with pytest.raises(ValueError, match="allowed"):
        ops.masked_softmax_forward(np.zeros((6, 4), f32), np.ones((3, 5), bool))
    with pytest.raises(ValueError, match="allowed"):
        ops.masked_softmax_forward(np.zeros((6, 4), f32), np.ones(4, bool))
    with pytest.raises(TypeError, match="scores"):
        ops.masked_softmax_forward(np.zeros((6, 4), np.int64))
    with pytest.raises(ValueError, match="scores.*empty"):
        ops.masked_softmax_forward(np.zeros((6, 0), f32))
    with pytest.raises(ValueError, match="dprobs"):
        ops.masked_softmax_backward(np.zeros((6, 3), f32), np.zeros((6, 4), f32))
    with pytest.raises(TypeError, match="dprobs"):
        ops.masked_softmax_backward(np.zeros((6, 4)), np.zeros((6, 4), f32))

    with pytest.raises(ValueError, match="Tq"):
        ops.causal_mask(0)
    with pytest.raises(ValueError, match="cache"):
        ops.causal_mask(3, -1)
    with pytest.raises(ValueError, match="same_length_window"):
        ops.causal_mask(3, 0, -2)
    with pytest.raises(ValueError, match="T"):
        ops.rmt_decoder_mask(2, 0)
    with pytest.raises(ValueError, match="M"):
        ops.rmt_decoder_mask(-1, 3)
    with pytest.raises(ValueError, match="length"):
        ops.padding_mask(2, 3, -1)
    with pytest.raises(ValueError, match="C must be even"):
        ops.rel_position_encoding(4, 5)
    with pytest.raises(TypeError, match="dtype"):
        ops.rel_position_encoding(4, 6, dtype=np.int32)
    with pytest.raises(ValueError, match="K"):
        ops.rel_position_encoding(0, 6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,Q,K,C,NH,mask", [(1, 3, 3, 4, 1, "causal"), (2, 7, 10, 12, 3, "causal"),
                                             (3, 30, 30, 12, 3, "padding"),
                                             (32, 72, 72, 128, 4, "rmt")])
def test_attention_backward_overwrite_matches_accumulate(isa, rng, B, Q, K, C, NH, mask, dtype):
    # The layers write dq, dk, dv into fresh buffers (overwrite=True), not zero-filled ones: they
    # start as NaN there, so a (batch, head) pair that read its slice, or left part of it
    # unwritten, shows. "padding" gives the last batch row no visible key (every row block of
    # its pairs attends nothing) and the others few; "rmt" is the copy model's RMT mask, large
    # enough for the pairs to run on both threads.
    q, k, v, rk, u, vb, dout = rel_inputs(rng, B, Q, K, C, dtype)
    if mask == "rmt":
        allowed = ops.rmt_decoder_mask(24, 24, K - Q)
    elif mask == "padding":
        allowed = np.stack([ops.padding_mask(Q, K, L) for L in (5, 17, 0)])
    else:
        allowed = ops.causal_mask(Q, K - Q)
    out, probs = ops.rel_attention_forward(q, k, v, rk, u, vb, NH, allowed)
    accumulated = ops.rel_attention_backward(dout, q, k, v, rk, u, vb, probs, NH)
    written = ops.rel_attention_backward(dout, q, k, v, rk, u, vb, probs, NH, overwrite=True)
    for a, w in zip(accumulated, written):
        assert np.isfinite(w).all()
        np.testing.assert_array_equal(a, w)
    out, probs = ops.attention_forward(q, k, v, NH, allowed)
    accumulated = ops.attention_backward(dout, q, k, v, probs, NH)
    written = ops.attention_backward(dout, q, k, v, probs, NH, overwrite=True)
    for a, w in zip(accumulated, written):
        assert np.isfinite(w).all()
        np.testing.assert_array_equal(a, w)
