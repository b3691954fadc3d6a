"""Training: the Python side feeds data, schedules the learning rate, evaluates, logs and writes
checkpoints; each step's forward, backward, clipping and update run in C++ with the GIL released
(rmt._core.TrainerCore).

    trainer = rmt.Trainer(model, rmt.AdamW(lr=1e-4, weight_decay=0.01), bptt_depth=None,
                          clip_norm=0.25)
    history = trainer.fit(train_data, steps=5000, eval_data=val_data, progress=True)

Data: a batch is a dict with "tokens", "targets" and optionally "loss_mask" (numpy arrays of shape
(batch, S * segment_len)), or a tuple in that order. `train_data` is either a callable
`train_data(step) -> batch` (then a resumed run sees exactly the batches it would have seen) or an
iterable of batches (re-iterated when exhausted; on resume the batches already used are skipped).
`eval_data` is a batch, a list of batches, or a callable returning an iterable of batches.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from . import _core
from .checkpoint import read_tensors, save_tensors
from .models import Model
from .optim import Adam, AdamW, ReduceOnPlateau, Schedule, make_schedule


def as_batch(batch) -> Dict[str, Any]:
    """A batch as a dict {tokens, targets, loss_mask (or None)}, or {tokens, labels} for the
    encoder; TypeError for anything else."""
    if isinstance(batch, dict) and "labels" in batch:
        unknown = set(batch) - {"tokens", "labels"}
        if unknown or "tokens" not in batch:
            raise TypeError("a classification batch is a dict {tokens, labels}")
        return {"tokens": batch["tokens"], "labels": batch["labels"]}
    if isinstance(batch, dict):
        if "tokens" not in batch or "targets" not in batch:
            raise TypeError("a batch dict needs 'tokens' and 'targets'")
        unknown = set(batch) - {"tokens", "targets", "loss_mask"}
        if unknown:
            raise TypeError(f"unknown batch field(s): {', '.join(sorted(unknown))}")
        return {"tokens": batch["tokens"], "targets": batch["targets"],
                "loss_mask": batch.get("loss_mask")}
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        return {"tokens": batch[0], "targets": batch[1],
                "loss_mask": batch[2] if len(batch) == 3 else None}
    raise TypeError("a batch must be a dict {tokens, targets[, loss_mask]} or a tuple "
                    f"(tokens, targets[, loss_mask]); got {type(batch).__name__}")


def _mask_array(mask):
    return None if mask is None else np.ascontiguousarray(mask, dtype=np.float32)


def evaluate(model: Model, data) -> Dict[str, float]:
    """Token-weighted loss and per-token accuracy (argmax == target over the selected tokens) of
    `model` on `data` (a batch, a list of batches, or a callable returning an iterable), in eval
    mode (the model's previous mode is restored). Also ``sequence_accuracy``: the fraction of
    samples (rows with a selected token) whose every selected token is right, i.e. exact-match
    answers (for a classifier, the accuracy)."""
    batches = _eval_batches(data)
    was_training = model.training
    model.eval()
    loss_sum = weight_sum = correct = count = 0.0
    rows_correct = rows = 0
    try:
        for raw in batches:
            b = as_batch(raw)
            if "labels" in b:
                loss, logits = model.forward(b["tokens"], b["labels"])
                n = len(b["labels"])
                loss_sum += loss * n
                weight_sum += n
                right = int((logits.argmax(-1) == np.asarray(b["labels"])).sum())
                correct += right
                count += n
                rows_correct += right
                rows += n
                continue
            mask = _mask_array(b["loss_mask"])
            loss, logits = model.forward(b["tokens"], b["targets"], mask)
            targets = np.asarray(b["targets"])
            selected = targets != -100
            weights = np.ones(targets.shape, np.float64) if mask is None else mask.astype(np.float64)
            selected &= weights != 0
            n = int(selected.sum())
            if n == 0:
                continue
            loss_sum += float(loss) * n
            weight_sum += n
            right = logits.argmax(-1) == targets
            correct += float(right[selected].sum())
            count += n
            has_selected = selected.any(axis=-1)
            rows_correct += int(((right | ~selected).all(axis=-1) & has_selected).sum())
            rows += int(has_selected.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluation data has no selected tokens (all targets are -100 or masked)")
    return {"loss": loss_sum / weight_sum, "accuracy": correct / count, "tokens": int(count),
            "sequence_accuracy": rows_correct / rows, "sequences": rows}


def _eval_batches(data):
    if callable(data):
        return list(data())
    if isinstance(data, (dict, tuple)):
        return [data]
    return list(data)


@dataclass
class Stage:
    """One stage of a curriculum: train on `train_data` until `target_accuracy` on `eval_data` (or
    `patience` evaluations without improvement, or `max_steps`)."""
    train_data: Any
    eval_data: Any
    max_steps: int
    target_accuracy: Optional[float] = None
    patience: Optional[int] = None
    name: str = ""


class Trainer:
    """Trains a model. Every step: forward + backward over the batch (in `accumulate` row chunks),
    clipping by norm and/or value, and an Adam/AdamW update, in C++."""

    def __init__(self, model: Model, optimizer: Union[Adam, AdamW, None] = None, *,
                 bptt_depth: Optional[int] = None, clip_norm: Optional[float] = None,
                 clip_value: Optional[float] = None, schedule: Union[str, Schedule] = "constant",
                 warmup_steps: int = 0, accumulate: int = 1, seed: int = 0):
        if not isinstance(model, Model):
            raise TypeError(f"model must be an rmt model, got {type(model).__name__}")
        self.model = model
        self.optimizer = optimizer if optimizer is not None else AdamW()
        if not isinstance(self.optimizer, (Adam, AdamW)):
            raise TypeError("optimizer must be rmt.Adam or rmt.AdamW")
        if bptt_depth is not None and (not isinstance(bptt_depth, int) or bptt_depth < 0):
            raise ValueError(f"bptt_depth must be None (full) or an int >= 0, got {bptt_depth!r}")
        for name, v in (("clip_norm", clip_norm), ("clip_value", clip_value)):
            if v is not None and not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be None or a finite number > 0, got {v!r}")
        if not isinstance(accumulate, int) or accumulate < 1:
            raise ValueError(f"accumulate must be an int >= 1, got {accumulate!r}")
        self.schedule = make_schedule(schedule, warmup_steps)
        self.accumulate = accumulate
        self.bptt_depth = bptt_depth
        self.seed = int(seed)
        opt = self.optimizer
        self._core = _core.TrainerCore(
            model._core, adamw=opt.decoupled, beta1=opt.betas[0], beta2=opt.betas[1], eps=opt.eps,
            weight_decay=opt.weight_decay, clip_norm=clip_norm or 0.0,
            clip_value=clip_value or 0.0, bptt_depth=bptt_depth)
        self.history: List[Dict[str, Any]] = []
        self.best_metric: Optional[float] = None
        self.total_steps = 0

    @property
    def step_count(self) -> int:
        """Optimizer steps taken so far (survives save/resume)."""
        return self._core.steps_taken

    def lr_at(self, step: int) -> float:
        return self.optimizer.lr * self.schedule.factor(step, max(self.total_steps, step + 1))

    def step(self, batch) -> Dict[str, float]:
        """One optimizer step on `batch`; returns {loss, grad_norm, lr, tokens}. Raises
        FloatingPointError (and leaves the parameters untouched) if the loss or a gradient is
        NaN or infinite."""
        b = as_batch(batch)
        step = self.step_count
        lr = self.lr_at(step)
        self.model.train()
        # Dropout masks are a function of (seed, step): a resumed run replays them exactly.
        self.model.set_dropout_seed(self.seed * 1_000_003 + step)
        accumulate = min(self.accumulate, np.asarray(b["tokens"]).shape[0]) if np.ndim(b["tokens"]) == 2 else 1
        if "labels" in b:
            out = self._core.step_classify(b["tokens"], b["labels"], lr=lr, accumulate=accumulate)
        else:
            out = self._core.step(b["tokens"], b["targets"], _mask_array(b["loss_mask"]), lr=lr,
                                  accumulate=accumulate)
        if not out["finite"]:
            raise FloatingPointError(f"step {step}: the loss or a gradient is not finite "
                                     f"(loss {out['loss']}, grad norm {out['grad_norm']}); "
                                     "parameters left unchanged")
        return {"step": step + 1, "loss": out["loss"], "grad_norm": out["grad_norm"], "lr": lr,
                "tokens": out["tokens"]}

    # ---- checkpoints ----
    def save_checkpoint(self, path) -> None:
        """Model weights, optimizer moments, step, schedule and history in one safetensors file
        (atomic write)."""
        tensors = dict(self.model.parameters())
        tensors["trainer.exp_avg"] = self._core.exp_avg
        tensors["trainer.exp_avg_sq"] = self._core.exp_avg_sq
        state = {"step": self.step_count, "schedule": self.schedule.state_dict(),
                 "best_metric": self.best_metric, "history": self.history, "seed": self.seed}
        save_tensors(path, tensors, {"config": self.model.config.to_json(),
                                     "trainer": json.dumps(state)})

    def load_checkpoint(self, path) -> None:
        """Restores what save_checkpoint wrote; the model's config must match the checkpoint's."""
        tensors, metadata = read_tensors(path)
        if "trainer" not in metadata:
            raise ValueError(f"{path} is a model checkpoint without trainer state")
        from .checkpoint import load_into

        load_into(self.model, path)
        for name, buf in (("trainer.exp_avg", self._core.exp_avg),
                          ("trainer.exp_avg_sq", self._core.exp_avg_sq)):
            if name not in tensors or tensors[name].shape != buf.shape:
                raise ValueError(f"{path}: optimizer state {name} is missing or has the wrong size")
            buf[...] = tensors[name]
        state = json.loads(metadata["trainer"])
        self._core.steps_taken = int(state["step"])
        self.schedule.load_state_dict(state["schedule"])
        self.best_metric = state["best_metric"]
        self.history = state["history"]

    # ---- the loop ----
    def fit(self, train_data, steps: int, eval_data=None, *, eval_every: Optional[int] = None,
            progress: bool = False, log_file=None, checkpoint_dir=None,
            checkpoint_every: Optional[int] = None, resume: bool = False,
            target_accuracy: Optional[float] = None, patience: Optional[int] = None,
            callback: Optional[Callable[[Dict[str, Any]], None]] = None) -> List[Dict[str, Any]]:
        """Trains until `steps` optimizer steps have been taken in total (so a resumed run
        continues the same curve). Evaluates every `eval_every` steps (default: 10 times per run)
        and stops early once eval accuracy >= `target_accuracy` or after `patience` evaluations
        without improvement of the eval loss. Metrics go to `log_file` (.jsonl or .csv);
        `checkpoint_dir` receives last.safetensors every `checkpoint_every` steps and
        best.safetensors at each best evaluation. Returns the history (one record per step or
        evaluation)."""
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if eval_every is None:
            eval_every = max(1, steps // 10)
        ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if resume:
            if ckpt_dir is None:
                raise ValueError("resume=True needs checkpoint_dir")
            last = ckpt_dir / "last.safetensors"
            if last.exists():
                self.load_checkpoint(last)
        self.total_steps = steps
        data_iter = None if callable(train_data) else _cycle(train_data, skip=self.step_count)
        logger = _MetricsLog(log_file, append=resume and self.step_count > 0) if log_file else None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, initial=self.step_count, desc="train", leave=True)
        bad_evals = 0
        started = time.perf_counter()
        try:
            while self.step_count < steps:
                batch = train_data(self.step_count) if data_iter is None else next(data_iter)
                rec = self.step(batch)
                rec["time"] = time.perf_counter() - started
                self.history.append(rec)
                if logger:
                    logger.write(rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}")
                if callback:
                    callback(rec)
                done = self.step_count >= steps
                stop = False
                if eval_data is not None and (self.step_count % eval_every == 0 or done):
                    metrics = evaluate(self.model, eval_data)
                    erec = {"step": self.step_count, "eval_loss": metrics["loss"],
                            "eval_accuracy": metrics["accuracy"]}
                    self.history.append(erec)
                    if logger:
                        logger.write(erec)
                    if callback:
                        callback(erec)
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", eval_acc=f"{metrics['accuracy']:.3f}")
                    if isinstance(self.schedule, ReduceOnPlateau):
                        self.schedule.observe(metrics["loss"])
                    if self.best_metric is None or metrics["loss"] < self.best_metric:
                        self.best_metric = metrics["loss"]
                        bad_evals = 0
                        if ckpt_dir is not None:
                            self.save_checkpoint(ckpt_dir / "best.safetensors")
                    else:
                        bad_evals += 1
                    if target_accuracy is not None and metrics["accuracy"] >= target_accuracy:
                        stop = True
                    if patience is not None and bad_evals >= patience:
                        stop = True
                if ckpt_dir is not None and (stop or done or (
                        checkpoint_every and self.step_count % checkpoint_every == 0)):
                    self.save_checkpoint(ckpt_dir / "last.safetensors")
                if stop:
                    break
        finally:
            if bar is not None:
                bar.close()
            if logger:
                logger.close()
        return self.history

    def fit_curriculum(self, stages: Sequence[Stage], checkpoint_dir, **fit_kwargs) -> List[Dict[str, Any]]:
        """Runs the stages in order; each trains until convergence (its target accuracy or
        patience) and the next starts from the best checkpoint of the previous one. Returns one
        summary per stage (name, steps, best eval loss, final eval metrics)."""
        root = Path(checkpoint_dir)
        summaries = []
        for i, stage in enumerate(stages):
            stage_dir = root / f"stage{i:02d}"
            self.best_metric = None
            start = self.step_count
            self.fit(stage.train_data, start + stage.max_steps, stage.eval_data,
                     checkpoint_dir=stage_dir, target_accuracy=stage.target_accuracy,
                     patience=stage.patience, **fit_kwargs)
            best = stage_dir / "best.safetensors"
            if best.exists():
                self.model.load_weights(best)
            metrics = evaluate(self.model, stage.eval_data)
            summaries.append({"stage": stage.name or str(i), "steps": self.step_count - start,
                              "eval_loss": metrics["loss"], "eval_accuracy": metrics["accuracy"]})
        return summaries


def _cycle(iterable, skip=0):
    if iter(iterable) is iterable:   # a one-shot iterator: cannot restart
        it = iterable
        for _ in range(skip):
            next(it)
        yield from it
        raise ValueError("train_data ran out of batches; pass a re-iterable or a callable(step)")
    seen = 0
    while True:
        empty = True
        for batch in iterable:
            empty = False
            if seen < skip:
                seen += 1
                continue
            yield batch
        if empty:
            raise ValueError("train_data is empty")


class _MetricsLog:
    """Writes one record per line: JSONL for *.jsonl/*.json, CSV for *.csv."""

    def __init__(self, path, append=False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        suffix = self.path.suffix.lower()
        if suffix not in (".jsonl", ".json", ".csv"):
            raise ValueError(f"log_file must end in .jsonl or .csv, got {self.path.name}")
        self.csv = suffix == ".csv"
        self.file = open(self.path, "a" if append else "w", newline="")
        self.fields = ["step", "loss", "grad_norm", "lr", "tokens", "time", "eval_loss", "eval_accuracy"]
        if self.csv:
            self.writer = csv.DictWriter(self.file, fieldnames=self.fields)
            if not append:
                self.writer.writeheader()

    def write(self, rec):
        if self.csv:
            self.writer.writerow({k: rec.get(k, "") for k in self.fields})
        else:
            self.file.write(json.dumps(rec) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()
