"""Checkpoints in the safetensors format, with the model config (and, for training checkpoints,
the trainer state) in the file's metadata. Every write goes to a temporary file in the same folder
and is moved over the target only once complete, so a killed save never destroys the previous file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

FORMAT = "rmt"
FORMAT_VERSION = "1"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    """write(tmp) into a temporary file next to ``path``, then moved over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file 0600 (and a writer may recreate it): the result gets the
        # permissions of an ordinary new file.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_tensors(path, tensors: Dict[str, np.ndarray], metadata: Dict[str, str]) -> None:
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **metadata}
    _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_tensors(path) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """All tensors and the metadata of an rmt checkpoint; ValueError if it is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path} is not a readable safetensors checkpoint (corrupt or truncated?): {e}") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is a safetensors file but not an rmt checkpoint (no 'format: rmt' metadata)")
    if "config" not in metadata:
        raise ValueError(f"{path} has no model config in its metadata")
    return tensors, metadata


def save_model(model, path, metadata: Optional[Dict[str, str]] = None) -> None:
    meta = {"config": model.config.to_json()}
    if metadata:
        meta.update({str(k): str(v) for k, v in metadata.items()})
    save_tensors(path, dict(model.parameters()), meta)


def _config_of(metadata, path):
    from .config import ModelConfig

    try:
        return ModelConfig.from_json(metadata["config"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: the model config in the checkpoint is invalid: {e}") from None


def load(path, seed: int = 0):
    """The model saved at `path`, of the class its config names."""
    from .models import from_config

    tensors, metadata = read_tensors(path)
    config = _config_of(metadata, path)
    model = from_config(config, seed=seed)
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("trainer.")})
    return model


def load_into(model, path) -> None:
    tensors, metadata = read_tensors(path)
    config = _config_of(metadata, path)
    mine, theirs = model.config.to_dict(), config.to_dict()
    # Sizes must agree; options that do not change the weights (dropout, ...) may differ.
    shape_fields = ["kind", "vocab_size", "d_model", "n_layers", "n_heads", "d_head", "d_ff",
                    "num_mem_tokens", "untie_rel_bias"]
    diff = [f"{k}: {theirs[k]!r} in the checkpoint, {mine[k]!r} in the model"
            for k in shape_fields if mine[k] != theirs[k]]
    if diff:
        raise ValueError(f"checkpoint {path} does not match this model: " + "; ".join(diff))
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("trainer.")})
