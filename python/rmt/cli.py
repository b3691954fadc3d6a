"""The `rmt` command line: `python -m rmt info | bench`."""
from __future__ import annotations

import argparse
import sys


def _info(args) -> int:
    import rmt

    print(f"rmt {rmt.__version__}")
    print(f"instruction sets: {', '.join(rmt.available_isas())} (active: {rmt.get_isa()})")
    print(f"OpenMP: {'yes' if rmt.has_openmp else 'no'}, threads: {rmt.get_num_threads()}")
    mr, nr = rmt.gemm_tile()
    print(f"GEMM register tile (float32): {mr} x {nr}")
    return 0


def _bench(args) -> int:
    from . import bench

    threads = [int(t) for t in args.threads.split(",")]
    bench.run_gemm_benchmark(quick=args.quick, threads=threads)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rmt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="what this build and CPU provide")
    p.set_defaults(fn=_info)
    p = sub.add_parser("bench", help="GEMM against the FMA peak, numpy and torch")
    p.add_argument("--quick", action="store_true", help="a handful of shapes (< 1 minute)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.set_defaults(fn=_bench)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
