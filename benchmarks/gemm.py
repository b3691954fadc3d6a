"""GEMM benchmark: rmt.gemm vs the measured FMA peak, numpy and torch (rmt.bench).

    PYTHONPATH=python python benchmarks/gemm.py [--quick] [--threads 1,2]
"""
import argparse

from rmt.bench import run_gemm_benchmark


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a handful of shapes (< 30 s)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    args = parser.parse_args()
    run_gemm_benchmark(quick=args.quick, threads=[int(t) for t in args.threads.split(",")])


if __name__ == "__main__":
    main()
