"""
rmt's C++ core: kernels, ops, models and trainers
"""
from __future__ import annotations
import numpy
import numpy.typing
import typing
from . import kernels
from . import ops
__all__: list[str] = ['Model', 'Segment', 'SegmentIterator', 'StreamState', 'TrainerCore', 'available_isas', 'fma_peak_gflops', 'gemm', 'gemm_blocking', 'gemm_reference', 'gemm_tile', 'get_isa', 'get_num_threads', 'has_openmp', 'kernels', 'ops', 'profile_enable', 'profile_enabled', 'profile_report', 'profile_reset', 'set_isa', 'set_num_threads', 'validate_config']
class Segment:
    """
    One segment of a batch: tokens (B, T) (a read-only view, no copy), targets (B, T) or None (-100 on padding), mask (B, T) bool valid positions, empty (B,) bool rows with no valid token, index.
    """
    def __repr__(self) -> str:
        ...
    @property
    def empty(self) -> numpy.ndarray:
        ...
    @property
    def index(self) -> int:
        ...
    @property
    def mask(self) -> numpy.ndarray:
        ...
    @property
    def targets(self) -> typing.Any:
        ...
    @property
    def tokens(self) -> numpy.ndarray:
        ...
class SegmentIterator:
    """
    Segments (B, segment_len) of a batch of token sequences, as views (see rmt.segments). len(), [i] (negative i counts from the end), iter() starts a new pass (an iterator whose iter() is itself), next() advances this object's own cursor.
    """
    def __getitem__(self, index: typing.SupportsInt | typing.SupportsIndex) -> Segment:
        ...
    def __init__(self, tokens: typing.Any, segment_len: typing.Any, align: str = 'left', pad_id: typing.Any = 0, targets: typing.Any = None, num_segments: typing.Any = None) -> None:
        ...
    def __iter__(self) -> typing.Any:
        ...
    def __len__(self) -> int:
        ...
    def __next__(self) -> Segment:
        ...
    def __repr__(self) -> str:
        ...
    @property
    def align(self) -> str:
        ...
    @property
    def batch_size(self) -> int:
        ...
    @property
    def lengths(self) -> numpy.typing.NDArray[numpy.int64]:
        """
        Each row's number of tokens (a copy).
        """
    @property
    def num_segments(self) -> int:
        ...
    @property
    def pad_id(self) -> int:
        ...
    @property
    def segment_len(self) -> int:
        ...
class StreamState:
    """
    Memory and caches carried between segments at inference.
    """
    def copy(self) -> StreamState:
        """
        An independent copy of the state.
        """
    @property
    def batch(self) -> int:
        ...
    @property
    def cache_len(self) -> int:
        ...
    @property
    def memory(self) -> typing.Any:
        """
        The memory (batch, M, C) as a numpy view (no copy; writes go to the stream).
        """
    @property
    def segments_seen(self) -> int:
        ...
class Model:
    """
    A model kind over multi-segment unrolls (docs/MODELS.md).
    """
    training: bool
    def __init__(self, config: dict, seed: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
        ...
    def attention(self, state: StreamState, layer: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.float32]:
        """
        The attention probabilities of layer `layer` in the last segment run through `state`: a new array (batch, heads, query rows, key rows) (rmt_encoder: only the samples with content in that segment).
        """
    def classify(self, tokens: typing.Any) -> typing.Any:
        """
        rmt_encoder: forward only; returns the last segment's CLS logits (batch, num_classes).
        """
    def classify_loss_and_grad(self, tokens: typing.Any, labels: typing.Any, bptt_depth: typing.Any = None, return_logits: bool = False) -> tuple:
        """
        rmt_encoder: one forward and backward over right-aligned sequences (batch, S * segment_len), pad_id marking empty positions, against labels (batch,). Accumulates into grads(). Returns (loss, logits (batch, num_classes) or None).
        """
    def forward(self, tokens: typing.Any, targets: typing.Any = None, loss_mask: typing.Any = None, init_memory: typing.Any = None) -> tuple:
        """
        Forward only over whole sequences: returns (loss or None, logits (batch, L, vocab), number of tokens in the loss). Gradients are untouched.
        """
    def grads(self) -> dict:
        """
        Named gradients: numpy views into the flat gradient buffer.
        """
    def init_stream(self, batch: typing.SupportsInt | typing.SupportsIndex) -> StreamState:
        ...
    def initialize(self, seed: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def loss_and_grad(self, tokens: typing.Any, targets: typing.Any, loss_mask: typing.Any = None, bptt_depth: typing.Any = None, return_logits: bool = False, init_memory: typing.Any = None) -> tuple:
        """
        One forward and backward over whole sequences (batch, S * segment_len). Accumulates into grads(). Returns (loss, logits or None, initial-memory gradient or None).
        """
    def parameters(self) -> dict:
        """
        Named parameters: numpy views into the flat parameter buffer (writes go to the model).
        """
    def set_dropout_seed(self, seed: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def step(self, state: StreamState, tokens: typing.Any) -> numpy.typing.NDArray[numpy.float32]:
        """
        Runs one segment (batch, segment_len) without gradient, advancing the stream state; returns the logits (batch, segment_len, vocab); rmt_encoder: the segment's CLS logits (batch, num_classes), NaN for a sample whose segment is all padding (its memory is kept).
        """
    def zero_grad(self) -> None:
        ...
    @property
    def flat_grads(self) -> numpy.typing.NDArray[numpy.float32]:
        ...
    @property
    def flat_parameters(self) -> numpy.typing.NDArray[numpy.float32]:
        ...
    @property
    def kind(self) -> str:
        ...
    @property
    def num_parameters(self) -> int:
        ...
    @property
    def spare_stream_workspace_bytes(self) -> int:
        ...
class TrainerCore:
    """
    One training step in C++ (forward, backward, clipping, Adam/AdamW).
    """
    def __init__(self, model: Model, adamw: bool = True, beta1: typing.SupportsFloat | typing.SupportsIndex = 0.9, beta2: typing.SupportsFloat | typing.SupportsIndex = 0.999, eps: typing.SupportsFloat | typing.SupportsIndex = 1e-08, weight_decay: typing.SupportsFloat | typing.SupportsIndex = 0.0, clip_norm: typing.SupportsFloat | typing.SupportsIndex = 0.0, clip_value: typing.SupportsFloat | typing.SupportsIndex = 0.0, bptt_depth: typing.Any = None) -> None:
        ...
    def step(self, tokens: typing.Any, targets: typing.Any, loss_mask: typing.Any = None, *, lr: typing.SupportsFloat | typing.SupportsIndex, accumulate: typing.SupportsInt | typing.SupportsIndex = 1) -> dict:
        """
        Zeroes the gradients, runs forward and backward over `accumulate` row chunks of the batch, clips, and takes one optimizer step (skipped when the loss or gradient is not finite). Returns {loss, grad_norm, tokens, finite}.
        """
    def step_classify(self, tokens: typing.Any, labels: typing.Any, *, lr: typing.SupportsFloat | typing.SupportsIndex, accumulate: typing.SupportsInt | typing.SupportsIndex = 1) -> dict:
        """
        step() for the rmt_encoder: labels (batch,) of the last segment's classification.
        """
    @property
    def bptt_depth(self) -> int:
        ...
    @bptt_depth.setter
    def bptt_depth(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def clip_norm(self) -> float:
        ...
    @clip_norm.setter
    def clip_norm(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def clip_value(self) -> float:
        ...
    @clip_value.setter
    def clip_value(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def exp_avg(self) -> numpy.typing.NDArray[numpy.float32]:
        """
        Adam's first moment, a numpy view of the flat buffer (the parameter layout).
        """
    @property
    def exp_avg_sq(self) -> numpy.typing.NDArray[numpy.float32]:
        """
        Adam's second moment, a numpy view of the flat buffer.
        """
    @property
    def steps_taken(self) -> int:
        ...
    @steps_taken.setter
    def steps_taken(self, arg1: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
def available_isas() -> list[str]:
    """
    Instruction sets this CPU can run, best first ('scalar' always).
    """
def fma_peak_gflops(threads: typing.Any = None, seconds: typing.SupportsFloat | typing.SupportsIndex = 0.2) -> float:
    """
    Measured float32 FMA peak in GFLOP/s of `threads` threads (default: the current number) running a register-only FMA loop of the active ISA at once; best of 5 runs after a warm-up, about `seconds` in all.
    """
def gemm(a: typing.Any, b: typing.Any, c: typing.Any = None, trans_a: bool = False, trans_b: bool = False, alpha: typing.SupportsFloat | typing.SupportsIndex = 1.0, beta: typing.SupportsFloat | typing.SupportsIndex = 0.0, bias: typing.Any = None, relu: bool = False) -> numpy.ndarray:
    """
    C = alpha * op(a) @ op(b) + beta * c + bias, with op(x) = x.T when trans_x and bias (N,) added to every row (None: no bias); relu=True stores max(C, 0) instead (NaN -> 0), the fused bias + ReLU of a feed-forward layer. Returns c (a new array when c is None). a, b, c, bias: C-contiguous arrays of one float dtype.
    """
def gemm_blocking(dtype: typing.Any = None) -> dict:
    """
    The active GEMM's register tile and cache blocking for float32 (or dtype): a dict of mr, nr (the tile), kc (K slice), mc (rows of op(A) per packed block), nc (columns of op(B) per packed slice).
    """
def gemm_reference(a: typing.Any, b: typing.Any, c: typing.Any = None, trans_a: bool = False, trans_b: bool = False, alpha: typing.SupportsFloat | typing.SupportsIndex = 1.0, beta: typing.SupportsFloat | typing.SupportsIndex = 0.0, bias: typing.Any = None, relu: bool = False) -> numpy.ndarray:
    """
    The scalar reference GEMM (same arguments as gemm).
    """
def gemm_tile() -> tuple[int, int]:
    """
    The (MR, NR) register tile of the active float32 GEMM micro-kernel.
    """
def get_isa() -> str:
    """
    The instruction set the kernels currently use.
    """
def get_num_threads() -> int:
    """
    The number of threads the core uses: set_num_threads's, until then OMP_NUM_THREADS, else the processors this process may run on (1 without OpenMP).
    """
def profile_enable(on: bool = True) -> None:
    """
    Turns the per-op profiler on or off (off by default). Enabled, every instrumented op call of the models and the training step adds its wall time to a named counter.
    """
def profile_enabled() -> bool:
    """
    Whether the profiler is on.
    """
def profile_report() -> list:
    """
    The profiler counters called since the last reset, as dicts {name, seconds, calls, flops} (flops 0 where a scope does not count them), in order of first use. rmt.profile() is the convenient way to use them.
    """
def profile_reset() -> None:
    """
    Zeroes every profiler counter.
    """
def set_isa(name: str) -> None:
    """
    Force an instruction set ('avx512', 'avx2', 'scalar' or 'best').
    """
def set_num_threads(n: typing.SupportsInt | typing.SupportsIndex) -> None:
    """
    Number of OpenMP threads the core uses (a build without OpenMP always uses 1). rmt's own setting: PyTorch's torch.set_num_threads does not change it, nor it PyTorch's, although in one process the two share one OpenMP runtime.
    """
def validate_config(config: dict) -> None:
    """
    Raises ValueError naming the first bad field or combination of a model config dict.
    """
has_openmp: bool = True
