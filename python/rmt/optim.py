"""Optimizers and learning-rate schedules. The update itself runs in C++ (rmt._core.TrainerCore);
these classes only carry settings, with torch.optim's names and defaults."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple


def _check_common(lr, betas, eps, weight_decay):
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")


@dataclass
class Adam:
    """torch.optim.Adam: weight decay as an L2 term added to the gradient."""
    lr: float = 1e-3
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled = False

    def __post_init__(self):
        _check_common(self.lr, self.betas, self.eps, self.weight_decay)


@dataclass
class AdamW:
    """torch.optim.AdamW: decoupled weight decay (param *= 1 - lr * weight_decay)."""
    lr: float = 1e-3
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    decoupled = True

    def __post_init__(self):
        _check_common(self.lr, self.betas, self.eps, self.weight_decay)


class Schedule:
    """A learning-rate multiplier as a function of the step (0-based) and the planned total."""

    def factor(self, step: int, total_steps: int) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _warmup(step, warmup_steps):
    return (step + 1) / warmup_steps if warmup_steps > 0 and step < warmup_steps else 1.0


@dataclass
class Constant(Schedule):
    warmup_steps: int = 0

    def factor(self, step, total_steps):
        return _warmup(step, self.warmup_steps)


@dataclass
class Linear(Schedule):
    """Linear warmup, then linear decay to 0 at total_steps (transformers' linear schedule)."""
    warmup_steps: int = 0

    def factor(self, step, total_steps):
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return _warmup(step, self.warmup_steps)
        span = max(1, total_steps - self.warmup_steps)
        return max(0.0, (total_steps - step) / span)


@dataclass
class Cosine(Schedule):
    """Linear warmup, then cosine decay to min_factor at total_steps."""
    warmup_steps: int = 0
    min_factor: float = 0.0

    def factor(self, step, total_steps):
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return _warmup(step, self.warmup_steps)
        span = max(1, total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class ReduceOnPlateau(Schedule):
    """Multiplies the rate by `factor` when the evaluation loss has not improved by more than
    `threshold` (relative) for `patience` evaluations (torch's ReduceLROnPlateau, mode 'min')."""
    reduce_by: float = 0.5
    patience: int = 3
    threshold: float = 1e-4
    min_factor: float = 1e-3
    warmup_steps: int = 0
    current: float = 1.0
    best: Optional[float] = None
    bad_evals: int = 0

    def factor(self, step, total_steps):
        return _warmup(step, self.warmup_steps) * self.current

    def observe(self, metric: float) -> None:
        if self.best is None or metric < self.best * (1 - self.threshold):
            self.best, self.bad_evals = metric, 0
            return
        self.bad_evals += 1
        if self.bad_evals > self.patience:
            self.current = max(self.min_factor, self.current * self.reduce_by)
            self.bad_evals = 0

    def state_dict(self):
        return {"current": self.current, "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state):
        self.current, self.best, self.bad_evals = state["current"], state["best"], state["bad_evals"]


def make_schedule(schedule, warmup_steps: int = 0) -> Schedule:
    if isinstance(schedule, Schedule):
        return schedule
    table = {"constant": Constant, "linear": Linear, "cosine": Cosine, "plateau": ReduceOnPlateau}
    if schedule not in table:
        raise ValueError(f"schedule must be one of {sorted(table)} or a Schedule, got {schedule!r}")
    return table[schedule](warmup_steps=warmup_steps)
