"""Two builds of our relative attention (the op of RMT and Transformer-XL) against each other on
the models' shapes, forward and backward, in alternating rounds in one run: the attention
counterpart of compare_gemm_builds.py, for changes to the attention ops whose effect on a whole
step (a third of the copy step) would drown in the machine's drift.

    git worktree add /tmp/before HEAD~1 && (cd /tmp/before && python setup.py build_ext --inplace)
    python benchmarks/compare_attention_builds.py /tmp/before/python python --threads 1

Each shape is one layer's call of a segment in the model of benchmarks/train_step.py: batch B,
Q = K = 2M + T rows ([read memory | tokens | write memory]), the RMT decoder mask, C = heads x
head size. A sample is the fastest of --repeats calls; the ratio is after / before speed. A call
goes through the Python binding, so it also allocates its outputs (the backward fills its dq, dk,
dv with NaN first): that part is the same in both builds and pulls the ratios towards 1.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

from alternating import alternate_builds, build_pair_parser, fastest, sample_columns

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import MODELS  # noqa: E402


def shapes():
    """(label, B, M, T, n_heads, head size) of each model's relative attention."""
    out = []
    for name, spec in MODELS.items():
        cfg = spec["cfg"]
        hs = cfg.get("d_head") or cfg["d_model"] // cfg["n_heads"]
        out.append((name, spec["batch"], cfg["num_mem_tokens"], cfg["segment_len"],
                    cfg["n_heads"], hs))
    return out


def worker(python_dir: str, threads: int, repeats: int) -> None:
    import numpy as np

    sys.path.insert(0, str(Path(python_dir).resolve()))
    import rmt
    from rmt import _core

    rmt.set_num_threads(threads)
    g = np.random.default_rng(0)
    cases = []
    for _, B, M, T, NH, hs in shapes():
        Q, C = 2 * M + T, NH * hs

        def f(*shape):
            return g.standard_normal(shape, dtype=np.float32)

        q, k, v, dout = f(B, Q, C), f(B, Q, C), f(B, Q, C), f(B, Q, C)
        rk, u, vb = f(Q, C), f(C), f(C)
        allowed = _core.ops.rmt_decoder_mask(M, T).astype(np.uint8)
        _, probs = _core.ops.rel_attention_forward(q, k, v, rk, u, vb, NH, allowed)
        fwd = (lambda q=q, k=k, v=v, rk=rk, u=u, vb=vb, NH=NH, allowed=allowed:
               _core.ops.rel_attention_forward(q, k, v, rk, u, vb, NH, allowed))
        bwd = (lambda dout=dout, q=q, k=k, v=v, rk=rk, u=u, vb=vb, probs=probs, NH=NH:
               _core.ops.rel_attention_backward(dout, q, k, v, rk, u, vb, probs, NH, True))
        cases += [fwd, bwd]
    print(f"ready {rmt.__file__}", flush=True)
    for _ in sys.stdin:
        out = []
        for fn in cases:
            out.append(f"{fastest(fn, repeats) * 1e3:.4f}")
        print(" ".join(out), flush=True)


def main(argv=None) -> None:
    p = build_pair_parser(__doc__.split("\n\n")[0], rounds=15, repeats=5)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.before, args.threads, args.repeats)
        return
    answers = alternate_builds(__file__, {"before": args.before, "after": args.after},
                               ["--threads", str(args.threads), "--repeats", str(args.repeats)],
                               args.rounds, "go")
    print(f"threads {args.threads}, {args.rounds} alternating rounds; ms per call, median of "
          f"rounds; speed ratio after / before: median (min-max) over rounds")
    ratios_all = []
    labels = [(f"{name}.{d}", B, 2 * M + T, NH, hs) for name, B, M, T, NH, hs in shapes()
              for d in ("fwd", "bwd")]
    for (label, B, Q, NH, hs), (before, after, ratios) in zip(
            labels, sample_columns(answers, times=True)):
        ratios_all.append(statistics.median(ratios))
        print(f"{label:>11}  B {B:>2} Q=K {Q:>3} heads {NH} x {hs:<3} before "
              f"{statistics.median(before):8.3f}  after {statistics.median(after):8.3f}  ratio "
              f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
    print(f"geometric mean of the median ratios: {statistics.geometric_mean(ratios_all):.3f}")


if __name__ == "__main__":
    main()
