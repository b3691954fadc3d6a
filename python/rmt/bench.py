"""GEMM benchmark: rmt.gemm against the measured FMA peak, numpy and torch (shared/BENCHMARKING.md).

Every figure is float32, counted as 2*M*N*K flops. For each thread count the three libraries run
with that many threads (rmt.set_num_threads, torch.set_num_threads, threadpoolctl for numpy's
BLAS) on arrays of the same shapes, alternating ours / numpy / torch for several rounds after a
warm-up; the table gives each one's median GFLOP/s and the median (min-max) of the per-round
ratios. Each sample follows an idle gap (so the previous library's threads have stopped spinning)
and WARM_SECONDS of untimed calls (so the cores are back to speed after the gap).

numpy runs in a worker process of its own, stopped (SIGSTOP) whenever it is not measuring:
OpenBLAS's worker threads busy-wait after each call (for over a second, measured here), and in
one process with the others they took the second core from whichever library ran next (our
2-thread small-shape figures fell to half). A stopped process's threads cannot spin. Without
SIGSTOP (not POSIX) or threadpoolctl, numpy runs in-process as before.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import time

import numpy as np

# Rows M = batch * time steps and model widths C; a linear layer C -> 4C does three products.
FULL_ROWS = [64, 256, 512, 2048, 8192]
FULL_WIDTHS = [64, 128, 256, 512, 1024]
QUICK_SHAPES = [(256, 256), (2048, 512), (512, 1024)]   # (M, C)
PRODUCTS = ["fwd X W^T", "bwd dY W", "bwd dY^T X"]


def _products(M, C, rng):
    """The three products of a linear layer X (M, C) -> Y (M, 4C) with W (4C, C): for each, a
    name, (m, n, k) and one zero-argument callable per library writing into a preallocated out."""
    x = rng.standard_normal((M, C), dtype=np.float32)
    w = rng.standard_normal((4 * C, C), dtype=np.float32)
    dy = rng.standard_normal((M, 4 * C), dtype=np.float32)
    y, dx, dw = (np.empty(s, np.float32) for s in [(M, 4 * C), (M, C), (4 * C, C)])
    # (name, (m, n, k), a, b, trans_a, trans_b, out)
    return [
        (PRODUCTS[0], (M, 4 * C, C), x, w, False, True, y),     # Y = X W^T
        (PRODUCTS[1], (M, C, 4 * C), dy, w, False, False, dx),  # dX = dY W
        (PRODUCTS[2], (4 * C, C, M), dy, x, True, False, dw),   # dW = dY^T X
    ]


def _callables(a, b, trans_a, trans_b, out, torch, numpy_worker=None):
    import rmt

    fns = {"ours": lambda: rmt.gemm(a, b, out, trans_a=trans_a, trans_b=trans_b)}
    if numpy_worker is not None:
        numpy_worker.prepare(a.shape, b.shape, trans_a, trans_b)
        fns["numpy"] = numpy_worker
    else:
        an, bn = (a.T if trans_a else a), (b.T if trans_b else b)
        fns["numpy"] = lambda: np.matmul(an, bn, out=out)
    if torch is not None:
        at, bt, ot = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
        at, bt = (at.T if trans_a else at), (bt.T if trans_b else bt)
        fns["torch"] = lambda: torch.matmul(at, bt, out=ot)
    return fns


IDLE_GAP_SECONDS = 0.3
# After the gap, each sample first runs its product untimed for this long: a core that idled for
# 0.3 s came back slowly on this VM (the first 2-thread call took 2-4 ms instead of 0.5, and the
# next 50 ms ran at the speed of one thread), which cut the short samples of whichever library
# came next by up to a half.
WARM_SECONDS = 0.1


class NumpyWorker:
    """numpy's matmul in a process of its own (see the module doc), paused between samples.

    prepare() makes the operands of one product there (random, float32, the shapes given);
    a call returns the seconds of `calls` matmuls into a preallocated output."""

    def __init__(self, threads):
        # Its own session: a stopped process in ours would get our whole process group a SIGHUP
        # the moment that group is orphaned (a background `rmt bench &` whose shell exits was
        # killed that way). The worker asks to die with us instead (_numpy_worker_main).
        self._proc = subprocess.Popen([sys.executable, "-m", "rmt.bench", "--numpy-worker",
                                       str(threads), str(os.getpid())], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            self.description = self._read()
            self._stop()
        except BaseException:
            self.close()
            raise

    def _read(self):
        line = self._proc.stdout.readline()
        if not line:
            self._ended()
        return line.rstrip("\n")

    def _ended(self):
        code = self._proc.wait(timeout=10)
        raise RuntimeError(f"the numpy worker process ended (exit code {code})")

    def _ask(self, request):
        self._proc.send_signal(signal.SIGCONT)
        try:
            self._proc.stdin.write(request + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            self._ended()
        answer = self._read()
        self._stop()
        return answer

    def _stop(self):
        # and wait until it has stopped, every thread of it: the signal is asynchronous
        self._proc.send_signal(signal.SIGSTOP)
        _, status = os.waitpid(self._proc.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):   # it had ended: waitpid reaped it, so record how
            self._proc.returncode = os.waitstatus_to_exitcode(status)
            raise RuntimeError(f"the numpy worker process ended (exit code "
                               f"{self._proc.returncode})")

    def prepare(self, a_shape, b_shape, trans_a, trans_b):
        self._ask(f"prepare {a_shape[0]} {a_shape[1]} {b_shape[0]} {b_shape[1]} "
                  f"{int(trans_a)} {int(trans_b)}")

    def __call__(self, calls=1, warm_seconds=0.0):
        return float(self._ask(f"run {calls} {warm_seconds}"))

    def close(self):
        """Ends the worker (also one that is stopped or has died); never raises."""
        if self._proc.returncode is not None:   # ended and reaped already
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            return
        try:
            self._proc.send_signal(signal.SIGCONT)
            self._proc.stdin.close()
            self._proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()


def _numpy_worker_main(threads, parent):
    """The worker's side of NumpyWorker (parent: the pid of the process that started it):
    answers prepare / run requests on stdin."""
    from threadpoolctl import threadpool_limits

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a Ctrl-C is the parent's to handle
    try:   # Linux: SIGKILL (which ends even a stopped process) when the parent dies
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:   # the parent died before the request took effect
        return

    rng = np.random.default_rng(0)
    print(_blas_description(), flush=True)
    matmul = None
    with threadpool_limits(limits=threads, user_api="blas"):
        for line in sys.stdin:
            words = line.split()
            if words[0] == "prepare":
                am, an, bm, bn, ta, tb = map(int, words[1:])
                a = rng.standard_normal((am, an), dtype=np.float32)
                b = rng.standard_normal((bm, bn), dtype=np.float32)
                a, b = (a.T if ta else a), (b.T if tb else b)
                out = np.empty((a.shape[0], b.shape[1]), np.float32)
                matmul = lambda a=a, b=b, out=out: np.matmul(a, b, out=out)  # noqa: E731
                matmul()   # first touch of the output, the BLAS's buffers and threads
                print("ready", flush=True)
            else:
                print(f"{_timed(matmul, int(words[1]), float(words[2])):.9f}", flush=True)


def _timed(fn, calls, warm_seconds=0.0):
    """Seconds of `calls` calls of fn, after running it untimed for warm_seconds (a NumpyWorker
    does both in its own process)."""
    if isinstance(fn, NumpyWorker):
        return fn(calls, warm_seconds)
    start = time.perf_counter()
    while time.perf_counter() - start < warm_seconds:
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - t0


def _measure(fns, flops, rounds, min_sample_seconds):
    """Warm-up, then `rounds` rounds alternating the callables; each sample repeats a callable
    until it has run min_sample_seconds. Returns GFLOP/s samples per name (in round order)."""
    calls = {}
    for name, fn in fns.items():
        _timed(fn, 1)   # warm-up: first touch of the output, packing buffers, thread pools
        t = max(_timed(fn, 1), 1e-7)
        calls[name] = max(1, math.ceil(min_sample_seconds / t))
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = calls[name]
            # Let the previous library's worker threads go to sleep first: libgomp's (ours,
            # torch's) spin for a while after a parallel region, and a spinning thread on the
            # other core halved the next library's 2-thread speed. Then warm up (WARM_SECONDS).
            time.sleep(IDLE_GAP_SECONDS)
            samples[name].append(flops * n / _timed(fn, n, WARM_SECONDS) * 1e-9)
    return samples


def _ratio(samples, a, b):
    """Median (min, max) of the per-round ratios a / b."""
    if b not in samples:
        return None
    r = [x / y for x, y in zip(samples[a], samples[b])]
    return statistics.median(r), min(r), max(r)


def _fmt_ratio(r):
    return "n/a" if r is None else f"{r[0]:.2f} ({r[1]:.2f}-{r[2]:.2f})"


@contextlib.contextmanager
def _threads(n, torch):
    """n threads for all three libraries."""
    import rmt

    rmt.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is None:
        yield
    else:
        with threadpool_limits(limits=n, user_api="blas"):
            yield


def _blas_description():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "numpy BLAS: unknown (threadpoolctl missing; numpy threads not controlled)"
    np.ones((8, 8)) @ np.ones((8, 8))   # make sure the BLAS is loaded
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(f"numpy BLAS: {i.get('internal_api')} {i.get('version')} "
                     f"kernel {i.get('architecture')} ({i.get('threading_layer')})" for i in blas)


def run_gemm_benchmark(quick=False, threads=None, out=None):
    """Prints the GEMM table (see the module doc) and returns its rows as dicts.

    quick: a handful of shapes, well under 30 s. threads: an int, a list of ints, or None for
    [1, 2]."""
    import rmt

    out = out or sys.stdout
    if threads is None:
        threads = [1, 2]
    elif isinstance(threads, int):
        threads = [threads]
    try:
        import torch
    except ImportError:
        torch = None

    def say(line=""):
        print(line, file=out, flush=True)

    previous_threads = rmt.get_num_threads()
    say(f"rmt {rmt.__version__}, ISA {rmt.get_isa()}, GEMM tile {rmt.gemm_tile()}, "
        f"OpenMP {'yes' if rmt.has_openmp else 'no'}")
    workers = {}
    previous_torch_threads = torch.get_num_threads() if torch is not None else None
    try:
        if _can_isolate_numpy():
            for n in threads:
                workers[n] = NumpyWorker(n)
        say((workers[threads[0]].description if workers else _blas_description()) +
            ("; in a worker process, stopped while the others run" if workers else "; in-process"))
        return _run_table(threads, torch, workers, quick, say)
    finally:
        for worker in workers.values():
            worker.close()
        rmt.set_num_threads(previous_threads)
        if previous_torch_threads is not None:
            torch.set_num_threads(previous_torch_threads)


def _can_isolate_numpy():
    """numpy in a stopped worker process needs SIGSTOP (POSIX) and threadpoolctl (its threads)."""
    import importlib.util

    return hasattr(signal, "SIGSTOP") and importlib.util.find_spec("threadpoolctl") is not None


def _run_table(threads, torch, workers, quick, say):
    import rmt

    shapes = QUICK_SHAPES if quick else [(M, C) for M in FULL_ROWS for C in FULL_WIDTHS]
    rounds = 5 if quick else 7
    min_sample_seconds = 0.01 if quick else 0.05
    say(f"torch {torch.__version__}" if torch is not None else "torch: not installed (n/a)")
    say("float32; GFLOP/s = 2*M*N*K / time; median of "
        f"{rounds} alternating rounds after a warm-up; ratios: median (min-max) per round")
    say()
    peaks = {}
    for n in threads:
        peaks[n] = rmt.fma_peak_gflops(threads=n, seconds=0.5)
        say(f"FMA peak ({rmt.get_isa()}, {n} thread{'s' if n > 1 else ''}): {peaks[n]:.1f} GFLOP/s")
    say()
    header = (f"{'thr':>3} {'M':>5} {'C':>5}  {'product':<11} {'m x n x k':<17} {'ours':>6} "
              f"{'numpy':>6} {'torch':>6} {'ours/peak':>9}  {'ours/numpy':<17} {'ours/torch':<17}")
    say(header)
    say("-" * len(header))
    rows = []
    spans = {}
    rng = np.random.default_rng(0)
    for n in threads:
        started = time.strftime("%H:%M:%S")
        with _threads(n, torch):
            for M, C in shapes:
                for name, (m, nn, k), a, b, ta, tb, o in _products(M, C, rng):
                    samples = _measure(_callables(a, b, ta, tb, o, torch, workers.get(n)),
                                       2.0 * m * nn * k, rounds, min_sample_seconds)
                    med = {lib: statistics.median(s) for lib, s in samples.items()}
                    row = dict(threads=n, M=M, C=C, product=name, mnk=(m, nn, k),
                               ours=med["ours"], numpy=med["numpy"], torch=med.get("torch"),
                               peak=peaks[n], ours_numpy=_ratio(samples, "ours", "numpy"),
                               ours_torch=_ratio(samples, "ours", "torch"))
                    rows.append(row)
                    torch_s = "n/a" if row["torch"] is None else f"{row['torch']:.1f}"
                    say(f"{n:>3} {M:>5} {C:>5}  {name:<11} {f'{m}x{nn}x{k}':<17} "
                        f"{row['ours']:>6.1f} {row['numpy']:>6.1f} {torch_s:>6} "
                        f"{row['ours'] / peaks[n]:>9.1%}  {_fmt_ratio(row['ours_numpy']):<17} "
                        f"{_fmt_ratio(row['ours_torch']):<17}")
        spans[n] = f"{started}-{time.strftime('%H:%M:%S')}"
    say()
    for n in threads:
        sub = [r for r in rows if r["threads"] == n]
        gm = lambda v: math.exp(statistics.fmean(math.log(x) for x in v))  # noqa: E731
        line = (f"{n} thread{'s' if n > 1 else ''}: geometric mean ours/peak "
                f"{gm([r['ours'] / r['peak'] for r in sub]):.1%}, ours/numpy "
                f"{gm([r['ours_numpy'][0] for r in sub]):.2f}")
        if torch is not None:
            line += f", ours/torch {gm([r['ours_torch'][0] for r in sub]):.2f}"
        say(line + f" (ran {spans[n]} local time)")
    return rows


if __name__ == "__main__" and sys.argv[1:2] == ["--numpy-worker"]:
    _numpy_worker_main(int(sys.argv[2]), int(sys.argv[3]))
