"""Streaming inference of the RMT encoder (P2, kind rmt_encoder): our engine against the same
model in PyTorch eager (batched, same weights, same threads, and like ours computing the last
layer on the rows read after it: CLS and memory), measured in one run with alternating rounds,
and against the machine's FMA peak: for the model's FLOPs (rmt.p2.encoder_flops: projections,
attention products, feed-forward, every row of every layer), which is what tokens/s allow, and
for the FLOPs done (executed_flops: the last layer's skipped rows left out).

    PYTHONPATH=python python benchmarks/encoder_inference.py               # the P2 model, 1 and 2 threads
    PYTHONPATH=python python benchmarks/encoder_inference.py --d-model 256 --n-layers 4 --d-ff 1024

Each sample is a batch of --batch sequences streamed through --segments segments (memory carried,
no gradient). Before timing, the two engines' logits are compared (they must agree to 1e-3).
"""
from __future__ import annotations

import argparse
import math
import statistics

import numpy as np

from alternating import alternate, median_ratio


def torch_stream(cfg, params, segments):
    """The same encoder in PyTorch, batched: [CLS][mem][SEP] x [SEP] per segment, post-norm
    layers, exact GELU, keys of pad tokens masked; returns the last segment's logits."""
    import torch
    import torch.nn.functional as F

    C, NH, M = cfg["d_model"], cfg["n_heads"], cfg["num_mem_tokens"]
    hs = cfg["d_head"] or C // NH
    D, eps = NH * hs, cfg["layer_norm_eps"]
    p = params
    E = p["word_emb.weight"]
    B = segments[0].shape[0]
    memory = p["mem_tokens"].expand(B, M, C)
    logits = None
    with torch.inference_mode():
        for x in segments:
            T = x.shape[1]
            cls = E[cfg["cls_id"]].expand(B, 1, C)
            sep = E[cfg["sep_id"]].expand(B, 1, C)
            h = torch.cat([cls, memory, sep, E[x], sep], dim=1)
            h = F.layer_norm(h + p["pos_emb.weight"], (C,), p["emb_norm.weight"],
                             p["emb_norm.bias"], eps)
            Q = h.shape[1]
            key_ok = torch.cat([torch.ones(B, M + 2, dtype=torch.bool), x != cfg["pad_id"],
                                torch.ones(B, 1, dtype=torch.bool)], dim=1)
            bias = torch.zeros(B, 1, 1, Q).masked_fill(~key_ok.view(B, 1, 1, Q), float("-inf"))
            for layer in range(cfg["n_layers"]):
                pre = f"layers.{layer}."
                # The last layer's queries: only the CLS and memory rows, the ones read after
                # it (the head and the next segment), as our engine does; keys are all rows.
                rows = M + 1 if layer == cfg["n_layers"] - 1 else Q
                W = p[pre + "attn.qkv.weight"]
                q = (h[:, :rows] @ W[:D].T).view(B, rows, NH, hs).transpose(1, 2)
                k, v = ((h @ w.T).view(B, Q, NH, hs).transpose(1, 2) for w in W[D:].split(D))
                att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hs) + bias, dim=-1) @ v
                att = att.transpose(1, 2).reshape(B, rows, D)
                h = F.layer_norm(h[:, :rows] + att @ p[pre + "attn.o.weight"].T, (C,),
                                 p[pre + "attn.norm.weight"], p[pre + "attn.norm.bias"], eps)
                ff = F.gelu(h @ p[pre + "ff.fc1.weight"].T + p[pre + "ff.fc1.bias"])
                ff = ff @ p[pre + "ff.fc2.weight"].T + p[pre + "ff.fc2.bias"]
                h = F.layer_norm(h + ff, (C,), p[pre + "ff.norm.weight"], p[pre + "ff.norm.bias"],
                                 eps)
            memory = h[:, 1:M + 1]
            pooled = torch.tanh(h[:, 0] @ p["pooler.weight"].T + p["pooler.bias"])
            logits = pooled @ p["cls_head.weight"].T + p["cls_head.bias"]
    return logits


def bench(cfg_dict, batch, num_segments, threads, rounds, min_time):
    import torch

    import rmt
    from rmt import p2

    rmt.set_num_threads(threads)
    torch.set_num_threads(threads)
    model = rmt.RMTEncoder(rmt.ModelConfig(**cfg_dict), seed=0)
    model.eval()
    cfg = model.config.to_dict()
    params = {k: torch.tensor(v.copy()) for k, v in model.parameters().items()}
    g = np.random.default_rng(0)
    segs = [g.integers(4, cfg["vocab_size"], (batch, cfg["segment_len"]))
            for _ in range(num_segments)]
    tsegs = [torch.tensor(s) for s in segs]

    def ours():
        out = None
        for out in model.stream(iter(segs)):
            pass
        return out

    def theirs():
        return torch_stream(cfg, params, tsegs)

    diff = float(np.abs(ours() - theirs().numpy()).max())
    if not diff < 1e-3:
        raise SystemExit(f"the engines disagree: max |logits difference| = {diff:g}")

    t_ours, t_torch = alternate(ours, theirs, rounds, min_time)
    tokens = batch * num_segments * cfg["segment_len"]
    model_flops = batch * p2.encoder_flops(cfg, num_segments)
    done_flops = batch * executed_flops(cfg, num_segments)
    peak = rmt.fma_peak_gflops(threads=threads, seconds=0.5)
    to, tt = statistics.median(t_ours), statistics.median(t_torch)
    med, lo, hi = median_ratio(t_ours, t_torch)
    print(f"thr {threads}  ours {tokens / to:9.0f} tok/s: model FLOPs at "
          f"{100 * model_flops / to / 1e9 / peak:4.1f}% of the {peak:.0f} GFLOP/s FMA peak, "
          f"FLOPs done {done_flops / to / 1e9:6.1f} GFLOP/s = "
          f"{100 * done_flops / to / 1e9 / peak:4.1f}%   torch {tokens / tt:9.0f} tok/s   "
          f"ours/torch {med:.2f} ({lo:.2f}-{hi:.2f})   max |logit diff| {diff:.1e}")


def executed_flops(cfg, num_segments):
    """The FLOPs both engines do (p2.encoder_flops counts every row of every layer): the last
    layer's queries, attention rows, output projection and feed-forward run on the CLS and memory
    rows only (m = M + 1 of n), its keys and values on all n."""
    C, F, L, M = cfg["d_model"], cfg["d_ff"], cfg["n_layers"], cfg["num_mem_tokens"]
    D = cfg["n_heads"] * (cfg.get("d_head") or C // cfg["n_heads"])
    n, m = cfg["segment_len"] + M + 3, M + 1
    full = 4 * n * C * D + 2 * n * n * D + 2 * n * C * F
    last = 2 * n * C * D + 2 * m * C * D + 2 * m * n * D + 2 * m * C * F
    return 2.0 * num_segments * ((L - 1) * full + last)


# The P2 model (SPEC section 4's encoder at this machine's scale) and the streamed input.
DEFAULTS = dict(d_model=64, n_layers=2, n_heads=4, d_ff=128, segment_len=64, memory=10,
                vocab=2000, batch=10, segments=32)


def encoder_config(d_model, n_layers, n_heads, d_ff, segment_len, memory, vocab, **_):
    """The ModelConfig fields of the benchmarked encoder (the input's batch and segments aside)."""
    return dict(kind="rmt_encoder", vocab_size=vocab, d_model=d_model, n_layers=n_layers,
                n_heads=n_heads, d_ff=d_ff, segment_len=segment_len, num_mem_tokens=memory,
                num_classes=6, dropout=0.0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in DEFAULTS.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, default=value)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per timed sample")
    a = p.parse_args(argv)
    cfg = encoder_config(**{name: getattr(a, name) for name in DEFAULTS})
    print(f"RMT encoder {cfg}, batch {a.batch}, {a.segments} segments per sample")
    for threads in [int(t) for t in a.threads.split(",")]:
        bench(cfg, a.batch, a.segments, threads, a.rounds, a.min_time)


if __name__ == "__main__":
    main()
