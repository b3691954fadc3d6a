"""One RMT training step of our engine against lucidrains' `recurrent-memory-transformer-pytorch`
(PyPI) on the closest configuration it supports, same thread count, measured in one run with
alternating rounds (the performance issue's second baseline).

    pip install --no-deps recurrent-memory-transformer-pytorch==0.7.0 einops hyper-connections
    PYTHONPATH=python python benchmarks/lucidrains.py --model copy --model lm --threads 1,2

The package is not a dependency of rmt (nor of its tests); install it as above (--no-deps keeps
pip from replacing the CPU build of torch). It is not the same architecture, so the two sides do
not compute the same function; the closest configuration is:

- the same width, depth, heads and head size, memory tokens, segment length, segments and batch
  as our model (`train_step.MODELS`), read and write memory, full BPTT over the unroll
  (`truncate_at_step=None`), no Transformer-XL cache (`use_xl_memories=False`), one residual
  stream (`num_residual_streams=1`, i.e. no hyper-connections), dropout 0;
- its feed-forward is GEGLU with inner width F (`ff_mult = F / C`): its first projection is
  C -> 2F, so its feed-forward does 1.5x the multiply-adds of ours;
- its positions are learned absolute embeddings, ours Transformer-XL's relative attention, whose
  extra position term gives us 3 attention products per head in the forward where it has 2;
- its norm is RMSNorm, ours LayerNorm; its step is `torch.optim.AdamW` with `clip_grad_norm_`,
  ours `rmt.Trainer` with AdamW and clipping.

Both sides see random tokens; the figure is tokens per second of a whole step (the two
parameter counts are printed beside it), not a FLOP rate.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

from train_step import MODELS, measure, our_side, torch_step


def their_model(spec):
    from recurrent_memory_transformer_pytorch import (RecurrentMemoryTransformer,
                                                      RecurrentMemoryTransformerWrapper)

    cfg = spec["cfg"]
    d_ff = cfg.get("d_ff", 4 * cfg["d_model"])
    model = RecurrentMemoryTransformer(
        num_tokens=cfg["vocab_size"], dim=cfg["d_model"], depth=cfg["n_layers"],
        heads=cfg["n_heads"], dim_head=cfg.get("d_head", cfg["d_model"] // cfg["n_heads"]),
        ff_mult=d_ff / cfg["d_model"], num_memory_tokens=cfg["num_mem_tokens"],
        seq_len=cfg["segment_len"], causal=True, use_xl_memories=False, num_residual_streams=1,
        attn_dropout=0.0, ff_dropout=0.0)
    return RecurrentMemoryTransformerWrapper(model, truncate_at_step=None)


def bench(name, threads, rounds, min_time):
    import torch

    spec = MODELS[name]
    cfg, model, trainer = our_side(dict(spec, bptt_depth=None), threads)   # theirs: full BPTT
    B, S, T = spec["batch"], spec["segments"], cfg["segment_len"]
    g = np.random.default_rng(0)
    tokens = g.integers(0, cfg["vocab_size"], (B, S * T + 1))
    batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:]}

    theirs_model = their_model(spec)
    opt = torch.optim.AdamW(theirs_model.parameters(), lr=1e-4, weight_decay=0.01)
    x = torch.tensor(tokens)   # the wrapper shifts inputs and labels itself

    def ours():
        trainer.step(batch)

    theirs = torch_step(opt, list(theirs_model.parameters()),
                        lambda: theirs_model(x, return_loss=True)[0])
    t_ours, t_theirs, (med, lo, hi) = measure(ours, theirs, rounds, min_time)
    tokens_per_step = B * S * T
    n_theirs = sum(p.numel() for p in theirs_model.parameters())
    print(f"{name:6s} thr {threads}  ours {statistics.median(t_ours) * 1e3:8.1f} ms/step "
          f"({tokens_per_step / statistics.median(t_ours):8.0f} tok/s, {model.num_parameters} "
          f"params)   lucidrains {statistics.median(t_theirs) * 1e3:8.1f} ms/step "
          f"({tokens_per_step / statistics.median(t_theirs):8.0f} tok/s, {n_theirs} params)"
          f"   ours/lucidrains speed {med:.2f} ({lo:.2f}-{hi:.2f})")
    return med


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), action="append")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per timed sample")
    args = p.parse_args(argv)
    try:
        import recurrent_memory_transformer_pytorch as lucid
    except ImportError:
        sys.exit("recurrent-memory-transformer-pytorch is not installed; see the docstring: "
                 "pip install --no-deps recurrent-memory-transformer-pytorch==0.7.0 einops "
                 "hyper-connections")
    import torch

    import rmt

    version = getattr(lucid, "__version__", None)
    if version is None:
        from importlib.metadata import version as pkg_version
        version = pkg_version("recurrent-memory-transformer-pytorch")
    print(f"rmt {rmt.__version__} ({rmt.get_isa()}), recurrent-memory-transformer-pytorch "
          f"{version}, torch {torch.__version__}; float32; median of {args.rounds} alternating "
          f"rounds after a warm-up; speed ratio = their time / ours")
    for name in args.model or ["copy"]:
        for threads in (int(t) for t in args.threads.split(",")):
            bench(name, threads, args.rounds, args.min_time)


if __name__ == "__main__":
    main()
