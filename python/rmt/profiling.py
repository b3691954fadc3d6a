"""Per-op profiling of the C++ core: where a training step spends its time.

    with rmt.profile() as prof:
        for _ in range(5):
            trainer.step(batch)
    print(prof.table())

The model and training code time each op call (``fwd.linear.qkv``, ``bwd.rel_attention``,
``optim.adamw``, ``glue.copy``, ...) in wall-clock time on the calling thread, OpenMP regions
inside the op included. The scopes do not nest, so their sum is the time they cover; the rest of
the wall time (Python, data handling, freeing activations) shows as ``coverage`` < 1. Off, the
profiler costs one relaxed atomic load per scope.
"""
from __future__ import annotations

import contextlib
import time
from typing import Dict, Iterator, List, Optional

from . import _core

__all__ = ["Profile", "profile"]


class Profile:
    """The counters of one ``rmt.profile()`` block (read them after the block, or during it)."""

    def __init__(self):
        self._records: Optional[List[Dict]] = None
        self._start = time.perf_counter()
        self.wall: Optional[float] = None   # seconds of the whole block, once it has ended

    @property
    def records(self) -> List[Dict]:
        """[{name, seconds, calls, flops}], slowest first (a snapshot while the block runs)."""
        recs = self._records if self._records is not None else _core.profile_report()
        return sorted(recs, key=lambda r: r["seconds"], reverse=True)

    @property
    def total(self) -> float:
        """Seconds inside the profiled scopes."""
        return sum(r["seconds"] for r in self.records)

    @property
    def coverage(self) -> float:
        """The fraction of the block's wall time spent inside the scopes."""
        wall = self.wall if self.wall is not None else time.perf_counter() - self._start
        return self.total / wall if wall > 0 else 0.0

    def by_group(self) -> Dict[str, float]:
        """Seconds per name prefix (``fwd``, ``bwd``, ``glue``, ``optim``)."""
        out: Dict[str, float] = {}
        for r in self.records:
            group = r["name"].split(".", 1)[0]
            out[group] = out.get(group, 0.0) + r["seconds"]
        return dict(sorted(out.items(), key=lambda kv: kv[1], reverse=True))

    def table(self, per: int = 1) -> str:
        """A text table sorted by time: ms and calls (divided by ``per``, e.g. the number of
        steps), % of the profiled total, ms per call and GFLOP/s where the scope counts FLOPs."""
        recs = self.records
        total = sum(r["seconds"] for r in recs) or 1.0
        width = max([len("op")] + [len(r["name"]) for r in recs])
        unit = "ms" if per == 1 else "ms/it"
        lines = [f"{'op':<{width}}  {unit:>9}  {'%':>6}  {'calls':>7}  {'ms/call':>8}  {'GFLOP/s':>8}"]
        for r in recs:
            calls = r["calls"]
            gflops = f"{r['flops'] / r['seconds'] * 1e-9:8.1f}" if r["flops"] and r["seconds"] else ""
            lines.append(f"{r['name']:<{width}}  {r['seconds'] * 1e3 / per:9.3f}  "
                         f"{100 * r['seconds'] / total:6.2f}  {calls / per:7.4g}  "
                         f"{r['seconds'] * 1e3 / calls:8.4f}  {gflops:>8}")
        lines.append(f"{'total':<{width}}  {total * 1e3 / per:9.3f}  {100.0:6.2f}")
        return "\n".join(lines)

    def __repr__(self):
        return f"Profile({len(self.records)} ops, {self.total * 1e3:.1f} ms, coverage {self.coverage:.0%})"


@contextlib.contextmanager
def profile(reset: bool = True) -> Iterator[Profile]:
    """Enables the C++ profiler for the block (zeroing its counters first unless ``reset`` is
    False) and yields a :class:`Profile` that holds the counters when the block ends. The
    profiler's previous on/off state is restored afterwards."""
    was_enabled = _core.profile_enabled()
    if reset:
        _core.profile_reset()
    prof = Profile()
    _core.profile_enable(True)
    try:
        yield prof
    finally:
        _core.profile_enable(was_enabled)
        prof.wall = time.perf_counter() - prof._start
        prof._records = _core.profile_report()
