"""Model configuration: plain data that round-trips through JSON (docs/MODELS.md)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional

KINDS = ("transformer", "memtr", "txl", "rmt", "rmt_encoder")


@dataclass
class ModelConfig:
    """Sizes and options of a model. Validated on construction; see docs/MODELS.md."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    segment_len: int
    kind: Optional[str] = None   # None: set by the model class (rmt.RMT(cfg) makes it "rmt")
    d_head: Optional[int] = None
    num_mem_tokens: int = 0
    mem_len: int = 0
    clamp_len: int = -1
    same_length: bool = False
    untie_rel_bias: bool = False
    dropout: float = 0.1
    dropatt: float = 0.0
    mem_init: str = "randn"
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    # rmt_encoder only (the decoders ignore them): classes of the head and the special token ids.
    num_classes: int = 0
    cls_id: int = 1
    sep_id: int = 2
    pad_id: int = 0

    def __post_init__(self):
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS} or None, got {self.kind!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "Optional[int]") and value is not None:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(f"{f.name} must be an int, got {type(value).__name__}")
            if f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise TypeError(f"{f.name} must be a number, got {type(value).__name__}")
            if f.type == "bool" and not isinstance(value, bool):
                raise TypeError(f"{f.name} must be a bool, got {type(value).__name__}")
        # The C++ core owns the rules (heads dividing C, M = 0 for RMT, negative lengths, ...):
        # one place, the same errors from Python and from a checkpoint.
        from . import _core

        d = self.to_dict()
        if d["kind"] is None:
            # No kind yet: check everything but the kind's own rules, as the kind the sizes imply.
            d["kind"] = "rmt" if self.num_mem_tokens > 0 else ("txl" if self.mem_len > 0 else "transformer")
        _core.validate_config(d)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["d_head"] is None:
            d["d_head"] = 0
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config field(s): {', '.join(unknown)}")
        d = dict(d)
        if d.get("d_head") == 0:
            d["d_head"] = None
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"model config is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError("model config JSON must be an object")
        return cls.from_dict(d)
