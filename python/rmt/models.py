"""The model kinds as Python classes over the C++ core (docs/MODELS.md is their exact semantics).

    model = rmt.RMT(rmt.ModelConfig(vocab_size=12, d_model=128, n_layers=4, n_heads=4, d_ff=256,
                                    segment_len=24, num_mem_tokens=24))
    loss, _ = model.loss_and_grad(tokens, targets)      # gradients land in model.grads()
    logits = model(tokens)                               # forward only
    state = model.init_memory(batch_size=1)              # memory (and cache) for streaming
    logits, state = model.step(segment, state)

Parameters and gradients live in two flat C++ buffers; `parameters()` and `grads()` are named
numpy views of them (no copies): writing into a view changes the model.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Dict, Iterable, Iterator, Optional, Tuple, Union

import numpy as np

from . import _core
from .config import ModelConfig

ConfigLike = Union[ModelConfig, dict, None]


class MemoryState:
    """What one segment hands the next at inference: the RMT memory (batch, M, C) and the
    Transformer-XL cache. Its tensors are numpy views of the C++ state (no copies). It does not
    grow with the number of segments run through it."""

    def __init__(self, core_state, model: "Model"):
        self._state = core_state
        self._model = model

    @property
    def memory(self) -> Optional[np.ndarray]:
        """The memory (batch, M, C) as a view, or None for kinds without recurrent memory."""
        return self._state.memory

    @property
    def batch_size(self) -> int:
        return self._state.batch

    @property
    def cache_len(self) -> int:
        """Rows in each layer's Transformer-XL cache (0 without a cache)."""
        return self._state.cache_len

    @property
    def segments_seen(self) -> int:
        return self._state.segments_seen

    def copy(self) -> "MemoryState":
        """An independent copy (used by generation to look ahead without committing)."""
        return MemoryState(self._state.copy(), self._model)

    def attention(self, layer: int) -> np.ndarray:
        """The attention probabilities of ``layer`` in the last segment run through this state:
        a new array (batch, heads, query rows, key rows). The query rows are those of
        ``model.segment_rows()`` (RMT: read memory, tokens, write memory); the key rows are the
        Transformer-XL cache rows (``cache_len`` before the segment ran) followed by the query
        rows. rmt_encoder: only the samples with content in that segment."""
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}")
        return self._model._core.attention(self._state, int(layer))

    def __repr__(self):
        return (f"MemoryState(batch_size={self.batch_size}, segments_seen={self.segments_seen}, "
                f"cache_len={self.cache_len}, memory={None if self.memory is None else self.memory.shape})")


class Model:
    """Base class of the model kinds. Construct a subclass: Transformer, MemoryTransformer,
    TransformerXL, RMT (or RMTEncoder)."""

    kind: str = ""

    def __init__(self, config: ConfigLike = None, *, seed: int = 0, **overrides):
        if config is None:
            config = ModelConfig(kind=self.kind, **overrides)
        else:
            if isinstance(config, dict):
                config = ModelConfig.from_dict({**config, **overrides, "kind": self.kind})
            elif isinstance(config, ModelConfig):
                config = dataclasses.replace(config, kind=self.kind, **overrides)
            else:
                raise TypeError(f"config must be a ModelConfig or a dict, got {type(config).__name__}")
        self.config: ModelConfig = config
        self._core = _core.Model(config.to_dict(), int(seed))
        self._core.training = True

    # ---- parameters ----
    @property
    def num_parameters(self) -> int:
        return self._core.num_parameters

    def parameters(self) -> Dict[str, np.ndarray]:
        """Named parameters as numpy views into the flat buffer (PyTorch-style dotted names)."""
        return self._core.parameters()

    def named_parameters(self) -> Iterator[Tuple[str, np.ndarray]]:
        return iter(self._core.parameters().items())

    def grads(self) -> Dict[str, np.ndarray]:
        """Named gradients, views into the flat gradient buffer (same layout as parameters)."""
        return self._core.grads()

    @property
    def flat_parameters(self) -> np.ndarray:
        return self._core.flat_parameters

    @property
    def flat_grads(self) -> np.ndarray:
        return self._core.flat_grads

    def zero_grad(self) -> None:
        self._core.zero_grad()

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter, in buffer order."""
        return OrderedDict((k, v.copy()) for k, v in self._core.parameters().items())

    def load_state_dict(self, state_dict: Dict[str, np.ndarray], strict: bool = True) -> None:
        """Copies tensors into the model. strict: the names must match exactly. Shapes always must;
        a mismatch raises ValueError listing what differs, before anything is written."""
        params = self._core.parameters()
        missing = [k for k in params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in params]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        for k, v in state_dict.items():
            if k in params:
                arr = np.asarray(v)
                if arr.shape != params[k].shape:
                    problems.append(f"{k}: shape {arr.shape} in the state dict, {params[k].shape} in the model")
                elif not np.issubdtype(arr.dtype, np.floating):
                    problems.append(f"{k}: dtype {arr.dtype} is not floating point")
                elif not np.all(np.isfinite(arr)):
                    problems.append(f"{k}: contains NaN or inf")
        if problems:
            raise ValueError("state dict does not match the model: " + "; ".join(problems))
        for k, v in state_dict.items():
            if k in params:
                params[k][...] = np.asarray(v, dtype=np.float32)

    # ---- modes ----
    @property
    def training(self) -> bool:
        return self._core.training

    def train(self, mode: bool = True) -> "Model":
        """Training mode: dropout on (with the model's dropout seed)."""
        self._core.training = bool(mode)
        return self

    def eval(self) -> "Model":
        """Evaluation mode: no dropout; Transformer-XL's same_length applies."""
        return self.train(False)

    def set_dropout_seed(self, seed: int) -> None:
        self._core.set_dropout_seed(int(seed))

    # ---- whole sequences ----
    def loss_and_grad(self, tokens, targets, loss_mask=None, bptt_depth: Optional[int] = None,
                      return_logits: bool = False, init_memory=None):
        """One forward and backward over a batch of whole sequences (batch, S * segment_len).

        The loss is the mean cross-entropy over the selected tokens (target != -100 and a non-zero
        loss_mask, weighted by it) of the whole unroll. Gradients ACCUMULATE into grads() (call
        zero_grad() first). Returns (loss, logits or None); with init_memory (RMT), also its gradient.
        """
        loss, logits, init_grad = self._core.loss_and_grad(
            tokens, targets, loss_mask=loss_mask, bptt_depth=bptt_depth,
            return_logits=return_logits, init_memory=init_memory)
        if init_memory is not None:
            return loss, logits, init_grad
        return loss, logits

    def forward(self, tokens, targets=None, loss_mask=None):
        """Forward only over whole sequences: logits (batch, L, vocab), or (loss, logits) when
        targets are given. Uses the current mode (call eval() to turn dropout off)."""
        loss, logits, _ = self._core.forward(tokens, targets=targets, loss_mask=loss_mask)
        return logits if targets is None else (loss, logits)

    __call__ = forward

    # ---- one segment at a time ----
    def init_memory(self, batch_size: int = 1) -> MemoryState:
        """A fresh memory state: the initial memory (RMT) and empty caches (Transformer-XL)."""
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return MemoryState(self._core.init_stream(int(batch_size)), self)

    def step(self, segment, memory: Optional[MemoryState] = None):
        """Runs one segment (batch, segment_len) without gradient from `memory` and returns
        (logits (batch, segment_len, vocab), memory). The state is advanced in place."""
        segment = np.asarray(segment)
        if segment.ndim == 1:
            segment = segment[None, :]
        if memory is None:
            memory = self.init_memory(segment.shape[0])
        if not isinstance(memory, MemoryState) or memory._model is not self:
            raise TypeError("memory must be a MemoryState made by this model's init_memory()")
        logits = self._core.step(memory._state, segment)
        return logits, memory

    def segment_rows(self) -> Dict[str, slice]:
        """The rows of one segment inside the layers, by role, as slices of the query rows:
        "read" / "tokens" / "write" for RMT ([read memory][segment][write memory]), "memory" /
        "tokens" for MemTr, "cls" / "memory" / "sep" / "tokens" / "end" for the RMT encoder,
        "tokens" for the others."""
        c = self.config
        M, T = c.num_mem_tokens, c.segment_len
        if self.kind == "rmt":
            return {"read": slice(0, M), "tokens": slice(M, M + T),
                    "write": slice(M + T, 2 * M + T)}
        if self.kind == "memtr":
            return {"memory": slice(0, M), "tokens": slice(M, M + T)}
        if self.kind == "rmt_encoder":
            return {"cls": slice(0, 1), "memory": slice(1, M + 1), "sep": slice(M + 1, M + 2),
                    "tokens": slice(M + 2, M + 2 + T), "end": slice(M + 2 + T, M + 3 + T)}
        return {"tokens": slice(0, T)}

    def stream(self, segments: Iterable, memory: Optional[MemoryState] = None,
               return_memory: bool = False) -> Iterator[np.ndarray]:
        """Runs the model over an input of any length, given as an iterable of segments
        (batch, segment_len) or of rmt.segments(...) items (their .tokens), in constant memory;
        yields each segment's logits (or (logits, memory) with return_memory)."""
        for segment in segments:
            if isinstance(segment, _core.Segment):
                segment = segment.tokens
            logits, memory = self.step(segment, memory)
            yield (logits, memory) if return_memory else logits

    def generate(self, prompt, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: Optional[int] = None, greedy: bool = False, seed: Optional[int] = None,
                 memory: Optional[MemoryState] = None, pad_id: int = 0) -> np.ndarray:
        """Continues `prompt` (batch, P) or (P,) by `max_new_tokens` tokens, carrying the memory
        and cache across segments: full segments are committed to the memory as they fill up;
        the next token of a partial segment is read from a look-ahead copy of the state with the
        segment padded by `pad_id` (the causal mask keeps the padding invisible to it).
        greedy (or temperature 0): argmax; otherwise sampling at `temperature`, from the `top_k`
        most likely tokens if given. Returns (batch, P + max_new_tokens) token ids."""
        if self.kind == "rmt_encoder":
            raise TypeError("generate() is for the decoder kinds; the encoder classifies")
        prompt = np.asarray(prompt)
        squeeze = prompt.ndim == 1
        if squeeze:
            prompt = prompt[None, :]
        if prompt.ndim != 2 or prompt.shape[1] < 1 or prompt.shape[0] < 1:
            raise ValueError(f"prompt must have shape (batch, length >= 1), got {prompt.shape}")
        if not np.issubdtype(prompt.dtype, np.integer):
            raise TypeError(f"prompt must hold integer token ids, got dtype {prompt.dtype}")
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
            raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
        if not (temperature >= 0 and np.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        V, T = self.config.vocab_size, self.config.segment_len
        if not 0 <= pad_id < V:
            raise ValueError(f"pad_id must be in [0, {V}), got {pad_id}")
        rng = np.random.default_rng(seed)
        B = prompt.shape[0]
        was_training = self.training
        self.eval()
        try:
            state = memory if memory is not None else self.init_memory(B)
            out = [prompt.astype(np.int64)]
            full = (prompt.shape[1] // T) * T
            last_logits = None
            for s in range(0, full, T):
                logits, state = self.step(prompt[:, s:s + T], state)
                last_logits = logits[:, -1]
            pending = prompt[:, full:].astype(np.int64)
            for _ in range(int(max_new_tokens)):
                r = pending.shape[1]
                if r > 0:
                    seg = np.full((B, T), pad_id, np.int64)
                    seg[:, :r] = pending
                    logits, _ = self.step(seg, state.copy())
                    next_logits = logits[:, r - 1]
                else:
                    next_logits = last_logits
                token = _sample(next_logits, temperature, top_k, greedy, rng)
                out.append(token[:, None])
                pending = np.concatenate([pending, token[:, None]], axis=1)
                if pending.shape[1] == T:
                    logits, state = self.step(pending, state)
                    last_logits = logits[:, -1]
                    pending = pending[:, :0]
        finally:
            self.train(was_training)
        result = np.concatenate(out, axis=1)
        return result[0] if squeeze else result

    # ---- checkpoints ----
    def save(self, path, metadata: Optional[Dict[str, str]] = None) -> None:
        """Writes a safetensors file with the config in its metadata. Atomic: a killed save
        never destroys an existing file at `path`."""
        from .checkpoint import save_model

        save_model(self, path, metadata)

    def load_weights(self, path) -> None:
        """Loads a checkpoint's weights into this model; its config must match."""
        from .checkpoint import load_into

        load_into(self, path)

    def __repr__(self):
        c = self.config
        return (f"{type(self).__name__}(vocab_size={c.vocab_size}, d_model={c.d_model}, "
                f"n_layers={c.n_layers}, n_heads={c.n_heads}, segment_len={c.segment_len}, "
                f"num_mem_tokens={c.num_mem_tokens}, mem_len={c.mem_len}, "
                f"parameters={self.num_parameters:,})")


class Transformer(Model):
    """The baseline: segments processed independently (relative positions, no cache)."""
    kind = "transformer"


class MemoryTransformer(Model):
    """MemTr: learned memory tokens prepended to every segment, no recurrence."""
    kind = "memtr"


class TransformerXL(Model):
    """Transformer-XL: a per-layer cache of mem_len hidden states, gradient stopped."""
    kind = "txl"


class RMT(Model):
    """The Recurrent Memory Transformer (decoder): [mem_read; x; mem_write], the write block's
    outputs become the next segment's memory, with gradient (bptt_depth). With mem_len > 0 it
    also keeps a Transformer-XL cache (Tr-XL+RMT)."""
    kind = "rmt"


class RMTEncoder(Model):
    """The RMT encoder of the 1M-token report: each segment is [CLS][mem][SEP] x [SEP],
    bidirectional, learned absolute positions; a classification head reads the CLS output of the
    last segment. Inputs are right-aligned: pad_id fills the front of shorter samples (see
    rmt.right_align), so every sample ends on the last segment."""
    kind = "rmt_encoder"

    def loss_and_grad(self, tokens, labels, bptt_depth: Optional[int] = None,
                      return_logits: bool = False):
        """One forward and backward over right-aligned sequences (batch, S * segment_len) with
        labels (batch,). Gradients accumulate into grads(). Returns (loss, logits or None)."""
        return self._core.classify_loss_and_grad(tokens, labels, bptt_depth=bptt_depth,
                                                 return_logits=return_logits)

    def forward(self, tokens, labels=None):
        """Class logits (batch, num_classes) of the last segment, or (loss, logits) with labels."""
        if labels is None:
            return self._core.classify(tokens)
        return self._classify_eval(tokens, labels)

    def _classify_eval(self, tokens, labels):
        """(mean cross-entropy, logits) without touching the gradients."""
        logits = self._core.classify(tokens)
        labels = np.asarray(labels)
        z = logits.astype(np.float64)
        z = z - z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        if labels.shape != (logits.shape[0],):
            raise ValueError(f"labels must have shape ({logits.shape[0]},), got {labels.shape}")
        if labels.min() < 0 or labels.max() >= logits.shape[1]:
            raise IndexError(f"labels must be in [0, {logits.shape[1]})")
        return float(-logp[np.arange(len(labels)), labels].mean()), logits

    __call__ = forward
    classify = forward

    def generate(self, *args, **kwargs):
        raise TypeError("generate() is for the decoder kinds; the encoder classifies")


def right_align(samples, segment_len: int, pad_id: int = 0, num_segments: Optional[int] = None) -> np.ndarray:
    """Right-aligns token sequences of different lengths into (batch, S * segment_len): each
    sample ends on the last segment, shorter ones get leading pad_id (and so leading empty
    segments). S = the longest sample's segment count, or num_segments."""
    samples = [np.asarray(s) for s in samples]
    if not samples:
        raise ValueError("samples is empty")
    if any(s.ndim != 1 or s.size == 0 for s in samples):
        raise ValueError("every sample must be a non-empty 1-D sequence of token ids")
    need = max(-(-s.size // segment_len) for s in samples)
    S = need if num_segments is None else num_segments
    if S < need:
        raise ValueError(f"a sample needs {need} segments, more than num_segments = {S}")
    out = np.full((len(samples), S * segment_len), pad_id, np.int64)
    for i, s in enumerate(samples):
        out[i, out.shape[1] - s.size:] = s
    return out


MODEL_CLASSES = {cls.kind: cls for cls in (Transformer, MemoryTransformer, TransformerXL, RMT,
                                           RMTEncoder)}


def from_config(config: Union[ModelConfig, dict], seed: int = 0) -> Model:
    """The model class for config.kind, built from the config."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    if config.kind is None:
        raise ValueError("config.kind is None: pick a model class (rmt.RMT(config), ...) or set kind")
    return MODEL_CLASSES[config.kind](config, seed=seed)


def _sample(logits: np.ndarray, temperature: float, top_k: Optional[int], greedy: bool,
            rng: np.random.Generator) -> np.ndarray:
    """One token per row of logits (B, V)."""
    if greedy or temperature == 0:
        return logits.argmax(-1).astype(np.int64)
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    z -= z.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p], dtype=np.int64)
