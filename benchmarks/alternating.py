"""Timing shared by the benchmarks that set our engine against PyTorch (BENCHMARKING.md): the two
sides measured in alternating rounds, and the per-round speed ratio."""
from __future__ import annotations

import statistics
import time
from typing import Optional


def timed(fn, min_time: float) -> float:
    """Seconds per call of fn, repeated for at least min_time seconds."""
    # Let the other library's worker threads go to sleep first (OpenBLAS and libgomp workers
    # spin after a call and would steal the other core from this sample).
    time.sleep(0.3)
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / n


def alternate(ours, theirs, rounds: int, min_time: float):
    """(our times, their times): one sample of each per round, ours first."""
    t_ours, t_theirs = [], []
    for _ in range(rounds):
        t_ours.append(timed(ours, min_time))
        t_theirs.append(timed(theirs, min_time))
    return t_ours, t_theirs


def median_ratio(ours, theirs):
    """Median, min and max over rounds of their time / ours (our speed relative to theirs)."""
    ratios = [t / o for o, t in zip(ours, theirs)]
    return statistics.median(ratios), min(ratios), max(ratios)


def fastest(fn, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls of fn: a sample of the per-call comparisons."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def sample_columns(answers: dict, times: bool):
    """The per-round answer lines of alternate_builds (numbers separated by spaces, one per case)
    as one column per case: a list of (before values, after values, after / before speed per
    round). `times`: the numbers are times (lower is faster), else rates (higher is faster)."""
    rows = {name: [[float(x) for x in line.split()] for line in answers[name]]
            for name in ("before", "after")}
    columns = []
    for j in range(len(rows["before"][0])):
        before = [r[j] for r in rows["before"]]
        after = [r[j] for r in rows["after"]]
        ratios = [x / y if times else y / x for x, y in zip(before, after)]
        columns.append((before, after, ratios))
    return columns


def build_pair_parser(description: str, rounds: int, repeats: Optional[int] = None):
    """The command line shared by the two-build comparisons: before, after, --threads,
    --rounds, the hidden --worker and, given a default for it, --repeats."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("before", help="the python/ folder of the first build (holds rmt/)")
    p.add_argument("after", help="the python/ folder of the second build")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    if repeats is not None:
        p.add_argument("--repeats", type=int, default=repeats,
                       help="calls per sample (the fastest counts)")
    return p


def alternate_builds(script: str, builds: dict, worker_args: list, rounds: int,
                     request: str) -> dict:
    """Two (or more) builds of our engine in alternating rounds, each in a worker process of its
    own (two builds cannot share one interpreter): `script --worker` is started once per build
    as `script <python dir> <python dir> --worker <worker_args>`, prints "ready <rmt path>", then
    answers each `request` line with one line. Returns {name: [answer line per round]}."""
    import subprocess
    import sys

    procs = {}
    for name, python_dir in builds.items():
        procs[name] = subprocess.Popen(
            [sys.executable, script, python_dir, python_dir, "--worker", *worker_args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for name, proc in procs.items():
            ready = proc.stdout.readline().split()
            if not ready or ready[0] != "ready":
                raise SystemExit(f"the {name} worker did not start (see its error above)")
            print(f"{name}: {ready[1]}", flush=True)
        answers = {name: [] for name in procs}
        for _ in range(rounds):
            for name, proc in procs.items():
                proc.stdin.write(request + "\n")
                proc.stdin.flush()
                answers[name].append(proc.stdout.readline())
        return answers
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
