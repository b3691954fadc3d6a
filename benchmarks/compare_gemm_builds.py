"""Two builds of our GEMM against each other on the models' linear-layer shapes, in alternating
rounds in one run (the GEMM counterpart of compare_builds.py): how to tell whether a change to the
micro-kernel or the blocking helped when the machine's speed drifts between processes.

Each build runs in its own worker process on the same matrices; the workers take turns, one
round each. A sample is the fastest of `--repeats` calls; GFLOP/s = 2 M N K / time.

    git worktree add /tmp/before HEAD~1 && (cd /tmp/before && python setup.py build_ext --inplace)
    python benchmarks/compare_gemm_builds.py /tmp/before/python python --threads 1
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

from alternating import alternate_builds, build_pair_parser, fastest, sample_columns

# (label, M, N, K, trans_a, trans_b) for C[M, N] = op(A) op(B): the three products of each linear
# of the training-step models (benchmarks/train_step.py: rows = batch x (segment + 2 x memory),
# C, D = heads x head size, F): forward X W^T, backward dY W, dY^T X. The layer computes q, k and
# v as three products of D columns; "qkv" here is the one product of 3 D columns.
def model_shapes():
    shapes = []
    for model, rows, c, d, f in (("copy", 2304, 128, 256, 256), ("lm", 2368, 256, 256, 1024),
                                 ("enwik8", 1184, 512, 512, 2048)):
        for name, n_out, n_in in (("qkv", 3 * d, c), ("o", c, d), ("fc1", f, c), ("fc2", c, f)):
            shapes += [(f"{model}.{name}.fwd", rows, n_out, n_in, False, True),
                       (f"{model}.{name}.dX", rows, n_in, n_out, False, False),
                       (f"{model}.{name}.dW", n_out, n_in, rows, True, False)]
    shapes.append(("square.2048", 2048, 2048, 2048, False, False))
    return shapes


# The large products of `rmt bench` where we trailed the BLAS most: a linear C -> 4C on M rows.
def large_shapes():
    shapes = []
    for M, C in ((2048, 1024), (8192, 512), (8192, 128)):
        shapes += [(f"lin{M}x{C}.fwd", M, 4 * C, C, False, True),
                   (f"lin{M}x{C}.dX", M, C, 4 * C, False, False),
                   (f"lin{M}x{C}.dW", 4 * C, C, M, True, False)]
    return shapes


SHAPE_SETS = {"models": model_shapes, "large": large_shapes,
              "all": lambda: model_shapes() + large_shapes()}


def worker(python_dir: str, threads: int, repeats: int, shape_set: str) -> None:
    import numpy as np

    sys.path.insert(0, str(Path(python_dir).resolve()))
    import rmt

    rmt.set_num_threads(threads)
    g = np.random.default_rng(0)
    cases = []
    for label, M, N, K, ta, tb in SHAPE_SETS[shape_set]():
        a = g.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
        b = g.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
        c = np.empty((M, N), np.float32)
        rmt.gemm(a, b, c, trans_a=ta, trans_b=tb)
        cases.append((a, b, c, ta, tb, 2.0 * M * N * K))
    print(f"ready {rmt.__file__}", flush=True)
    for _ in sys.stdin:
        out = []
        for a, b, c, ta, tb, flops in cases:
            best = fastest(lambda: rmt.gemm(a, b, c, trans_a=ta, trans_b=tb), repeats)
            out.append(f"{flops / best / 1e9:.2f}")
        print(" ".join(out), flush=True)


def main(argv=None) -> None:
    p = build_pair_parser(__doc__.split("\n\n")[0], rounds=5, repeats=5)
    p.add_argument("--shapes", choices=sorted(SHAPE_SETS), default="models",
                   help="the models' linear-layer products, the large ones of `rmt bench`, or both")
    args = p.parse_args(argv)
    if args.worker:
        worker(args.before, args.threads, args.repeats, args.shapes)
        return
    answers = alternate_builds(__file__, {"before": args.before, "after": args.after},
                               ["--threads", str(args.threads), "--repeats", str(args.repeats),
                                "--shapes", args.shapes],
                               args.rounds, "go")
    print(f"threads {args.threads}, {args.rounds} alternating rounds; GFLOP/s, median of rounds; "
          f"ratio after / before: median (min-max) over rounds")
    ratios_all = []
    for (label, M, N, K, ta, tb), (before, after, ratios) in zip(
            SHAPE_SETS[args.shapes](), sample_columns(answers, times=False)):
        ratios_all.append(statistics.median(ratios))
        print(f"{label:>18} {M:>5}x{N:<5}x{K:<5} before {statistics.median(before):7.1f}  "
              f"after {statistics.median(after):7.1f}  ratio {statistics.median(ratios):.3f} "
              f"({min(ratios):.3f}-{max(ratios):.3f})")
    geo = statistics.geometric_mean(ratios_all)
    print(f"geometric mean of the median ratios: {geo:.3f}")


if __name__ == "__main__":
    main()
