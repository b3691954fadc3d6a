"""A PyTorch reference of the decoder model kinds, written from docs/MODELS.md and the papers'
equations (Transformer-XL: Dai et al. 2019, section 3.3; RMT: Bulatov et al. 2022, section 3).

It is deliberately plain: autograd does every backward, BPTT truncation is an explicit `detach`,
and the relative shift is the kimiyoung pad-and-reshape trick. The engine is tested against it
on the same weights (tests/test_models.py).

A config is a dict with the fields of rmt.ModelConfig (docs/MODELS.md gives the defaults).
"""
from collections import OrderedDict
import math

import torch
import torch.nn.functional as F

DEFAULTS = dict(d_head=None, num_mem_tokens=0, mem_len=0, clamp_len=-1, same_length=False,
                untie_rel_bias=False, dropout=0.0, dropatt=0.0, layer_norm_eps=1e-5,
                num_classes=0, cls_id=1, sep_id=2, pad_id=0)


def full_config(cfg):
    out = dict(DEFAULTS)
    out.update(cfg)
    if not out["d_head"]:
        out["d_head"] = out["d_model"] // out["n_heads"]
    return out


def param_shapes(cfg):
    """Names and shapes of the parameters, in the order of the engine's flat buffer."""
    c = full_config(cfg)
    V, C, F_, NH, hs, M = (c["vocab_size"], c["d_model"], c["d_ff"], c["n_heads"], c["d_head"],
                           c["num_mem_tokens"])
    D = NH * hs
    if c["kind"] == "rmt_encoder":
        return encoder_param_shapes(c)
    shapes = OrderedDict()
    shapes["word_emb.weight"] = (V, C)
    if M > 0:
        shapes["mem_tokens"] = (M, C)
    if not c["untie_rel_bias"]:
        shapes["r_w_bias"] = (NH, hs)
        shapes["r_r_bias"] = (NH, hs)
    for layer in range(c["n_layers"]):
        p = f"layers.{layer}."
        shapes[p + "attn.qkv.weight"] = (3 * D, C)
        shapes[p + "attn.r.weight"] = (D, C)
        shapes[p + "attn.o.weight"] = (C, D)
        if c["untie_rel_bias"]:
            shapes[p + "attn.r_w_bias"] = (NH, hs)
            shapes[p + "attn.r_r_bias"] = (NH, hs)
        shapes[p + "attn.norm.weight"] = (C,)
        shapes[p + "attn.norm.bias"] = (C,)
        shapes[p + "ff.fc1.weight"] = (F_, C)
        shapes[p + "ff.fc1.bias"] = (F_,)
        shapes[p + "ff.fc2.weight"] = (C, F_)
        shapes[p + "ff.fc2.bias"] = (C,)
        shapes[p + "ff.norm.weight"] = (C,)
        shapes[p + "ff.norm.bias"] = (C,)
    shapes["out_bias"] = (V,)
    return shapes


def random_params(cfg, seed=0, scale=0.3, dtype=torch.float64):
    """Random weights large enough that every path matters (biases and LN gains included)."""
    gen = torch.Generator().manual_seed(seed)
    params = OrderedDict()
    for name, shape in param_shapes(cfg).items():
        t = torch.randn(shape, generator=gen, dtype=dtype) * scale
        if name.endswith("norm.weight"):
            t = t + 1.0
        params[name] = t.requires_grad_(True)
    return params


def position_encoding(K, C, clamp_len, dtype):
    """R (K, C): row r encodes distance K-1-r as [sin | cos] (Transformer-XL's PositionalEmbedding)."""
    pos = torch.arange(K - 1, -1, -1, dtype=dtype)
    if clamp_len > 0:
        pos = pos.clamp(max=clamp_len)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, C, 2, dtype=dtype) / C))
    angles = pos[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def rel_shift(x):
    """kimiyoung's _rel_shift on (Q, K, ...) scores: out[i, j] = x[i, j + Q-1-i] where that index
    is < K. Entries with j + Q-1-i >= K are zeroed (our contract: no positional term there)."""
    Q, K = x.shape[0], x.shape[1]
    zero_pad = torch.zeros((Q, 1) + x.shape[2:], dtype=x.dtype)
    padded = torch.cat([zero_pad, x], dim=1).view((K + 1, Q) + x.shape[2:])
    shifted = padded[1:].view_as(x)
    i = torch.arange(Q)[:, None]
    j = torch.arange(K)[None, :]
    valid = (j + Q - 1 - i) < K
    valid = valid.view((Q, K) + (1,) * (x.dim() - 2))
    return shifted * valid


# When a list, layer_forward appends each layer's attention probabilities (B, NH, Q, K) to it.
PROBS_RECORDER = None


def layer_forward(c, p, layer, h, cache, allowed, R):
    """One post-norm Transformer-XL layer. h (B, Q, C); cache (B, P, C) or None; allowed (Q, K)."""
    pre = f"layers.{layer}."
    B, Q, C = h.shape
    NH, hs = c["n_heads"], c["d_head"]
    D = NH * hs
    k_in = h if cache is None else torch.cat([cache, h], dim=1)
    K = k_in.shape[1]
    w_qkv = p[pre + "attn.qkv.weight"]
    q = (h @ w_qkv[:D].T).view(B, Q, NH, hs)
    k = (k_in @ w_qkv[D:2 * D].T).view(B, K, NH, hs)
    v = (k_in @ w_qkv[2 * D:].T).view(B, K, NH, hs)
    rk = (R @ p[pre + "attn.r.weight"].T).view(K, NH, hs)
    if c["untie_rel_bias"]:
        u, vb = p[pre + "attn.r_w_bias"], p[pre + "attn.r_r_bias"]
    else:
        u, vb = p["r_w_bias"], p["r_r_bias"]
    # Scores laid out (Q, K, B, NH) as in kimiyoung's code, so rel_shift acts on the first two dims.
    ac = torch.einsum("ibnd,jbnd->ijbn", (q + u).transpose(0, 1), k.transpose(0, 1))
    bd = torch.einsum("ibnd,jnd->ijbn", (q + vb).transpose(0, 1), rk)
    scores = (ac + rel_shift(bd)) / math.sqrt(hs)
    mask = allowed.view(Q, K, 1, 1)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=1)
    probs = torch.nan_to_num(probs, nan=0.0)   # a row with nothing allowed attends to nothing
    if PROBS_RECORDER is not None:
        PROBS_RECORDER.append(probs.permute(2, 3, 0, 1).detach().clone())
    attn = torch.einsum("ijbn,jbnd->ibnd", probs, v.transpose(0, 1)).transpose(0, 1)
    attn = attn.reshape(B, Q, D)
    eps = c["layer_norm_eps"]
    o = F.layer_norm(h + attn @ p[pre + "attn.o.weight"].T, (C,), p[pre + "attn.norm.weight"],
                     p[pre + "attn.norm.bias"], eps)
    ff = F.relu(o @ p[pre + "ff.fc1.weight"].T + p[pre + "ff.fc1.bias"])
    ff = ff @ p[pre + "ff.fc2.weight"].T + p[pre + "ff.fc2.bias"]
    return F.layer_norm(o + ff, (C,), p[pre + "ff.norm.weight"], p[pre + "ff.norm.bias"], eps)


def segment_mask(c, P, training):
    """The (Q, K) boolean mask of one segment's layer input after P cached rows."""
    kind, M, T = c["kind"], c["num_mem_tokens"], c["segment_len"]
    if kind == "rmt":
        Q = 2 * M + T
        K = P + Q
        allowed = torch.zeros(Q, K, dtype=torch.bool)
        allowed[:, :P] = True                    # the Tr-XL cache: every row sees it
        allowed[:, P:P + M] = True               # the read block: every row sees it
        for i in range(T):                       # token rows: causal past of the segment
            allowed[M + i, P + M:P + M + i + 1] = True
        allowed[M + T:, :] = True                # write rows: everything
        return allowed
    if kind == "memtr":
        Q = M + T
        allowed = torch.zeros(Q, Q, dtype=torch.bool)
        allowed[:, :M] = True
        for i in range(T):
            allowed[M + i, M:M + i + 1] = True
        return allowed
    Q = T
    K = P + Q
    i = torch.arange(Q)[:, None]
    j = torch.arange(K)[None, :]
    allowed = j <= P + i
    if c["same_length"] and not training and P + Q > c["mem_len"]:
        allowed &= j > P + i - c["mem_len"]
    return allowed


def segment_forward(c, p, tokens, memory, caches, training=False):
    """One segment. tokens (B, T); memory (B, M, C) for rmt. Returns (logits (B, T, V), the
    layer inputs (for the cache), the new memory (rmt) or None)."""
    kind, M, T, C = c["kind"], c["num_mem_tokens"], c["segment_len"], c["d_model"]
    emb = p["word_emb.weight"]
    e = emb[tokens] * math.sqrt(C)
    B = tokens.shape[0]
    if kind == "rmt":
        h = torch.cat([memory, e, memory], dim=1)
    elif kind == "memtr":
        h = torch.cat([p["mem_tokens"].expand(B, M, C), e], dim=1)
    else:
        h = e
    off = M if kind in ("rmt", "memtr") else 0
    P = 0 if caches is None or caches[0] is None else caches[0].shape[1]
    allowed = segment_mask(c, P, training)
    R = position_encoding(P + h.shape[1], C, c["clamp_len"], h.dtype)
    inputs = []
    for layer in range(c["n_layers"]):
        inputs.append(h)
        cache = None if P == 0 else caches[layer]
        h = layer_forward(c, p, layer, h, cache, allowed, R)
    token_out = h[:, off:off + T]
    logits = token_out @ emb.T + p["out_bias"]
    new_memory = h[:, M + T:] if kind == "rmt" else None
    return logits, inputs, new_memory


def next_caches(c, caches, inputs, detach=True):
    """Per layer: the last mem_len rows of [cache; token rows of the layer input], detached
    (detach=False exists only so a test can show the detach matters)."""
    M, T = c["num_mem_tokens"], c["segment_len"]
    off = M if c["kind"] == "rmt" else 0
    out = []
    for layer, h in enumerate(inputs):
        rows = h[:, off:off + T]
        rows = rows.detach() if detach else rows
        if caches is not None and caches[layer] is not None:
            rows = torch.cat([caches[layer], rows], dim=1)
        out.append(rows[:, -c["mem_len"]:])
    return out


def forward_loss(cfg, params, tokens, targets, loss_mask=None, bptt_depth=None, init_memory=None,
                 training=False, detach_cache=True):
    """The loss of docs/MODELS.md over a whole unroll, with BPTT truncated by explicit detach.

    tokens, targets (B, S*T) int64 tensors; loss_mask (B, S*T) or None. init_memory (B, M, C) a
    tensor (it may require grad) or None for mem_tokens. Returns (loss, logits (B, S*T, V))."""
    c = full_config(cfg)
    T, kind = c["segment_len"], c["kind"]
    B, L = tokens.shape
    S = L // T
    selected = targets != -100
    weights = torch.ones(B, L, dtype=params["word_emb.weight"].dtype)
    if loss_mask is not None:
        weights = loss_mask.to(weights.dtype)
        selected = selected & (loss_mask != 0)
    n_selected = int(selected.sum())
    safe_targets = targets.clamp(min=0)
    has_cache = c["mem_len"] > 0 and kind in ("txl", "rmt")

    def token_losses(logits, s):
        sl = slice(s * T, (s + 1) * T)
        lp = torch.log_softmax(logits, dim=-1)
        nll = -lp.gather(-1, safe_targets[:, sl, None])[..., 0]
        return (nll * weights[:, sl] * selected[:, sl]).sum()

    if kind == "rmt":
        first_memory = init_memory if init_memory is not None else \
            params["mem_tokens"].expand(B, *params["mem_tokens"].shape)
    else:
        first_memory = None

    # A first pass gives every segment's logits, entering memory and cache (values only matter
    # for the truncated passes below, which restart from detached copies).
    memories, caches_in, all_logits = [first_memory], [None], []
    memory, caches = first_memory, None
    total = 0.0
    for s in range(S):
        logits, inputs, memory = segment_forward(c, params, tokens[:, s * T:(s + 1) * T], memory,
                                                 caches, training)
        all_logits.append(logits)
        memories.append(memory)
        if has_cache:
            caches = next_caches(c, caches, inputs, detach_cache)
        caches_in.append(caches)
        if kind != "rmt" or bptt_depth is None or bptt_depth >= S:
            total = total + token_losses(logits, s)

    if kind == "rmt" and bptt_depth is not None and bptt_depth < S:
        # The loss of segment t flows back through segments t-k .. t only: restart at t-k from
        # the memory that entered it, detached (the initial memory stays live when t-k < 0).
        for t in range(S):
            start = max(0, t - bptt_depth)
            memory = memories[start]
            if t - bptt_depth >= 0:
                memory = memory.detach()
            for s in range(start, t + 1):
                logits, _, memory = segment_forward(c, params, tokens[:, s * T:(s + 1) * T],
                                                    memory, caches_in[s], training)
            total = total + token_losses(logits, t)
    loss = total / max(n_selected, 1)
    return loss, torch.cat(all_logits, dim=1)


# ---- rmt_encoder (P2): [CLS][mem][SEP] x [SEP], bidirectional, absolute positions ----

def encoder_param_shapes(c):
    V, C, F_, NH, hs, M = (c["vocab_size"], c["d_model"], c["d_ff"], c["n_heads"], c["d_head"],
                           c["num_mem_tokens"])
    D = NH * hs
    Q = c["segment_len"] + M + 3
    shapes = OrderedDict()
    shapes["word_emb.weight"] = (V, C)
    shapes["mem_tokens"] = (M, C)
    shapes["pos_emb.weight"] = (Q, C)
    shapes["emb_norm.weight"] = (C,)
    shapes["emb_norm.bias"] = (C,)
    for layer in range(c["n_layers"]):
        p = f"layers.{layer}."
        shapes[p + "attn.qkv.weight"] = (3 * D, C)
        shapes[p + "attn.o.weight"] = (C, D)
        shapes[p + "attn.norm.weight"] = (C,)
        shapes[p + "attn.norm.bias"] = (C,)
        shapes[p + "ff.fc1.weight"] = (F_, C)
        shapes[p + "ff.fc1.bias"] = (F_,)
        shapes[p + "ff.fc2.weight"] = (C, F_)
        shapes[p + "ff.fc2.bias"] = (C,)
        shapes[p + "ff.norm.weight"] = (C,)
        shapes[p + "ff.norm.bias"] = (C,)
    shapes["pooler.weight"] = (C, C)
    shapes["pooler.bias"] = (C,)
    shapes["cls_head.weight"] = (c["num_classes"], C)
    shapes["cls_head.bias"] = (c["num_classes"],)
    return shapes


def encoder_layer_forward(c, p, layer, h, key_ok):
    """One post-norm BERT layer: plain softmax(q k^T / sqrt(hs)) attention over every key that is
    not padding (key_ok (Q,) bool), exact-erf GELU. h (Q, C) of ONE sample."""
    pre = f"layers.{layer}."
    Q, C = h.shape
    NH, hs = c["n_heads"], c["d_head"]
    D = NH * hs
    w = p[pre + "attn.qkv.weight"]
    q = (h @ w[:D].T).view(Q, NH, hs).transpose(0, 1)        # (NH, Q, hs)
    k = (h @ w[D:2 * D].T).view(Q, NH, hs).transpose(0, 1)
    v = (h @ w[2 * D:].T).view(Q, NH, hs).transpose(0, 1)
    scores = q @ k.transpose(1, 2) / math.sqrt(hs)           # (NH, Q, Q)
    scores = scores.masked_fill(~key_ok.view(1, 1, Q), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if PROBS_RECORDER is not None:   # (NH, Q, Q) of this sample
        PROBS_RECORDER.append(probs.detach().clone())
    attn = (probs @ v).transpose(0, 1).reshape(Q, D)
    eps = c["layer_norm_eps"]
    o = F.layer_norm(h + attn @ p[pre + "attn.o.weight"].T, (C,), p[pre + "attn.norm.weight"],
                     p[pre + "attn.norm.bias"], eps)
    ff = F.gelu(o @ p[pre + "ff.fc1.weight"].T + p[pre + "ff.fc1.bias"])
    ff = ff @ p[pre + "ff.fc2.weight"].T + p[pre + "ff.fc2.bias"]
    return F.layer_norm(o + ff, (C,), p[pre + "ff.norm.weight"], p[pre + "ff.norm.bias"], eps)


def encoder_segment(c, p, x, memory):
    """One segment of ONE sample: x (T,) content ids, memory (M, C). Returns (logits
    (num_classes,), next memory (M, C))."""
    M, C = c["num_mem_tokens"], c["d_model"]
    E = p["word_emb.weight"]
    cls = torch.tensor([c["cls_id"]])
    sep = torch.tensor([c["sep_id"]])
    rows = torch.cat([E[cls], memory, E[sep], E[x], E[sep]], dim=0)         # (Q, C)
    h = F.layer_norm(rows + p["pos_emb.weight"], (C,), p["emb_norm.weight"], p["emb_norm.bias"],
                     c["layer_norm_eps"])
    key_ok = torch.cat([torch.ones(M + 2, dtype=torch.bool), x != c["pad_id"],
                        torch.ones(1, dtype=torch.bool)])
    for layer in range(c["n_layers"]):
        h = encoder_layer_forward(c, p, layer, h, key_ok)
    pooled = torch.tanh(h[0] @ p["pooler.weight"].T + p["pooler.bias"])
    logits = pooled @ p["cls_head.weight"].T + p["cls_head.bias"]
    return logits, h[1:M + 1]


def encoder_forward_loss(cfg, params, tokens, labels=None, bptt_depth=None):
    """The rmt_encoder loss: each sample on its own, over its non-empty segments only (a segment
    of pad_id only is skipped), the memory carried with gradient except that with bptt_depth = k
    the memory entering the sample's segment t-k (t = its last, counting its non-empty segments
    only) is detached. Loss = mean over the
    batch of the cross-entropy of the last segment's CLS logits. tokens (B, S*T) int64.
    Returns (loss or None, logits (B, num_classes))."""
    c = full_config(cfg)
    T = c["segment_len"]
    B, L = tokens.shape
    all_logits = []
    for b in range(B):
        segs = [tokens[b, s * T:(s + 1) * T] for s in range(L // T)]
        segs = [x for x in segs if bool((x != c["pad_id"]).any())]
        t = len(segs) - 1
        start = 0 if bptt_depth is None else max(0, t - bptt_depth)
        memory = params["mem_tokens"]
        with torch.no_grad():                       # the constant part of the unroll
            for x in segs[:start]:
                _, memory = encoder_segment(c, params, x, memory)
        if bptt_depth is not None and t - bptt_depth >= 0:
            memory = memory.detach()     # the memory entering segment t-k is a constant
        # (for t - k < 0 the initial memory stays live, as for the rmt decoder)
        for x in segs[start:]:
            logits, memory = encoder_segment(c, params, x, memory)
        all_logits.append(logits)
    logits = torch.stack(all_logits)
    loss = None if labels is None else F.cross_entropy(logits, labels)
    return loss, logits
