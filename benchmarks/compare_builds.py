"""Two builds of our engine against each other on one training step, measured in alternating
rounds in one run: the way to tell whether a change to the engine helped on a machine whose speed
drifts by tens of percent from one process to the next (BENCHMARKS.md).

Each build runs in its own worker process (the two cannot share one interpreter) on the same
model, weights and batch; the workers take turns, one round each, so slow drift of the machine
hits both alike. A round is the fastest of `--steps` steps; with --model encoder a step is one
sample of the P2 encoder's stream (benchmarks/encoder_inference.py, inference only).

    git worktree add /tmp/before HEAD~1 && (cd /tmp/before && python setup.py build_ext --inplace)
    python benchmarks/compare_builds.py /tmp/before/python python --model copy --threads 1
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from alternating import alternate_builds, build_pair_parser

HERE = Path(__file__).resolve().parent


def worker(python_dir: str, model: str, threads: int) -> None:
    """Serve rounds on stdin: each line "n" runs n steps and answers with the fastest, seconds."""
    import numpy as np

    sys.path.insert(0, str(Path(python_dir).resolve()))
    sys.path.insert(0, str(HERE))
    import rmt
    from train_step import MODELS, our_trainer

    g = np.random.default_rng(0)
    if model == "encoder":   # a step: one sample of benchmarks/encoder_inference.py's stream
        from encoder_inference import DEFAULTS, encoder_config

        rmt.set_num_threads(threads)
        encoder = rmt.RMTEncoder(rmt.ModelConfig(**encoder_config(**DEFAULTS)), seed=0)
        encoder.eval()
        segs = [g.integers(4, DEFAULTS["vocab"], (DEFAULTS["batch"], DEFAULTS["segment_len"]))
                for _ in range(DEFAULTS["segments"])]

        def step():
            for _ in encoder.stream(iter(segs)):
                pass
    else:
        spec = MODELS[model]
        cfg, _, trainer = our_trainer(spec, threads)
        B, S, T = spec["batch"], spec["segments"], cfg["segment_len"]
        batch = {"tokens": g.integers(0, cfg["vocab_size"], (B, S * T)),
                 "targets": g.integers(0, cfg["vocab_size"], (B, S * T))}

        def step():
            trainer.step(batch)
    step()   # warm-up: buffers grown, pages touched
    print(f"ready {rmt.__file__}", flush=True)
    for line in sys.stdin:
        best = float("inf")
        for _ in range(int(line)):
            t0 = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - t0)
        print(f"{best:.6f}", flush=True)


def main(argv=None) -> None:
    p = build_pair_parser(__doc__.split("\n\n")[0], rounds=6)
    p.add_argument("--model", default="copy", choices=["copy", "lm", "enwik8", "encoder"],
                   help="a training step of train_step.py's models, or (encoder) one inference "
                        "sample of encoder_inference.py's P2 encoder")
    p.add_argument("--steps", type=int, default=2, help="steps per round (the fastest counts)")
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.before, args.model, args.threads)
    answers = alternate_builds(__file__, {"before": args.before, "after": args.after},
                               ["--model", args.model, "--threads", str(args.threads)],
                               args.rounds, str(args.steps))
    before, after = ([float(x) for x in answers[name]] for name in ("before", "after"))
    speedups = [b / a for b, a in zip(before, after)]
    print(f"{args.model} model, {args.threads} thread(s), {args.rounds} rounds of {args.steps} "
          f"steps: before {statistics.median(before) * 1e3:.1f} ms/step, after "
          f"{statistics.median(after) * 1e3:.1f} ms/step (medians); after/before speed per round "
          f"{statistics.median(speedups):.3f} (median), {min(speedups):.3f}-{max(speedups):.3f}")


if __name__ == "__main__":
    main()
