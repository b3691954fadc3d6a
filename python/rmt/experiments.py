"""Experiment runner for the RMT paper's algorithmic tasks (P1, SPEC sections 4-5).

    from rmt import experiments
    experiments.run_grid("p1-copy", "results/p1")              # or a list of run specs
    results = experiments.load_results("results/p1")

    python -m rmt.experiments p1-copy --out results/p1 [--quick]

A run spec is a plain dict (see `make_spec`): the task (`task`, `task_args`, `num_segments`), the
model (`kind`, `memory`, `model` sizes), the training (`optimizer`, `bptt_depth`, `steps`,
`batch_size`, `eval_every`, ...) and the `seed`. Each run writes ONE file `<out>/<run_id>.json`
(run_id: a readable slug of the spec) holding the spec, the final metrics (validation and test
accuracy and loss of the checkpoint with the best validation loss, and of the last step), the
training curve, the wall time, steps/s (optimizer steps per second of the training loop,
evaluations and checkpoints included), the engine's git commit (or the package version) and the
date; the file is written atomically (temporary file + os.replace). A run whose results file
exists is skipped, so a grid can be restarted (an existing file of a different spec with the
same run_id is an error, never silently taken for the run); a run killed midway resumes from the checkpoint
in `<out>/_checkpoints/<run_id>/` (removed once the results are written): from its last
checkpoint in the run proper, or, killed during its curriculum, at the stage it was in (the
model is saved after every stage, so a 17-stage curriculum of an hour loses at most one stage).
Checkpoints left by another spec with the same run_id are an error too (the spec is recorded
beside them).
With a `log` (the CLI prints it) a curriculum run reports each stage as it finishes.

Memory conventions (SPEC section 4: memory size = segment length): RMT and MemTr get
num_mem_tokens = segment length, Transformer-XL mem_len = segment length, the baseline neither.

Named grids (each over Baseline `transformer`, MemTr `memtr`, Transformer-XL `txl`, RMT `rmt`):
- "p1-copy": copy-24 in 1 / 3 / 6 / 9 segments (segments of 72 / 24 / 12 / 8 tokens);
- "p1-reverse": reverse-24 in 1 / 2 / 4 / 6 segments (48 / 24 / 12 / 8);
- "p1-retrieval": associative retrieval, 4 pairs, in 1 .. 5 segments (10 / 5 / 4 / 3 / 2).
- "p1-lm-long": four cells of "p1-lm" (RMT [10] at BPTT depth 2 and 0, Tr-XL [10], Baseline)
  trained for 4000 steps instead of 1000 (see `p1_lm_long`).
- "p1-copy120": copy-120 in 3 / 6 / 9 segments with the paper's fixed memory (P1 Figure 4),
  Baseline, Tr-XL and RMT, at a smaller budget (see `p1_copy120`).
- "p1-quadratic": quadratic equations (P1 appendix A.3), Baseline in 1 segment, Tr-XL and RMT in
  6 segments with memory 30 (see `p1_quadratic`); results also carry whole-solution accuracy.
- "p1-lm": byte-level language modelling on the default corpus (`rmt.tasks.LanguageModelTask`),
  the shape of P1 Tables 2 and 4: Baseline, Tr-XL with two caches, RMT with memory
  5 / 10 / 20 and BPTT depth 0 .. 3, Tr-XL+RMT (kind "txl_rmt", with a `cache` as well as a
  `memory`); see `p1_lm`. Results carry bits per byte (`val_bpc`, `test_bpc`); `lm_table`
  summarises them.

Scale. The paper's models are kept (copy / reverse: 4 layers, 4 heads, C = 128, hs = 64, F = 256,
dropout 0.1, batch 32; retrieval: 6 layers, 4 heads, hs = 32, C = 64, F = 128, batch 32: the
sizes of LM-RMT's result tables), but the paper trains for 400k-1M steps at Adam lr 1e-4 on a
GPU, which this 2-core CPU cannot do for 52 runs. We train for `FULL_STEPS` steps per run (2000
for copy / reverse, 10000 for retrieval, whose steps are 4-10 times cheaper), so we raise the
learning rate to 1e-3 with a linear warmup and a cosine decay (Adam, clip 0.25 as in the paper), evaluate
every steps/10 steps on 500 validation samples, stop a run early once its validation accuracy
reaches 1.0, and report the checkpoint with the best validation loss on 1000 test samples (all
disjoint from training). Measured on this machine (1 thread, loaded): 0.3-0.65 s per step for
copy / reverse, 0.03-0.12 s for retrieval, so a run takes 10-20 minutes and the three grids
(52 runs) most of a day. Retrieval is not learnt at this budget, by any kind: the 1-segment
baseline ends its 10000 steps at 0.25 test accuracy (it answers one of the 4 values in its input,
validation loss about ln 4), and so did probes at lr 3e-4, batch 128, dropout 0 (3000 steps). It is
the paper's architecture, not our engine: a 2-layer (C = 64) version of the model written in
PyTorch (tests/torch_reference.py: Transformer-XL relative attention, post-norm), trained by
torch autograd on the same batches (batch 128, lr 1e-3), was still at loss 1.51 after 800 steps,
while torch's nn.TransformerEncoder with learned absolute positions (2 layers pre- or post-norm,
6 layers pre-norm) reached 0.98-1.0 validation accuracy within 500 steps. A 40000-step run,
stopped at 32000, did not get past the plateau either (validation loss 1.39-1.44 at every
evaluation). Probes with fewer pairs (`task_args={"pairs": p}`, one seed each) point at the
number of pairs: with 2 pairs the copy model (4 layers, C = 128) reached 0.978 test accuracy and
a 2-layer, dropout-free version of the retrieval model 0.997 within 3000 steps, while the paper's
6-layer model stayed on the ln 2 plateau (0.52 after 5000 steps); with 4 pairs all three stayed
on the ln 4 one (6000 steps). A curriculum on the number of pairs did not help: the 2-layer
model's 2-pair stage, in a 10-token segment and with another seed, stayed on its plateau for
4000 steps. One seed per cell (the paper: 1-8 seeds),
but two for RMT +cur at copy-24 in 3 and 6 segments and reverse-24 in 4 (`--seeds`).
Short training is the main expected difference: cells where the paper's models needed long
training (Transformer-XL at many segments, RMT at 9 segments, retrieval) may come out lower here.

`quick=True` shrinks every run to seconds (2 layers, 2 heads, C = 32, F = 64, 40 steps, batch 8,
small evaluation sets, one thread) for CI; a quick run has its own run_id (prefixed "quick").

Threads: on this shared 2-core machine two OpenMP threads can be far slower than one when the
other core is busy (a tiny model measured 1.2 s per step on 2 threads, 0.02 s on 1), so quick
grids run on one thread unless `threads` says otherwise; full grids use `threads` if given.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from .checkpoint import _atomic_write

KINDS = ("transformer", "memtr", "txl", "rmt")
#: Tr-XL+RMT (P1 A.5): the RMT decoder with a Transformer-XL cache of ``cache`` rows as well. Only
#: the language-modelling grid has it, so it is not in KINDS (the algorithmic grids' kinds).
ALL_KINDS = KINDS + ("txl_rmt",)
KIND_LABELS = {"transformer": "Baseline", "memtr": "MemTr", "txl": "Tr-XL", "rmt": "RMT",
               "txl_rmt": "Tr-XL+RMT"}

#: The paper's models (SPEC section 4).
PAPER_MODELS = {
    "copy": {"n_layers": 4, "n_heads": 4, "d_model": 128, "d_head": 64, "d_ff": 256, "dropout": 0.1},
    "reverse": {"n_layers": 4, "n_heads": 4, "d_model": 128, "d_head": 64, "d_ff": 256, "dropout": 0.1},
    "retrieval": {"n_layers": 6, "n_heads": 4, "d_model": 64, "d_head": 32, "d_ff": 128, "dropout": 0.1},
    # LM-RMT's run_sqeq*.sh: 1,877,016 parameters (1,880,856 with RMT's 30 memory tokens)
    "quadratic": {"n_layers": 6, "n_heads": 6, "d_model": 128, "d_head": 64, "d_ff": 256, "dropout": 0.1},
    # Not the paper's (enwik8: 12 layers, C = 512, F = 2048): a byte-level LM small enough for
    # a dozen runs on one core of this machine (see p1_lm).
    "lm": {"n_layers": 3, "n_heads": 4, "d_model": 128, "d_head": 32, "d_ff": 512, "dropout": 0.0},
}
#: Training steps per run of the full grids (the paper: 400k-900k; see the module docstring).
FULL_STEPS = {"copy": 2000, "reverse": 2000, "retrieval": 10000, "lm": 1000, "quadratic": 600}

DEFAULT_OPTIMIZER = {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999],
                     "clip_norm": 0.25, "schedule": "cosine", "warmup_steps": 100}

QUICK_OVERRIDES = {
    "model": {"n_layers": 2, "n_heads": 2, "d_model": 32, "d_head": None, "d_ff": 64, "dropout": 0.0},
    "steps": 40, "batch_size": 8, "eval_every": 20, "n_val": 64, "n_test": 64,
    "checkpoint_every": 20, "target_accuracy": None,
}


# A length curriculum (off unless a spec asks for it): before the run proper, the model trains on
# the shorter copies / reversals that fill 1, 2, ... of its segments, each stage until its own
# validation accuracy reaches target_accuracy or max_steps pass. A curriculum dict may also hold
# "stages": "padded" or "fine" (see curriculum_stages); without it the stages are "exact" (files
# written before the option have no such key, and mean "exact").
CURRICULUM_DEFAULTS = {"max_steps": 500, "target_accuracy": 0.99, "n_val": 200, "eval_every": 50}
CURRICULUM_STAGE_RULES = ("exact", "padded", "fine")

# ---- specs ----

def _task_class(name: str):
    from .tasks import TASKS

    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]


def make_task(spec: Dict[str, Any]):
    """The task object of a spec (its seed is the spec's seed)."""
    return _task_class(spec["task"])(num_segments=spec["num_segments"], seed=spec["seed"],
                                     **spec.get("task_args", {}))


def make_spec(task: str, num_segments: int, kind: str, *, task_args: Optional[Dict] = None,
              memory: Optional[int] = None, model: Optional[Dict] = None,
              optimizer: Optional[Dict] = None, bptt_depth: Optional[int] = None,
              steps: Optional[int] = None, batch_size: int = 32, eval_every: Optional[int] = None,
              n_val: int = 500, n_test: int = 1000, seed: int = 0,
              checkpoint_every: Optional[int] = None, target_accuracy: Optional[float] = 1.0,
              curriculum: Optional[Dict[str, Any]] = None, cache: Optional[int] = None,
              quick: bool = False) -> Dict[str, Any]:
    """A complete run spec with the defaults filled in. memory None = the convention (segment
    length for memtr / txl / rmt / txl_rmt, 0 for the baseline). ``cache``: the Transformer-XL
    cache of a txl_rmt run (None: the segment length; other kinds have none). ``curriculum``: None, or a dict of
    CURRICULUM_DEFAULTS overrides ({} for the defaults) to train first on the shorter versions of
    the task (see ``curriculum_stages``)."""
    spec = {
        "task": task, "task_args": dict(task_args or {}), "num_segments": num_segments, "kind": kind,
        "memory": memory, "model": {**PAPER_MODELS.get(task, PAPER_MODELS["copy"]), **(model or {})},
        "optimizer": {**DEFAULT_OPTIMIZER, **(optimizer or {})}, "bptt_depth": bptt_depth,
        "steps": steps if steps is not None else FULL_STEPS.get(task, 3000),
        "batch_size": batch_size, "eval_every": eval_every, "n_val": n_val, "n_test": n_test,
        "seed": seed, "checkpoint_every": checkpoint_every, "target_accuracy": target_accuracy,
        "curriculum": curriculum,   # normalize_spec checks it and fills in the defaults
        "quick": quick,
    }
    if kind == "txl_rmt":
        spec["cache"] = cache
    elif cache is not None:
        raise ValueError(f"only txl_rmt runs have a cache (memory is {kind}'s size), got cache={cache}")
    return normalize_spec(spec)


def normalize_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Checks a spec and resolves its defaults (memory, eval_every, checkpoint_every); returns a
    new dict."""
    s = copy.deepcopy(spec)
    required = ("task", "num_segments", "kind", "model", "optimizer", "steps", "batch_size", "seed")
    missing = [k for k in required if k not in s]
    if missing:
        raise ValueError(f"run spec is missing {', '.join(missing)} (build specs with make_spec)")
    if s["kind"] not in ALL_KINDS:
        raise ValueError(f"kind must be one of {ALL_KINDS}, got {s['kind']!r}")
    s.setdefault("task_args", {})
    s.setdefault("bptt_depth", None)
    s.setdefault("n_val", 500)
    s.setdefault("n_test", 1000)
    s.setdefault("target_accuracy", None)
    s.setdefault("quick", False)
    s.setdefault("curriculum", None)
    if s["curriculum"] is not None:
        if not isinstance(s["curriculum"], dict):
            raise ValueError(f"curriculum must be None or a dict of CURRICULUM_DEFAULTS "
                             f"overrides ({{}} for the defaults), got {s['curriculum']!r}")
        s["curriculum"] = {**CURRICULUM_DEFAULTS, **s["curriculum"]}
        rule = s["curriculum"].get("stages", "exact")
        if rule not in CURRICULUM_STAGE_RULES:
            raise ValueError(f"curriculum stages must be one of {CURRICULUM_STAGE_RULES}, "
                             f"got {rule!r}")
        if rule == "exact":   # the default is not written out, so old and new specs compare equal
            s["curriculum"] = {k: v for k, v in s["curriculum"].items() if k != "stages"}
    task = make_task(s)
    if s["kind"] == "transformer":
        if s.get("memory"):
            raise ValueError("the baseline (transformer) has no memory: memory must be 0 or None")
        s["memory"] = 0
    elif s.get("memory") is None:
        s["memory"] = task.segment_len
    if s["kind"] == "txl_rmt":
        if s.get("cache") is None:
            s["cache"] = task.segment_len
        if not isinstance(s["cache"], int) or isinstance(s["cache"], bool) or s["cache"] < 1:
            raise ValueError(f"cache must be an int >= 1, got {s['cache']!r}")
    elif "cache" in s:
        raise ValueError(f"only txl_rmt runs have a cache, not {s['kind']}")
    if s.get("eval_every") is None:
        s["eval_every"] = max(1, s["steps"] // 10)
    if s.get("checkpoint_every") is None:
        s["checkpoint_every"] = s["eval_every"]
    return s


def quick_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The tiny CI version of a spec (seconds per run)."""
    s = copy.deepcopy(spec)
    for k, v in QUICK_OVERRIDES.items():
        s[k] = copy.deepcopy(v)
    s["optimizer"] = {**s["optimizer"], "lr": 3e-3, "warmup_steps": 5}
    if s.get("curriculum") is not None:
        s["curriculum"] = {**s["curriculum"], "max_steps": 10, "n_val": 32, "eval_every": 5}
    s["quick"] = True
    return normalize_spec(s)


def _fmt(x) -> str:
    return ("%g" % x).replace(".", "p").replace("-", "m") if isinstance(x, float) else str(x)


def _path_slug(x: str) -> str:
    # A path (the lm task's corpus) names the run by its file name and a short hash of the whole
    # path (two corpora of the same name in different folders are different runs); the run id is
    # a file name.
    digest = hashlib.sha1(x.encode("utf-8")).hexdigest()[:6]
    return "_" + re.sub(r"[^A-Za-z0-9_.]+", "_", Path(x).name) + "." + digest


def run_id(spec: Dict[str, Any]) -> str:
    """A readable slug naming everything that distinguishes runs, e.g.
    copy24-s3-rmt-m24-L4-d128-bpttfull-adam-lr0p001-b32-st3000-seed0."""
    s = normalize_spec(spec)
    ta = s["task_args"]
    size = "".join(_fmt(ta[k]) for k in sorted(ta) if not isinstance(ta[k], str)) \
        + "".join(_path_slug(ta[k]) for k in sorted(ta) if isinstance(ta[k], str))
    m, o = s["model"], s["optimizer"]
    memory = f"m{s['memory']}" + (f"c{s['cache']}" if s["kind"] == "txl_rmt" else "")
    parts = [f"{s['task']}{size}", f"s{s['num_segments']}", s["kind"], memory,
             f"L{m['n_layers']}", f"d{m['d_model']}",
             f"bptt{'full' if s['bptt_depth'] is None else s['bptt_depth']}",
             f"{o['name']}", f"lr{_fmt(float(o['lr']))}", f"b{s['batch_size']}", f"st{s['steps']}",
             f"seed{s['seed']}"]
    if s["curriculum"] is not None:   # a stage budget other than the default is a different run
        parts.insert(-1, _curriculum_tag(s))
    if s["quick"]:
        parts.insert(0, "quick")
    return "-".join(parts)


# ---- one run ----

def engine_version() -> Dict[str, Any]:
    """The engine's git commit (`git rev-parse HEAD` in the package's folder, if it is in a git
    checkout) or else the package version, plus the ISA and thread count in use."""
    import rmt

    info: Dict[str, Any] = {"version": rmt.__version__, "commit": None, "dirty": None,
                            "isa": rmt.get_isa(), "threads": rmt.get_num_threads()}
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0:
            info["commit"] = out.stdout.strip()
            st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=10)
            info["dirty"] = bool(st.stdout.strip()) if st.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _write_json_atomic(path: Path, obj) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)

    _atomic_write(Path(path), write)


def _chunks(batch: Dict[str, np.ndarray], size: int) -> List[Dict[str, np.ndarray]]:
    n = batch["tokens"].shape[0]
    return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, n, size)]


def curriculum_stages(spec: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The stages before the run proper of a spec with a curriculum, shortest first, as
    [{"task_args", "num_segments"}], for copy-L / reverse-L in S segments of T tokens (other
    tasks: none). The vocabulary stays the run's, and every stage has segments of the same T.

    - "exact" stages (the default): the lengths L' < L whose model input fills exactly k < S
      segments (copy: 3 L' = k T; reverse: 2 L' = k T). When T is not a multiple of 3 (copy) or
      2 (reverse) only some k qualify: copy-24 in 9 segments of 8 gets copy-8 in 3 and copy-16
      in 6, and nothing shorter.
    - "padded" stages: for every k < S, the longest L' whose input fits in k segments
      (3 L' <= k T), left-padded to k T like any sample (SPEC section 1); copy-24 in 9 segments
      gets copy-2 in 1, copy-5 in 2, copy-8 in 3, ... copy-21 in 8. Where T is a multiple of 3
      (2 for reverse) the two rules give the same stages.
    - "fine" stages: the padded ones and, before each of them and before the run proper, the
      length halfway from the previous one, in as many segments as it needs (left-padded):
      copy-24 in 6 segments of 12 gets copy-2 in 1, copy-4 in 1, copy-6 in 2, copy-8 in 2, ...
      copy-20 in 5, copy-22 in 6. Each stage adds half as many symbols to remember."""
    s = normalize_spec(spec)
    if s["curriculum"] is None or s["task"] not in ("copy", "reverse"):
        return []
    rule = s["curriculum"].get("stages", "exact")
    padded = rule in ("padded", "fine")
    task = make_task(s)
    per_symbol = 3 if s["task"] == "copy" else 2   # model input tokens per input symbol
    T, L = task.segment_len, task.length
    stages = []
    for k in range(1, s["num_segments"]):
        length = k * T // per_symbol
        # "exact" wants no padding; either way a stage must still need all k segments
        if (padded or (k * T) % per_symbol == 0) and (k - 1) * T < per_symbol * length \
                and 0 < length < L:
            args = {**s["task_args"], "length": length, "vocab_size": task.vocab_size}
            if padded:
                args["segment_len"] = T
            stages.append({"task_args": args, "num_segments": k})
    if rule == "fine":   # the padded stages, each after the length halfway from the one before
        whole = [st["task_args"]["length"] for st in stages] + [L]
        halfway = [(prev + cur) // 2 for prev, cur in zip([0] + whole, whole)]
        lengths = sorted({x for x in whole[:-1] + halfway if 0 < x < L})
        # each in the fewest segments that hold its input, left-padded like any sample
        stages = [{"task_args": {**s["task_args"], "length": x, "vocab_size": task.vocab_size,
                                 "segment_len": T},
                   "num_segments": -(-(per_symbol * x) // T)} for x in lengths]
    return stages


#: The model after the last finished curriculum stage, with the stages' summary in its metadata:
#: one file, so that the weights and the record of how far they got are written (atomically)
#: together, and a run killed midway through a long curriculum resumes at the stage it was in.
CURRICULUM_CHECKPOINT = "curriculum_stage.safetensors"


def _stage_name(s: Dict[str, Any], st: Dict[str, Any]) -> str:
    n = st["num_segments"]
    return f"{s['task']}-{st['task_args']['length']} in {n} segment{'s' if n != 1 else ''}"


def _run_curriculum(s: Dict[str, Any], model, segment_len: int, callback=None,
                    ckpt_dir: Optional[Path] = None,
                    log: Optional[Callable[[str], None]] = None) -> tuple:
    """Trains `model` through the curriculum stages of spec `s` and returns their summary and
    how many of them were restored from a checkpoint rather than trained here. With
    `ckpt_dir`, the model is saved there after every stage (CURRICULUM_CHECKPOINT), and a
    checkpoint found there is loaded and its stages skipped: a stage killed midway starts again
    from the weights the stage before it left, which gives the same stage as an uninterrupted
    run (each stage has a fresh optimizer, its own seed, and dropout masks that depend on the
    seed and step only)."""
    from .checkpoint import read_tensors
    from .trainer import evaluate

    c = s["curriculum"]
    stages = curriculum_stages(s)
    summary: List[Dict] = []
    stage_file = None if ckpt_dir is None else Path(ckpt_dir) / CURRICULUM_CHECKPOINT
    if stage_file is not None and stage_file.exists():
        _, metadata = read_tensors(stage_file)
        try:
            summary = json.loads(metadata["curriculum"])
            done = [{"task_args": st["task_args"], "num_segments": st["num_segments"]}
                    for st in summary]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{stage_file} is not a curriculum checkpoint of this runner "
                             f"(no readable 'curriculum' metadata); remove it to restart the "
                             f"curriculum") from e
        if json.loads(json.dumps(done)) != json.loads(json.dumps(stages[:len(done)])):
            raise ValueError(f"{stage_file} holds other curriculum stages than this run's; "
                             f"remove it to restart the curriculum")
        model.load_weights(stage_file)
        if log:
            log(f"  curriculum: resuming after stage {len(summary)}/{len(stages)}")
    restored = len(summary)
    for i in range(restored, len(stages)):
        st = stages[i]
        stage_spec = {**s, "task_args": st["task_args"], "num_segments": st["num_segments"]}
        task = make_task(stage_spec)
        if task.segment_len != segment_len:
            raise AssertionError(f"curriculum stage {st} has segments of {task.segment_len}, "
                                 f"not {segment_len}")
        # a short stage can have few distinct inputs (copy-2 over 10 symbols: 100): hold out at
        # most a quarter of them for validation (and as many for the unused test split)
        n_val = min(int(c["n_val"]), task.num_inputs // 4)
        # (with fewer than 4 inputs, hold out one for validation and none for test)
        held_out = task.split(n_val, n_val) if n_val >= 1 else task.split(1, 0)
        val = _chunks(held_out["val"], EVAL_BATCH)
        trainer = _build_trainer({**s, "seed": s["seed"] + 1000 * (i + 1)}, model)
        t0 = time.perf_counter()
        stage_callback = None if callback is None else \
            (lambda rec, i=i: callback({**rec, "curriculum_stage": i}))
        trainer.fit(task.train_batches(s["batch_size"]), steps=int(c["max_steps"]), eval_data=val,
                    eval_every=int(c["eval_every"]), target_accuracy=c["target_accuracy"],
                    callback=stage_callback)
        summary.append({**st, "steps": trainer.step_count,
                        "val_accuracy": evaluate(model, val)["accuracy"],
                        "wall_time": time.perf_counter() - t0})
        if stage_file is not None:
            model.save(stage_file, {"curriculum": json.dumps(summary)})
        if log:
            log(f"  curriculum stage {i + 1}/{len(stages)}, {_stage_name(s, st)}: "
                f"{summary[-1]['steps']} steps, val acc {summary[-1]['val_accuracy']:.3f}, "
                f"{summary[-1]['wall_time']:.0f} s")
    return summary, restored


def model_path(out_dir, rid: str) -> Path:
    """Where run_one(save_model=True) writes the model of run ``rid``."""
    return Path(out_dir) / "models" / f"{rid}.safetensors"


def build_model(spec: Dict[str, Any], task=None):
    """The model of a (normalized) spec, initialised with the spec's seed."""
    import rmt

    s = normalize_spec(spec)
    task = task if task is not None else make_task(s)
    m = s["model"]
    cfg = dict(vocab_size=task.vocab_size, d_model=m["d_model"], n_layers=m["n_layers"],
               n_heads=m["n_heads"], d_ff=m["d_ff"], d_head=m.get("d_head"),
               segment_len=task.segment_len, dropout=float(m.get("dropout", 0.1)))
    if s["kind"] in ("memtr", "rmt", "txl_rmt"):
        cfg["num_mem_tokens"] = s["memory"]
    if s["kind"] == "txl":
        cfg["mem_len"] = s["memory"]
    if s["kind"] == "txl_rmt":
        cfg["mem_len"] = s["cache"]
    classes = {"transformer": rmt.Transformer, "memtr": rmt.MemoryTransformer,
               "txl": rmt.TransformerXL, "rmt": rmt.RMT, "txl_rmt": rmt.RMT}
    return classes[s["kind"]](rmt.ModelConfig(**cfg), seed=s["seed"])


def _build_trainer(spec, model):
    import rmt

    o = spec["optimizer"]
    cls = {"adam": rmt.Adam, "adamw": rmt.AdamW}[o["name"]]
    opt = cls(lr=float(o["lr"]), betas=tuple(o.get("betas", (0.9, 0.999))),
              weight_decay=float(o.get("weight_decay", 0.0)))
    return rmt.Trainer(model, opt, bptt_depth=spec["bptt_depth"], clip_norm=o.get("clip_norm"),
                       schedule=o.get("schedule", "constant"),
                       warmup_steps=int(o.get("warmup_steps", 0)), seed=spec["seed"])


EVAL_BATCH = 250


def _spec_differences(recorded: Dict[str, Any], s: Dict[str, Any]) -> List[str]:
    """The top-level keys in which a spec recorded on disk differs from the normalized spec
    `s` (none: the same run). The record is normalized first: one written before a spec key
    existed lacks it."""
    try:
        recorded = normalize_spec(recorded)
    except (KeyError, TypeError, ValueError):
        pass   # not a spec this version can normalize: compared as it is, so it differs
    recorded, s = json.loads(json.dumps(recorded)), json.loads(json.dumps(s))
    return sorted(k for k in set(recorded) | set(s) if recorded.get(k) != s.get(k))


def _claim_checkpoints(ckpt_dir: Path, s: Dict[str, Any]) -> None:
    """Records the spec beside a run's checkpoints, or checks the one recorded there. The run_id
    that names the folder leaves out parts of the spec (dropout, the schedule, the curriculum's
    evaluation settings, ...), and a checkpoint loads into any model of the same shapes, so
    without this check a killed run of another spec with the same run_id would be resumed
    silently. A folder without the record (written before it existed) is taken as it is."""
    record = ckpt_dir / "spec.json"
    if record.exists():
        try:
            recorded = json.loads(record.read_text())
        except ValueError as e:
            raise ValueError(f"{record} is not readable JSON; remove {ckpt_dir} to restart "
                             f"the run") from e
        diff = _spec_differences(recorded if isinstance(recorded, dict) else {}, s)
        if diff:
            raise ValueError(f"{ckpt_dir} holds checkpoints of a different spec with the same "
                             f"run_id (differs in: {', '.join(diff)}); remove it to start this "
                             f"run afresh")
    else:
        _write_json_atomic(record, s)


def run_one(spec: Dict[str, Any], out_dir, *, callback: Optional[Callable] = None,
            progress: bool = False, keep_checkpoints: bool = False,
            save_model: bool = False,
            log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Trains and evaluates one run and writes <out_dir>/<run_id>.json (returned as a dict).
    Resumes from <out_dir>/_checkpoints/<run_id>/ if a previous attempt was killed. `callback`
    is passed to Trainer.fit (called with every history record; during a curriculum the
    records carry "curriculum_stage"). ``save_model``: also write the reported model (the best
    checkpoint's weights) to <out_dir>/models/<run_id>.safetensors, e.g. for attention maps.
    ``log``: called with a line per finished curriculum stage (and on resuming after one)."""
    from .trainer import evaluate

    s = normalize_spec(spec)
    rid = run_id(s)
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "_checkpoints" / rid
    started_wall = time.time()
    t0 = time.perf_counter()
    task = make_task(s)
    splits = task.split(s["n_val"], s["n_test"])
    val = _chunks(splits["val"], EVAL_BATCH)
    test = _chunks(splits["test"], EVAL_BATCH)
    model = build_model(s, task)
    trainer = _build_trainer(s, model)
    _claim_checkpoints(ckpt_dir, s)
    resumed_from = 0
    last = ckpt_dir / "last.safetensors"
    curriculum_file = ckpt_dir / "curriculum.json"
    curriculum = None
    restored_stages = 0
    if last.exists():
        trainer.load_checkpoint(last)   # the weights after the curriculum, and further
        resumed_from = trainer.step_count
        if curriculum_file.exists():
            curriculum = json.loads(curriculum_file.read_text())
            restored_stages = len(curriculum)
    elif s["curriculum"] is not None:
        curriculum, restored_stages = _run_curriculum(s, model, task.segment_len,
                                                      callback=callback, ckpt_dir=ckpt_dir,
                                                      log=log)
        _write_json_atomic(curriculum_file, curriculum)
    t_train = time.perf_counter()
    trainer.fit(task.train_batches(s["batch_size"]), steps=s["steps"], eval_data=val,
                eval_every=s["eval_every"], checkpoint_dir=ckpt_dir,
                checkpoint_every=s["checkpoint_every"], resume=True,
                target_accuracy=s["target_accuracy"], callback=callback, progress=progress)
    train_time = time.perf_counter() - t_train
    steps_taken = trainer.step_count
    history = trainer.history

    last_val = evaluate(model, val)
    last_test = evaluate(model, test)
    best = ckpt_dir / "best.safetensors"
    best_step = steps_taken
    if best.exists():
        model.load_weights(best)
        evals = [r for r in history if "eval_loss" in r]
        if evals:
            best_step = min(evals, key=lambda r: r["eval_loss"])["step"]
    best_val = evaluate(model, val)
    best_test = evaluate(model, test)

    train_curve = [{"step": r["step"], "loss": r["loss"]} for r in history if "loss" in r]
    eval_curve = [{"step": r["step"], "eval_loss": r["eval_loss"],
                   "eval_accuracy": r["eval_accuracy"]} for r in history if "eval_loss" in r]
    result = {
        "run_id": rid,
        "spec": s,
        "label": KIND_LABELS[s["kind"]],
        "segment_len": task.segment_len,
        "vocab_size": task.vocab_size,
        "num_parameters": model.num_parameters,
        "metrics": {
            "val_accuracy": best_val["accuracy"], "val_loss": best_val["loss"],
            "test_accuracy": best_test["accuracy"], "test_loss": best_test["loss"],
            "best_step": best_step,
            "last_val_accuracy": last_val["accuracy"], "last_val_loss": last_val["loss"],
            "last_test_accuracy": last_test["accuracy"], "last_test_loss": last_test["loss"],
            # exact-match answers (rmt.trainer.evaluate): the quadratic task's whole solutions
            "val_sequence_accuracy": best_val["sequence_accuracy"],
            "test_sequence_accuracy": best_test["sequence_accuracy"],
            "last_test_sequence_accuracy": last_test["sequence_accuracy"],
        },
        "curve": {"train": train_curve, "eval": eval_curve},
        "steps_taken": steps_taken,
        "curriculum": curriculum,
        "resumed_from_step": resumed_from,
        # curriculum stages taken from a killed attempt's checkpoint (their wall times are that
        # attempt's, and not in this file's wall_time)
        "resumed_after_stage": restored_stages,
        "wall_time": time.perf_counter() - t0,
        "train_time": train_time,
        "steps_per_second": (steps_taken - resumed_from) / train_time if train_time > 0 else None,
        "engine": engine_version(),
        "date": datetime.datetime.fromtimestamp(started_wall, datetime.timezone.utc).isoformat(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    if s["task"] == "lm":   # bits per byte (the loss is the mean over every target byte)
        from .corpus import bits_per_byte

        for k in ("val", "test", "last_val", "last_test"):
            result["metrics"][f"{k}_bpc"] = bits_per_byte(result["metrics"][f"{k}_loss"])
    if save_model:
        model.save(model_path(out_dir, rid), {"run_id": rid})
        result["model"] = str(Path("models") / f"{rid}.safetensors")
    _write_json_atomic(out_dir / f"{rid}.json", result)
    if not keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        try:
            (out_dir / "_checkpoints").rmdir()   # only if empty
        except OSError:
            pass
    return result


# ---- grids ----

def _grid(task: str, task_args: Dict, segments: Sequence[int]) -> List[Dict[str, Any]]:
    return [make_spec(task, n, kind, task_args=task_args) for n in segments for kind in KINDS]


def p1_copy() -> List[Dict[str, Any]]:
    """copy-24 in 1 / 3 / 6 / 9 segments, every kind."""
    return _grid("copy", {"length": 24}, (1, 3, 6, 9))


def p1_reverse() -> List[Dict[str, Any]]:
    """reverse-24 in 1 / 2 / 4 / 6 segments, every kind."""
    return _grid("reverse", {"length": 24}, (1, 2, 4, 6))


def p1_retrieval() -> List[Dict[str, Any]]:
    """associative retrieval (4 pairs) in 1 .. 5 segments, every kind."""
    return _grid("retrieval", {"pairs": 4}, (1, 2, 3, 4, 5))


#: copy-120 (P1 Figure 4): segments and the paper's memory for each (LM-RMT's
#: long_copy_reverse results: mem_size 60 / 30 / 40 for 3 / 6 / 9 segments of 120 / 60 / 40).
COPY120_MEMORY = {3: 60, 6: 30, 9: 40}
COPY120_STEPS, COPY120_BATCH = 1000, 16


def p1_copy120() -> List[Dict[str, Any]]:
    """copy-120 (V = 10, model input 360 tokens) in 3 / 6 / 9 segments with the paper's fixed
    memory (60 / 30 / 40: the RMT memory tokens and the Tr-XL cache): Baseline, Tr-XL, RMT (the
    kinds of P1 Figure 4). Scaled to this machine: 1000 steps at batch 16 (the paper: 100k-600k
    steps at batch 128-256). In 6 segments, with a second job on the other core, a step of the
    run proper took 4.4 s for RMT, 1.8 s for Tr-XL and 2.3 s for the baseline, evaluations
    included (the wall times in results/p1_copy120/, curriculum stages subtracted)."""
    return [make_spec("copy", n, kind, task_args={"length": 120, "vocab_size": 10},
                      memory=None if kind == "transformer" else COPY120_MEMORY[n],
                      steps=COPY120_STEPS, batch_size=COPY120_BATCH)
            for n in sorted(COPY120_MEMORY) for kind in ("transformer", "txl", "rmt")]


#: quadratic equations (P1 Table 5, LM-RMT's res_square_equations): 6 segments of 30, memory 30
QUADRATIC_SEGMENTS, QUADRATIC_MEMORY = 6, 30


def p1_quadratic() -> List[Dict[str, Any]]:
    """Quadratic equations (`rmt.tasks.QuadraticEquationsTask`: the equation in 30 tokens, the
    step-by-step solution in the next 150) with the paper's model (6 layers, 6 heads of 64,
    C = 128, F = 256): the Baseline in one segment (of 179 tokens: the model input), Tr-XL and
    RMT in 6 segments of 30 with a cache / memory of 30 (the paper's cells). Not part of the
    "p1" grid (copy, reverse, retrieval). Report ``test_sequence_accuracy`` (whole
    solutions right) next to the per-token accuracy. Scaled to this machine: 600 steps at batch
    32 (the paper: up to 600k). With a second job on the other core, a step took 7.0 s for RMT,
    2.5 s for Tr-XL and 2.8 s for the baseline, evaluations included (the train times in
    results/p1_quadratic/): 77, 27 and 30 minutes a run."""
    return [make_spec("quadratic", 1 if kind == "transformer" else QUADRATIC_SEGMENTS, kind,
                      memory=None if kind == "transformer" else QUADRATIC_MEMORY)
            for kind in ("transformer", "txl", "rmt")]


LM_SEGMENT_LEN, LM_SEGMENTS = 64, 4


def p1_lm() -> List[Dict[str, Any]]:
    """Byte-level language modelling on the default corpus (the shape of P1 Tables 2 and 4):
    segments of 64 bytes, windows of 4 segments (the BPTT unroll), 3 layers, C = 128, F = 512,
    batch 16 (4096 bytes a step), 1000 steps; Adam lr 1e-3, cosine, clip 0.25. Baseline; Tr-XL
    with caches of 10, 20, 40, 64 and 128 rows (P1's enwik8 table has 10 to 200); RMT with
    memory 5 / 10 / 20 at BPTT depth 2 and memory 10 at depth 0 / 1 / 3 (3: the last segment's
    loss crosses every boundary of the window, but, by the definition of SPEC section 3, not into
    the initial memory); Tr-XL+RMT [cache 64 + memory 10]. Thirteen runs of 2-19 minutes each
    on one core: 0.5-1.1 s a step for the first ten (RMT the slowest; engines of 2026-12-01, the
    other core busy), 0.12-0.15 s for the Tr-XL caches of 20, 40 and 128 (engine of 2026-12-04,
    the other core partly busy)."""
    def lm(kind, memory=None, bptt=None, cache=None):
        return make_spec("lm", LM_SEGMENTS, kind, task_args={"segment_len": LM_SEGMENT_LEN},
                         memory=memory, bptt_depth=bptt, cache=cache, batch_size=16, n_val=200,
                         n_test=400, target_accuracy=None)
    return ([lm("transformer")]
            + [lm("txl", m) for m in (10, 20, 40, 64, 128)]
            + [lm("rmt", m, 2) for m in (5, 10, 20)]
            + [lm("rmt", 10, d) for d in (0, 1, 3)]
            + [lm("txl_rmt", 10, 2, cache=64)])


LM_LONG_STEPS = 4000


def p1_lm_long() -> List[Dict[str, Any]]:
    """Four cells of `p1_lm` trained four times longer (LM_LONG_STEPS steps, the cosine schedule
    stretched to match): RMT [10] at BPTT depth 2 and 0, Tr-XL [10], Baseline. At 1000 steps a
    cell moves by up to 0.033 bpc from seed to seed and P1's orderings (deeper BPTT helps RMT;
    RMT approaches a Transformer-XL cache) do not show; this asks whether they appear with more
    training. 8-27 minutes a run on one core of the Zen 5 machine (the wall times in
    results/p1_lm_long/)."""
    wanted = [("rmt", 10, 2), ("rmt", 10, 0), ("txl", 10, None), ("transformer", 0, None)]
    by_cell = {(s["kind"], s["memory"], s["bptt_depth"]): s for s in map(normalize_spec, p1_lm())}
    return [with_steps(by_cell[cell], LM_LONG_STEPS) for cell in wanted]


GRIDS: Dict[str, Callable[[], List[Dict[str, Any]]]] = {
    "p1-copy": p1_copy, "p1-reverse": p1_reverse, "p1-retrieval": p1_retrieval, "p1-lm": p1_lm,
    "p1-lm-long": p1_lm_long, "p1-copy120": p1_copy120, "p1-quadratic": p1_quadratic,
}
GRIDS["p1"] = lambda: p1_copy() + p1_reverse() + p1_retrieval()


def select(specs: Sequence[Dict[str, Any]], kinds: Optional[Sequence[str]] = None,
           segments: Optional[Sequence[int]] = None,
           curriculum: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """The specs of the given kinds and numbers of segments (None: all); with ``curriculum`` (a
    dict of CURRICULUM_DEFAULTS overrides, {} for the defaults), the copy and reverse runs of
    more than one segment get that length curriculum."""
    out = []
    for spec in specs:
        if kinds is not None and spec["kind"] not in kinds:
            continue
        if segments is not None and spec["num_segments"] not in segments:
            continue
        spec = copy.deepcopy(spec)
        if curriculum is not None and spec["task"] in ("copy", "reverse") \
                and spec["num_segments"] > 1:
            spec["curriculum"] = curriculum
        out.append(normalize_spec(spec))
    return out


def with_memory(spec: Dict[str, Any], memory: int) -> Dict[str, Any]:
    """The spec with `memory` memory tokens (RMT, MemTr, Tr-XL + RMT) or cached positions
    (Transformer-XL) instead of its grid's: a different run (m<memory> in its run id). The
    baseline has no memory and comes back unchanged."""
    if not isinstance(memory, int) or isinstance(memory, bool) or memory < 1:
        raise ValueError(f"memory must be an int >= 1, got {memory!r}")
    s = normalize_spec(spec)
    if s["kind"] != "transformer":
        s["memory"] = memory
    return normalize_spec(s)


def with_steps(spec: Dict[str, Any], steps: int) -> Dict[str, Any]:
    """The spec trained for `steps` steps instead (a different run: st<steps> in its run id);
    an evaluation and checkpoint interval that was the default (steps / 10) follows the new
    budget."""
    s = normalize_spec(spec)
    default_every = max(1, s["steps"] // 10)
    if s["eval_every"] == default_every:
        s["eval_every"] = None
    if s["checkpoint_every"] == default_every:
        s["checkpoint_every"] = None
    s["steps"] = steps
    return normalize_spec(s)


def get_grid(name: str, quick: bool = False) -> List[Dict[str, Any]]:
    """The named grid's specs (quick: their tiny CI versions)."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; known: {', '.join(sorted(GRIDS))}")
    specs = GRIDS[name]()
    return [quick_spec(s) for s in specs] if quick else specs


def run_grid(grid: Union[str, Sequence[Dict[str, Any]]], out_dir, quick: bool = False, *,
             threads: Optional[int] = None, progress: bool = False,
             log: Optional[Callable[[str], None]] = None,
             callback: Optional[Callable] = None,
             save_models: bool = False) -> List[Dict[str, Any]]:
    """Runs every spec of `grid` (a list of specs or a grid name) not already done in `out_dir`
    and returns the results of all of them (read back for the skipped ones). quick: each spec
    replaced by its tiny CI version. threads: rmt threads during the grid (quick default: 1;
    the previous setting is restored). save_models: see run_one's save_model."""
    import rmt

    if threads is None and quick:
        threads = 1
    previous = rmt.get_num_threads()
    if threads is not None:
        rmt.set_num_threads(int(threads))
    try:
        return _run_grid(grid, out_dir, quick, progress, log, callback, save_models)
    finally:
        rmt.set_num_threads(previous)


def _run_grid(grid, out_dir, quick, progress, log, callback, save_models=False):
    specs = get_grid(grid) if isinstance(grid, str) else [normalize_spec(s) for s in grid]
    if quick:
        specs = [quick_spec(s) for s in specs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = [run_id(s) for s in specs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"the grid has duplicate runs: {', '.join(dupes)}")
    results = []
    for i, (s, rid) in enumerate(zip(specs, ids)):
        path = out_dir / f"{rid}.json"
        if path.exists():
            done = json.loads(path.read_text())
            diff = _spec_differences(done.get("spec") or {}, s)
            if diff:
                raise ValueError(f"{path} holds a run of a different spec with the same run_id "
                                 f"(differs in: {', '.join(diff)}); move it away to rerun")
            if log:
                log(f"[{i + 1}/{len(specs)}] {rid}: done, skipped")
            results.append(done)
            continue
        if log:
            log(f"[{i + 1}/{len(specs)}] {rid}: running")
        r = run_one(s, out_dir, callback=callback, progress=progress, save_model=save_models,
                    log=log)
        if log:
            m = r["metrics"]
            bpc = f" ({m['test_bpc']:.3f} bpc)" if "test_bpc" in m else ""
            if s["task"] == "quadratic":
                bpc = f", {m['test_sequence_accuracy']:.3f} of the solutions whole"
            log(f"[{i + 1}/{len(specs)}] {rid}: test acc {m['test_accuracy']:.3f}{bpc} "
                f"(val {m['val_accuracy']:.3f}), {r['steps_taken']} steps, "
                f"{r['wall_time']:.0f} s, {r['steps_per_second']:.1f} steps/s")
        results.append(r)
    return results


def attention_maps(model, tokens) -> np.ndarray:
    """The attention of every layer in every segment when ``model`` streams ``tokens`` (batch,
    S * segment_len), averaged over the batch and the heads: (S, layers, query rows, key rows),
    rows as in ``model.segment_rows()`` (keys: cache rows first, if any). P1's analysis of the
    memory operations looks at what the write rows and the read rows attend to."""
    tokens = np.asarray(tokens)
    T = model.config.segment_len
    if tokens.ndim != 2 or tokens.shape[1] % T or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be (batch, S * segment_len = S * {T}), got {tokens.shape}")
    was_training = model.training
    model.eval()
    maps = []
    try:
        state = None
        for s in range(tokens.shape[1] // T):
            _, state = model.step(tokens[:, s * T:(s + 1) * T], state)
            maps.append(np.stack([state.attention(layer).mean(axis=(0, 1))
                                  for layer in range(model.config.n_layers)]))
    finally:
        model.train(was_training)
    if len({m.shape for m in maps}) > 1:   # a growing Transformer-XL cache: pad on the left
        K = max(m.shape[-1] for m in maps)
        maps = [np.pad(m, ((0, 0), (0, 0), (K - m.shape[-1], 0))) for m in maps]
    return np.stack(maps)


def load_results(out_dir) -> List[Dict[str, Any]]:
    """Every results file in `out_dir` (sorted by run_id); [] if the folder does not exist."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    results = []
    for p in sorted(out_dir.glob("*.json")):
        r = json.loads(p.read_text())
        if isinstance(r, dict) and "spec" in r and "metrics" in r:
            results.append(r)
    return results


def _curriculum_tag(s: Dict[str, Any]) -> str:
    # "cur" / "curpad" / "curfine", with the stage budget when it is not the default ("cur200")
    c = s["curriculum"]
    tag = {"padded": "curpad", "fine": "curfine"}.get(c.get("stages"), "cur")
    default_steps = 10 if s["quick"] else CURRICULUM_DEFAULTS["max_steps"]
    if int(c["max_steps"]) != default_steps:
        tag += str(int(c["max_steps"]))
    return tag


@functools.lru_cache(maxsize=None)
def _grid_memories() -> Dict[tuple, int]:
    # (task, task length, num_segments, segment length, kind) -> the memory the algorithmic
    # grids give that cell
    out = {}
    for name in ("p1-copy", "p1-reverse", "p1-retrieval", "p1-copy120", "p1-quadratic"):
        for s in GRIDS[name]():
            task = make_task(s)
            length = task.length if s["task"] in ("copy", "reverse") else None
            out[(s["task"], length, s["num_segments"], task.segment_len, s["kind"])] = s["memory"]
    return out


def _default_memory(s: Dict[str, Any], length: Optional[int]) -> int:
    """The memory of a (normalized) spec's cell in its grid; without such a cell, the convention
    (the segment length; the baseline: 0)."""
    T = make_task(s).segment_len
    known = _grid_memories().get((s["task"], length, s["num_segments"], T, s["kind"]))
    if known is not None:
        return known
    return 0 if s["kind"] == "transformer" else T


def summary_table(results: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per (task, task length, num_segments, kind, curriculum): mean test accuracy over
    seeds, number of runs. Rows carry "length" (copy / reverse: the task length, else None),
    "curriculum" (whether the runs had a length curriculum), "stages" (its rule, "exact",
    "padded" or "fine", or None) and "curriculum_tag" (as in the run id: "cur", "curpad",
    "curfine", "cur200", ...;
    None without one). Runs with a curriculum are labelled "<kind> +<tag>". Runs of another
    step budget than their task's default (FULL_STEPS; quick runs: the quick budget) are another
    variant too, not another seed: "steps" is part of the cell and the label says it
    ("RMT +cur1500, 4000 steps"), and so are runs with another memory than their grid's cell
    (--memory: "RMT +cur, memory 6"; "memory" is then 6, else None); "variant" is what the
    label adds to the kind's name
    (" +cur1500, 4000 steps"; None for the default variant). Rows also carry "test_sequence_accuracy", the mean whole-answer accuracy
    (the quadratic task's headline figure; None when a run's file predates it)."""
    cells: Dict[tuple, List[float]] = {}
    whole: Dict[tuple, List[Optional[float]]] = {}
    rules: Dict[tuple, Optional[str]] = {}   # the tag names the rule: one per cell
    for r in results:
        if r["spec"]["task"] == "lm":   # see lm_table
            continue
        s = normalize_spec(r["spec"])
        rule = None if s["curriculum"] is None else s["curriculum"].get("stages", "exact")
        tag = None if s["curriculum"] is None else _curriculum_tag(s)
        length = make_task(s).length if s["task"] in ("copy", "reverse") else None
        memory = s["memory"] if s["memory"] != _default_memory(s, length) else None
        key = (s["task"], length or 0, s["num_segments"], s["kind"], tag or "", s["steps"],
               bool(s["quick"]), memory or 0)
        cells.setdefault(key, []).append(r["metrics"]["test_accuracy"])
        whole.setdefault(key, []).append(r["metrics"].get("test_sequence_accuracy"))
        rules[key] = rule
    rows = []
    for key, v in sorted(cells.items()):
        t, length, n, k, tag, steps, quick, memory = key
        default_steps = QUICK_OVERRIDES["steps"] if quick else FULL_STEPS.get(t)
        variant = (f" +{tag}" if tag else "") + \
            (f", {steps} steps" if steps != default_steps else "") + \
            (f", memory {memory}" if memory else "")
        rows.append({"task": t, "length": length or None, "num_segments": n, "kind": k,
                     "memory": memory or None,   # None: the cell's own (the grid's) memory
                     "curriculum": bool(tag), "stages": rules[key], "curriculum_tag": tag or None,
                     "steps": steps, "variant": variant or None,
                     "label": KIND_LABELS.get(k, k) + variant,
                     "test_accuracy": float(np.mean(v)), "runs": len(v),
                     "test_sequence_accuracy": _mean_or_none(whole[key])})
    return rows


def _mean_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    return None if any(v is None for v in values) else float(np.mean(values))


def lm_label(spec: Dict[str, Any]) -> str:
    """P1's names for a language-modelling run: "RMT [10] BPTT-2", "Tr-XL [64]",
    "Tr-XL+RMT [64+10]", "Baseline"."""
    kind, mem, d = spec["kind"], spec["memory"], spec["bptt_depth"]
    bptt = "" if kind not in ("rmt", "txl_rmt") else (" BPTT-full" if d is None else f" BPTT-{d}")
    size = {"transformer": "", "txl_rmt": f" [{spec.get('cache')}+{mem}]"}.get(kind, f" [{mem}]")
    return KIND_LABELS[kind] + size + bptt


def lm_table(results: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per language-modelling run configuration (the whole spec but the seed): mean
    test and validation bits per byte over its seeds, number of runs; ordered by kind, cache,
    memory, BPTT depth."""
    cells: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in results:
        s = r["spec"]
        if s["task"] != "lm":
            continue
        order = (ALL_KINDS.index(s["kind"]), s.get("cache") or 0, s["memory"],
                 -1 if s["bptt_depth"] is None else s["bptt_depth"])
        config = json.dumps({k: v for k, v in s.items() if k != "seed"}, sort_keys=True)
        cells.setdefault((order, config), []).append(r)
    rows = []
    for key, runs in sorted(cells.items()):
        s = runs[0]["spec"]
        rows.append({"label": lm_label(s), "kind": s["kind"], "memory": s["memory"],
                     "cache": s.get("cache"), "bptt_depth": s["bptt_depth"],
                     "num_segments": s["num_segments"],
                     "segment_len": s["task_args"].get("segment_len"),
                     "test_bpc": float(np.mean([r["metrics"]["test_bpc"] for r in runs])),
                     "val_bpc": float(np.mean([r["metrics"]["val_bpc"] for r in runs])),
                     "runs": len(runs)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmt.experiments",
                                     description="Runs a named experiment grid (resumable).")
    parser.add_argument("grid", choices=sorted(GRIDS), help="the grid to run")
    parser.add_argument("--out", required=True, help="folder for the results files")
    parser.add_argument("--quick", action="store_true", help="tiny CI version (seconds per run)")
    parser.add_argument("--threads", type=int, default=None,
                        help="rmt threads (default: 1 with --quick, else all)")
    parser.add_argument("--list", action="store_true", help="print the run ids and exit")
    parser.add_argument("--progress", action="store_true", help="a progress bar per run (tqdm)")
    parser.add_argument("--kinds", nargs="+", choices=ALL_KINDS, default=None,
                        help="only these model kinds")
    parser.add_argument("--segments", nargs="+", type=int, default=None,
                        help="only these numbers of segments")
    parser.add_argument("--save-models", action="store_true",
                        help="also write each run's model to <out>/models/<run_id>.safetensors")
    parser.add_argument("--curriculum", action="store_true",
                        help="copy / reverse runs of more than one segment first train on the "
                             "shorter tasks (see curriculum_stages)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="run every selected run once per seed (seed<N> in the run id; "
                             "default: the grid's seed, 0); the summary averages over seeds")
    parser.add_argument("--steps", type=int, default=None,
                        help="train every selected run for this many steps instead of its "
                             "grid's (a different run: st<N> in the run id)")
    parser.add_argument("--memory", type=int, default=None,
                        help="memory tokens (rmt, memtr, txl_rmt) or cached positions (txl) of "
                             "every selected run instead of its grid's (m<N> in the run id; the "
                             "baseline has none)")
    parser.add_argument("--padded-stages", action="store_true",
                        help="with --curriculum: a stage for every shorter number of segments, "
                             "left-padded (curriculum_stages' \"padded\" rule)")
    parser.add_argument("--fine-stages", action="store_true",
                        help="with --curriculum: the padded stages and one halfway before each "
                             "(curriculum_stages' \"fine\" rule; -curfine- in the run id)")
    parser.add_argument("--stage-steps", type=int, default=None,
                        help=f"with --curriculum: at most this many steps per stage (default "
                             f"{CURRICULUM_DEFAULTS['max_steps']})")
    args = parser.parse_args(argv)
    if (args.padded_stages or args.fine_stages or args.stage_steps is not None) \
            and not args.curriculum:
        parser.error("--padded-stages, --fine-stages and --stage-steps need --curriculum")
    if args.padded_stages and args.fine_stages:
        parser.error("--padded-stages and --fine-stages are two different stage rules: pick one")
    if args.stage_steps is not None and args.stage_steps < 1:
        parser.error("--stage-steps must be >= 1")
    curriculum = None
    if args.curriculum:
        curriculum = {}
        if args.padded_stages:
            curriculum["stages"] = "padded"
        if args.fine_stages:
            curriculum["stages"] = "fine"
        if args.stage_steps is not None:
            curriculum["max_steps"] = args.stage_steps
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.seeds is not None and (any(x < 0 for x in args.seeds)
                                   or len(set(args.seeds)) != len(args.seeds)):
        parser.error("--seeds must be distinct integers >= 0")
    if args.memory is not None and args.memory < 1:
        parser.error("--memory must be >= 1")
    grid = get_grid(args.grid)
    if args.steps is not None:
        grid = [with_steps(s, args.steps) for s in grid]
    if args.memory is not None:
        grid = [with_memory(s, args.memory) for s in grid]
    specs = select(grid, args.kinds, args.segments, curriculum)
    if not specs:
        parser.error("no run of the grid matches --kinds / --segments")
    if args.memory is not None:
        ids = [run_id(s) for s in specs]
        same = sorted({i for i in ids if ids.count(i) > 1})
        if same:
            parser.error(f"--memory {args.memory} makes runs of {args.grid} that differed only "
                         f"in their memory one and the same run ({', '.join(same)}); it is for "
                         f"grids with one memory per cell")
    if args.seeds is not None:
        specs = [normalize_spec({**spec, "seed": seed}) for spec in specs for seed in args.seeds]
    if args.list:
        for s in specs:
            print(run_id(quick_spec(s) if args.quick else s))
        return 0
    results = run_grid(specs, args.out, quick=args.quick, threads=args.threads,
                       save_models=args.save_models,
                       progress=args.progress,
                       log=lambda msg: print(msg, flush=True))
    for row in summary_table(results):
        task = f"{row['task']}-{row['length']}" if row["length"] else row["task"]
        answers = (f", answer accuracy {row['test_sequence_accuracy']:.3f} (whole solutions)"
                   if row["task"] == "quadratic" and row["test_sequence_accuracy"] is not None
                   else "")
        print(f"{task:>10} {row['num_segments']:>2} segments {row['label']:>8}: "
              f"test accuracy {row['test_accuracy']:.3f}{answers} ({row['runs']} run(s))")
    for row in lm_table(results):
        print(f"{'lm':>10} {row['label']:>24}: test {row['test_bpc']:.3f} bpc "
              f"(val {row['val_bpc']:.3f}, {row['runs']} run(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
