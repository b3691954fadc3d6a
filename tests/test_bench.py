"""The GEMM benchmark's machinery (rmt.bench), on tiny shapes: it runs, fills every column, and its
numpy worker process answers, is paused between samples and goes away. No speed is asserted."""
import io
import os
import signal

import numpy as np
import pytest

import rmt
from rmt import bench


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc (Linux)")
def test_numpy_worker_times_matmul_in_its_own_process_and_is_paused_between_samples():
    pytest.importorskip("threadpoolctl")
    worker = bench.NumpyWorker(1)
    try:
        assert "numpy BLAS" in worker.description
        worker.prepare((7, 5), (3, 5), False, True)   # (7 x 5) (3 x 5)^T
        seconds = worker(3)
        assert 0 < seconds < 60
        assert 0 < worker(1, 0.01) < 60   # after 10 ms of untimed calls
        with open(f"/proc/{worker._proc.pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        assert state == "T"   # stopped: its BLAS threads cannot spin on our cores
    finally:
        worker.close()
    assert worker._proc.returncode == 0


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="POSIX only")
def test_a_numpy_worker_that_died_is_reported_not_taken_for_a_clean_exit():
    pytest.importorskip("threadpoolctl")
    worker = bench.NumpyWorker(1)
    try:
        worker._proc.kill()
        with pytest.raises(RuntimeError, match="numpy worker process ended"):
            worker.prepare((2, 2), (2, 2), False, False)
        assert worker._proc.returncode not in (None, 0)
    finally:
        worker.close()


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="POSIX only")
def test_gemm_benchmark_fills_every_column_on_tiny_shapes(monkeypatch):
    pytest.importorskip("threadpoolctl")
    monkeypatch.setattr(bench, "QUICK_SHAPES", [(16, 8)])
    monkeypatch.setattr(bench, "IDLE_GAP_SECONDS", 0.0)
    monkeypatch.setattr(bench, "WARM_SECONDS", 0.001)
    torch = pytest.importorskip("torch")
    out = io.StringIO()
    threads, torch_threads = rmt.get_num_threads(), torch.get_num_threads()
    rows = bench.run_gemm_benchmark(quick=True, threads=[1], out=out)
    assert rmt.get_num_threads() == threads and torch.get_num_threads() == torch_threads
    assert [r["product"] for r in rows] == bench.PRODUCTS
    assert [r["mnk"] for r in rows] == [(16, 32, 8), (16, 8, 32), (32, 8, 16)]
    for r in rows:
        assert r["ours"] > 0 and r["numpy"] > 0 and r["peak"] > 0
        assert all(np.isfinite(x) and x > 0 for x in r["ours_numpy"])
    text = out.getvalue()
    assert "in a worker process, stopped while the others run" in text
    assert "geometric mean ours/peak" in text


def test_gemm_benchmark_runs_numpy_in_process_without_threadpoolctl(monkeypatch):
    monkeypatch.setattr(bench, "QUICK_SHAPES", [(16, 8)])
    monkeypatch.setattr(bench, "IDLE_GAP_SECONDS", 0.0)
    monkeypatch.setattr(bench, "WARM_SECONDS", 0.001)
    monkeypatch.setattr(bench, "_can_isolate_numpy", lambda: False)
    out = io.StringIO()
    rows = bench.run_gemm_benchmark(quick=True, threads=[1], out=out)
    assert all(r["numpy"] > 0 for r in rows)
    assert "; in-process" in out.getvalue()


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux only")
def test_the_numpy_worker_lives_apart_and_dies_with_its_parent():
    # Its own session, so that the parent's process group holds no stopped process (an orphaned
    # group with one gets a SIGHUP); and it must not outlive a parent killed outright.
    import subprocess
    import sys
    import time

    pytest.importorskip("threadpoolctl")
    code = ("from rmt import bench; w = bench.NumpyWorker(1); print(w._proc.pid, flush=True); "
            "import time; time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert os.getsid(pid) != os.getsid(0) and os.getpgid(pid) != os.getpgid(0)
        parent.kill()
        parent.wait()
        deadline = time.time() + 10
        while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break   # dead, not yet reaped by init
            time.sleep(0.05)
        alive = os.path.exists(f"/proc/{pid}")
        if alive:
            with open(f"/proc/{pid}/stat") as f:
                alive = f.read().rsplit(")", 1)[1].split()[0] != "Z"
        assert not alive, "the stopped numpy worker outlived its parent"
    finally:
        parent.kill()
