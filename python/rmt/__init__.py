"""rmt: the Recurrent Memory Transformer and Transformer-XL on the CPU.

A C++ core (xsimd kernels, OpenMP threads, hand-written forward and backward passes) under a
numpy API:

- model kinds: ``rmt.Transformer``, ``rmt.MemoryTransformer``, ``rmt.TransformerXL``, ``rmt.RMT``
  (``rmt.RMTEncoder``), configured by ``rmt.ModelConfig``;
- training: ``rmt.Trainer`` with ``rmt.Adam`` / ``rmt.AdamW``, schedules, clipping, BPTT depth,
  curricula (``rmt.Stage``), checkpoints (``model.save`` / ``rmt.load``);
- language-modelling data: ``rmt.data.ByteCorpus`` (enwik8), ``rmt.data.WordCorpus`` (WikiText),
  ``rmt.data.default_corpus()`` (Jane Austen's novels, from a Debian package, offline);
- the memory tasks of the 1M-token report: ``rmt.MemorizeTask``, ``rmt.DetectMemorizeTask``,
  ``rmt.ReasoningTask`` with ``rmt.WordTokenizer`` (``rmt.memory_tasks``);
- ``rmt.ops``: every op as a forward/backward pair on numpy arrays.
"""
import os as _os

# OpenMP threads that wait at a barrier spin for a while before sleeping (libgomp: 300k spins).
# On a machine where another process holds a core, that spinning steals the time the other thread
# needs and a 2-thread training step ran 6x slower than 1 thread (6.9 s vs 1.1 s for the copy
# model, measured with the other core busy); 1000 spins keep the quiet-machine speed and avoid
# it. Set before the extension loads libgomp; the user's own settings win.
if "GOMP_SPINCOUNT" not in _os.environ and "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "1000"

from . import _core
from ._core import (
    available_isas,
    fma_peak_gflops,
    gemm,
    gemm_reference,
    gemm_blocking,
    gemm_tile,
    get_isa,
    get_num_threads,
    has_openmp,
    set_isa,
    set_num_threads,
)
from ._core import kernels, ops
from .checkpoint import load
from .config import ModelConfig
from .data import ByteCorpus, WordCorpus, default_corpus, segments
from .models import (
    MemoryState,
    MemoryTransformer,
    Model,
    RMT,
    RMTEncoder,
    Transformer,
    TransformerXL,
    from_config,
    right_align,
)
from .memory_tasks import (DetectMemorizeTask, MemorizeTask, MemoryTask, ReasoningTask,
                           WordTokenizer, memory_task)
from .optim import Adam, AdamW, Constant, Cosine, Linear, ReduceOnPlateau
from .profiling import profile
from .trainer import Stage, Trainer, evaluate

__version__ = "0.1.0"

__all__ = [
    "Adam", "AdamW", "Constant", "Cosine", "Linear", "MemoryState", "MemoryTransformer", "Model",
    "ModelConfig", "ReduceOnPlateau", "RMT", "RMTEncoder", "Stage", "Trainer", "Transformer",
    "TransformerXL", "available_isas", "evaluate", "fma_peak_gflops", "from_config", "gemm", "gemm_reference",
    "gemm_blocking", "gemm_tile", "get_isa", "get_num_threads", "has_openmp", "kernels", "load", "ops", "right_align", "segments", "set_isa",
    "set_num_threads",
    "ByteCorpus", "WordCorpus", "default_corpus",
    "DetectMemorizeTask", "MemorizeTask", "MemoryTask", "ReasoningTask", "WordTokenizer", "memory_task",
    "profile",
]
