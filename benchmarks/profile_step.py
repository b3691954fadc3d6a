"""Where a training step spends its time: N steps of rmt.Trainer (AdamW, clip_norm 0.25) under
the per-op profiler (rmt.profile), one table per model and thread count.

    PYTHONPATH=python python benchmarks/profile_step.py                      # copy and lm, 1 thread
    PYTHONPATH=python python benchmarks/profile_step.py --model lm --threads 1,2 --steps 5

Each table: the op scopes sorted by time (ms per step, % of the profiled time, calls, ms per
call, GFLOP/s for the linears and as % of the machine's measured FMA peak), then the wall time per
step and the fraction of it the scopes cover (the rest: Python, data handling, freeing the
activations). The models are those of benchmarks/train_step.py.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import MODELS  # noqa: E402  (copy: SPEC section 4; lm: issue 7's small LM)


def profile_model(name, threads, steps, peak):
    import rmt

    spec = MODELS[name]
    cfg = dict(spec["cfg"], dropout=0.0)
    B, S, T = spec["batch"], spec["segments"], cfg["segment_len"]
    rmt.set_num_threads(threads)
    model = rmt.from_config(rmt.ModelConfig(**cfg))
    trainer = rmt.Trainer(model, rmt.AdamW(lr=1e-4, weight_decay=0.01), clip_norm=0.25,
                          bptt_depth=spec["bptt_depth"])
    g = np.random.default_rng(0)
    batch = {"tokens": g.integers(0, cfg["vocab_size"], (B, S * T)),
             "targets": g.integers(0, cfg["vocab_size"], (B, S * T))}
    trainer.step(batch)   # warm-up: first-touch allocations, counter registration
    start = time.perf_counter()
    with rmt.profile() as prof:
        for _ in range(steps):
            trainer.step(batch)
    wall = (time.perf_counter() - start) / steps

    print(f"\n== {name}: {cfg['n_layers']} layers, C {cfg['d_model']}, F {cfg['d_ff']}, segment "
          f"{T}, memory {cfg['num_mem_tokens']}, {S} segments, batch {B}; {threads} thread(s), "
          f"{steps} steps ==")
    table = prof.table(per=steps).splitlines()
    print(table[0] + "  % peak")
    for line, rec in zip(table[1:], prof.records):
        share = ""
        if rec["flops"] and rec["seconds"] and peak:
            share = f"  {100 * rec['flops'] / rec['seconds'] * 1e-9 / (peak * threads):5.1f}"
        print(line + share)
    print(table[-1])
    groups = ", ".join(f"{k} {v * 1e3 / steps:.1f} ms ({100 * v / prof.total:.0f}%)"
                       for k, v in prof.by_group().items())
    flops = sum(r["flops"] for r in prof.records) / steps
    print(f"by group: {groups}")
    print(f"wall {wall * 1e3:.1f} ms/step ({B * S * T / wall:.0f} tok/s); scopes cover "
          f"{prof.coverage:.1%} of it; linear FLOPs {flops * 1e-9:.2f} GFLOP/step = "
          f"{flops / wall * 1e-9:.1f} GFLOP/s over the whole step")
    return prof


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), action="append")
    p.add_argument("--threads", default="1", help="comma-separated thread counts")
    p.add_argument("--steps", type=int, default=3, help="profiled steps per table")
    args = p.parse_args(argv)
    import rmt

    per_core = rmt.fma_peak_gflops(1, 0.1)
    print(f"rmt {rmt.__version__} ({rmt.get_isa()}); float32; measured FMA peak "
          f"{per_core:.0f} GFLOP/s per core (the % peak column is per thread count)")
    for name in args.model or ["copy", "lm"]:
        for threads in (int(t) for t in args.threads.split(",")):
            profile_model(name, threads, args.steps, per_core)


if __name__ == "__main__":
    main()
