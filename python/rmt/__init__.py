"""rmt: the Recurrent Memory Transformer and Transformer-XL on the CPU.

A C++ core (xsimd kernels, OpenMP threads, hand-written forward and backward passes) under a
numpy API. ``rmt.ops`` holds every op as a forward/backward pair on numpy arrays.
"""
from . import _core
from ._core import (
    available_isas,
    fma_peak_gflops,
    gemm,
    gemm_reference,
    gemm_tile,
    get_isa,
    get_num_threads,
    has_openmp,
    set_isa,
    set_num_threads,
)
from ._core import kernels, ops

__version__ = "0.1.0"

__all__ = [
    "available_isas", "fma_peak_gflops", "gemm", "gemm_reference", "gemm_tile", "get_isa", "get_num_threads",
    "has_openmp", "kernels", "ops", "set_isa", "set_num_threads",
]
