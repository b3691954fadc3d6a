"""Timing shared by the benchmarks that set our engine against PyTorch (BENCHMARKING.md): the two
sides measured in alternating rounds, and the per-round speed ratio."""
from __future__ import annotations

import statistics
import time


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
