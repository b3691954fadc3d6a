"""P2 (the 1M-token report): curriculum training of the RMT encoder on a memory task and its
evaluation at growing lengths, streamed one segment at a time.

    python -m rmt.p2 train --task memorize --out results/p2/memorize [--quick]
    python -m rmt.p2 eval --model results/p2/memorize/model.safetensors --task memorize \\
        --lengths 1 2 4 8 16 --samples 100 --out results/p2/memorize/lengths.json

Training (SPEC section 4): AdamW (weight decay 1e-3), a linear schedule with 10% warmup, full
BPTT, memory 10, gradient clipping by norm (1.0; without it the first memorize run, T = 64,
diverged from stage 20 on: results/p2/memorize_t64), and a curriculum of 1, 2, 3, ... max_segments segments. Each stage trains a fresh
optimizer and schedule, starting from the best checkpoint of the previous stage, with
``Trainer.fit_curriculum`` until the accuracy on the validation split (held-out combinations,
samples of their own) reaches ``target_accuracy`` or ``patience`` evaluations pass without
improvement, or ``steps_per_stage`` steps. After each stage its best model is evaluated on the
test split at 1, 2, 4, ... ``generalization_max_segments`` segments (``generalization_samples``
samples each, streamed): the train-length x evaluation-length table of P2 Figures 4 and 5.
With ``mixed_lengths`` each training sample of stage S draws its length from 1 ... S segments
(right-aligned, leading empty segments) instead of all having S; the stage still stops on
S-segment validation samples.
(Records written before the validation split existed say ``eval_split: "test"``: their stages
stopped on the test samples.)

``out_dir`` receives ``curriculum.json`` (rewritten after every stage: config, per-stage steps,
accuracy and wall time, engine commit, date), ``model.safetensors`` and ``tokenizer.json`` at the
end, and ``checkpoints/`` (per stage; git-ignored). A rerun skips the finished stages (loading the
best checkpoint of the last one) and resumes an unfinished stage from its last checkpoint.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .experiments import _write_json_atomic, engine_version

DEFAULTS: Dict[str, Any] = dict(
    segment_len=32, max_segments=8, d_model=64, n_layers=2, n_heads=4, d_ff=128,
    num_mem_tokens=10, dropout=0.0, max_vocab=2000, batch_size=32, lr=1e-3, weight_decay=1e-3,
    warmup_fraction=0.1, steps_per_stage=1000, eval_every=25, eval_samples=192, patience=12,
    target_accuracy=0.95, clip_norm=1.0, eval_split="validation", generalization_samples=100,
    generalization_max_segments=64, mixed_lengths=False, question_warmup=False,
    warmup_max_steps=4000)

QUICK: Dict[str, Any] = dict(
    segment_len=16, max_segments=2, d_model=16, n_layers=1, n_heads=2, d_ff=32, num_mem_tokens=2,
    max_vocab=200, batch_size=4, steps_per_stage=3, eval_every=2, eval_samples=8, patience=None,
    generalization_samples=4, generalization_max_segments=4, warmup_max_steps=3)


def wilson_interval(correct: int, n: int, z: float = 1.959963984540054) -> Tuple[float, float]:
    """Wilson score interval (95% by default) of a binomial proportion correct / n."""
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    if not 0 <= correct <= n:
        raise ValueError(f"correct must be in [0, n], got {correct}")
    p = correct / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _config(task: str, quick: bool, seed: int, overrides: Dict[str, Any]) -> Dict[str, Any]:
    cfg = dict(DEFAULTS)
    if quick:
        cfg.update(QUICK)
        if task == "reasoning":   # its two facts and question need 23 tokens in one segment
            cfg["segment_len"] = 24
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    cfg.update(task=task, seed=int(seed), quick=bool(quick))
    return cfg


def train_curriculum(task: str = "memorize", out_dir="results/p2/memorize", *,
                     segment_len: Optional[int] = None, max_segments: Optional[int] = None,
                     d_model: Optional[int] = None, n_layers: Optional[int] = None,
                     n_heads: Optional[int] = None, d_ff: Optional[int] = None,
                     num_mem_tokens: Optional[int] = None, batch_size: Optional[int] = None,
                     lr: Optional[float] = None, clip_norm: Optional[float] = None,
                     steps_per_stage: Optional[int] = None,
                     eval_every: Optional[int] = None, eval_samples: Optional[int] = None,
                     patience: Optional[int] = None, target_accuracy: float = 0.95,
                     generalization_samples: Optional[int] = None,
                     generalization_max_segments: Optional[int] = None,
                     mixed_lengths: bool = False, question_warmup: bool = False,
                     warmup_max_steps: Optional[int] = None,
                     seed: int = 0, threads: Optional[int] = None, quick: bool = False,
                     log=print) -> Dict[str, Any]:
    """Trains an RMT encoder on ``task`` through stages of 1 ... max_segments segments and
    returns the curriculum record (also written to out_dir/curriculum.json). ``None`` arguments
    take DEFAULTS (or QUICK values with ``quick``: a tiny model, a few steps per stage).

    ``question_warmup`` (reasoning only): before stage 1, a relation curriculum on 1 segment:
    the questions "east" only, then every direct question (``ReasoningTask(questions=...)``),
    each until ``target_accuracy`` on its own validation samples or ``warmup_max_steps`` steps,
    without patience (the plateau before such a stage converges is expected and long). Recorded
    under "warmup" in curriculum.json."""
    import rmt

    if threads is not None:
        rmt.set_num_threads(int(threads))
    overrides = dict(segment_len=segment_len, max_segments=max_segments, d_model=d_model,
                     n_layers=n_layers, n_heads=n_heads, d_ff=d_ff, num_mem_tokens=num_mem_tokens,
                     batch_size=batch_size, lr=lr, clip_norm=clip_norm,
                     steps_per_stage=steps_per_stage,
                     eval_every=eval_every, eval_samples=eval_samples, patience=patience,
                     target_accuracy=target_accuracy,
                     generalization_samples=generalization_samples,
                     generalization_max_segments=generalization_max_segments,
                     mixed_lengths=bool(mixed_lengths), question_warmup=bool(question_warmup),
                     warmup_max_steps=warmup_max_steps)
    if question_warmup and task != "reasoning":
        raise ValueError(f"question_warmup is for the reasoning task, not {task!r}")
    if warmup_max_steps is not None and not question_warmup:
        raise ValueError("warmup_max_steps without question_warmup has no effect")
    c = _config(task, quick, seed, overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda *a, **k: None)

    t = rmt.memory_task(task, seed=c["seed"], max_vocab=c["max_vocab"])
    T = c["segment_len"]
    model_cfg = rmt.ModelConfig(
        kind="rmt_encoder", vocab_size=t.tokenizer.vocab_size, d_model=c["d_model"],
        n_layers=c["n_layers"], n_heads=c["n_heads"], d_ff=c["d_ff"], segment_len=T,
        num_mem_tokens=c["num_mem_tokens"], num_classes=t.num_classes, dropout=c["dropout"],
        cls_id=t.tokenizer.cls_id, sep_id=t.tokenizer.sep_id, pad_id=t.tokenizer.pad_id)
    model = rmt.RMTEncoder(model_cfg, seed=c["seed"])
    t.tokenizer.save(out / "tokenizer.json")

    record_path = out / "curriculum.json"
    record: Dict[str, Any] = {}
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if isinstance(record.get("config"), dict):
            record["config"].setdefault("clip_norm", 0.0)   # records from before clipping
            for key, old in (("eval_split", "test"), ("generalization_samples", 0),
                             ("generalization_max_segments", 0), ("mixed_lengths", False),
                             ("question_warmup", False),
                             ("warmup_max_steps", c["warmup_max_steps"])):
                record["config"].setdefault(key, old)       # ... and before validation
        if record.get("config") != c:
            raise ValueError(f"{record_path} was written with another config; use another out_dir"
                             f" (old {record.get('config')}, new {c})")
    record.setdefault("stages", [])
    record.update(config=c, model_config=model_cfg.to_dict(),
                  num_parameters=model.num_parameters, task=task,
                  engine=engine_version(), date=record.get("date", _now()))
    ckpt_root = out / "checkpoints"
    done = {s["num_segments"]: s for s in record["stages"] if s.get("finished")}

    eval_bs = 64

    def run_stage(stage_task, S, stage_dir, max_steps, patience, min_segments, name):
        """One stage with a fresh optimizer and schedule, resumed from its last checkpoint;
        leaves the model at its best checkpoint. Returns the record entry (without
        generalisation)."""
        trainer = rmt.Trainer(model, rmt.AdamW(lr=c["lr"], weight_decay=c["weight_decay"]),
                              bptt_depth=None, clip_norm=c["clip_norm"] or None,
                              schedule="linear",
                              warmup_steps=max(1, int(round(c["warmup_fraction"] * max_steps))),
                              seed=c["seed"] + S)
        stage = rmt.Stage(
            train_data=stage_task.train_batches(c["batch_size"], S, T, min_segments=min_segments),
            eval_data=stage_task.eval_batches(c["eval_samples"], eval_bs, S, T,
                                              split=c["eval_split"]),
            max_steps=max_steps, target_accuracy=c["target_accuracy"], patience=patience,
            name=name)
        ran = [0]   # steps taken by this run (a resumed stage started from its last checkpoint)

        def callback(rec):
            if "loss" in rec:
                ran[0] += 1
            if "eval_accuracy" in rec:
                log(f"[p2] {name} step {rec['step']}: eval loss {rec['eval_loss']:.4f} "
                    f"acc {rec['eval_accuracy']:.3f}", flush=True)

        t0 = time.perf_counter()
        summary = trainer.fit_curriculum([stage], stage_dir, eval_every=c["eval_every"],
                                         checkpoint_every=c["eval_every"], resume=True,
                                         callback=callback)[0]
        wall = time.perf_counter() - t0
        train_losses = [r["loss"] for r in trainer.history if "loss" in r]
        return {"num_segments": S, "tokens_per_sample": S * T, "steps": trainer.step_count,
                "steps_this_run": ran[0], "eval_loss": summary["eval_loss"],
                "eval_accuracy": summary["eval_accuracy"], "eval_samples": c["eval_samples"],
                "eval_split": c["eval_split"],
                "converged": summary["eval_accuracy"] >= c["target_accuracy"],
                "wall_time": wall,  # of this run only (a resumed stage: since the resume)
                "last_train_loss": train_losses[-1] if train_losses else None,
                "evals": [{k: r[k] for k in ("step", "eval_loss", "eval_accuracy")}
                          for r in trainer.history if "eval_accuracy" in r],
                "finished": True, "date": _now()}

    if c["question_warmup"]:
        from .memory_tasks import QUESTION_SETS

        record.setdefault("warmup", [])
        warm_done = {w["questions"]: w for w in record["warmup"] if w.get("finished")}
        for q in QUESTION_SETS[:-1]:
            stage_dir = ckpt_root / f"warmup-{q}"
            if q in warm_done:
                best = stage_dir / "stage00" / "best.safetensors"
                if best.exists():
                    model.load_weights(best)
                log(f"[p2] warm-up {q!r}: finished earlier, skipped")
                continue
            wt = rmt.memory_task(task, seed=c["seed"], max_vocab=c["max_vocab"],
                                 tokenizer=t.tokenizer, questions=q)
            entry = {"questions": q, **run_stage(wt, 1, stage_dir, c["warmup_max_steps"], None,
                                                 None, f"warm-up {q!r}")}
            record["warmup"] = [w for w in record["warmup"] if w["questions"] != q] + [entry]
            _write_json_atomic(record_path, record)
            log(f"[p2] warm-up {q!r} done: {entry['steps']} steps, accuracy "
                f"{entry['eval_accuracy']:.3f}, {entry['wall_time']:.0f} s", flush=True)

    for S in range(1, c["max_segments"] + 1):
        stage_dir = ckpt_root / f"seg{S:02d}"
        best = stage_dir / "stage00" / "best.safetensors"
        if S in done:
            if best.exists():
                model.load_weights(best)
            log(f"[p2] stage {S} segments: finished earlier "
                f"(accuracy {done[S]['eval_accuracy']:.3f}), skipped")
            continue
        entry = run_stage(t, S, stage_dir, c["steps_per_stage"], c["patience"],
                          1 if c["mixed_lengths"] else None, f"{S} seg")
        wall = entry["wall_time"]
        if c["generalization_samples"]:
            g0 = time.perf_counter()
            entry["generalization"] = [
                dict(zip(("num_segments", "correct", "samples"),
                         (L, _count_correct(model, t, L, T, c["generalization_samples"], eval_bs),
                          c["generalization_samples"])))
                for L in _powers_of_two(c["generalization_max_segments"])]
            for g in entry["generalization"]:
                g["accuracy"] = g["correct"] / g["samples"]
            log(f"[p2] stage {S}: test accuracy at " + ", ".join(
                f"{g['num_segments']}: {g['accuracy']:.2f}" for g in entry["generalization"])
                + f" segments ({time.perf_counter() - g0:.0f} s)", flush=True)
        record["stages"] = [s for s in record["stages"] if s["num_segments"] != S] + [entry]
        record["stages"].sort(key=lambda s: s["num_segments"])
        _write_json_atomic(record_path, record)
        log(f"[p2] stage {S} segments done: {entry['steps']} steps, accuracy "
            f"{entry['eval_accuracy']:.3f}, {wall:.0f} s", flush=True)

    model.save(out / "model.safetensors", {"task": task, "tokenizer": "tokenizer.json"})
    record["model"] = "model.safetensors"
    record["tokenizer"] = "tokenizer.json"
    record["finished"] = _now()
    _write_json_atomic(record_path, record)
    return record


def _forward_flops(n: int, d_model: int, n_layers: int, d_ff: int, d_attn: int) -> float:
    """Forward FLOPs (a multiply-add = 2) of n_layers encoder layers on n tokens: the Q, K, V
    and output projections (4 n d_model d_attn multiply-adds), the two attention products
    (2 n^2 d_attn) and the feed-forward block (2 n d_model d_ff)."""
    return 2.0 * n_layers * (4 * n * d_model * d_attn + 2 * n * n * d_attn + 2 * n * d_model * d_ff)


def encoder_flops(config, num_segments: int) -> float:
    """Forward FLOPs of the RMT encoder (``config``: a ModelConfig or its dict, kind
    rmt_encoder) on an input of ``num_segments`` segments: every segment is one pass over
    [CLS][mem x M][SEP] segment [SEP], so the cost is linear in the input length (P2 Figure 3's
    analysis; embeddings, layer norms, softmax and the classification head are left out, as
    there)."""
    c = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    d_attn = c["n_heads"] * (c.get("d_head") or c["d_model"] // c["n_heads"])
    n = c["segment_len"] + c["num_mem_tokens"] + 3
    return num_segments * _forward_flops(n, c["d_model"], c["n_layers"], c["d_ff"], d_attn)


def full_attention_flops(config, num_tokens: int) -> float:
    """Forward FLOPs of the same layers attending over all ``num_tokens`` tokens at once (a
    plain Transformer encoder with a long enough context, [CLS] x [SEP]): quadratic in the
    length."""
    c = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    d_attn = c["n_heads"] * (c.get("d_head") or c["d_model"] // c["n_heads"])
    return _forward_flops(num_tokens + 2, c["d_model"], c["n_layers"], c["d_ff"], d_attn)


def _powers_of_two(top: int) -> List[int]:
    out, L = [], 1
    while L <= top:
        out.append(L)
        L *= 2
    return out


def _count_correct(model, task, num_segments: int, segment_len: int, samples: int,
                   batch_size: int, split: str = "test") -> int:
    """How many of samples 0 ... samples - 1 of ``split`` the model answers right at
    ``num_segments`` segments, each batch streamed one segment at a time (memory does not grow
    with the length)."""
    was_training = model.training
    model.eval()
    labels = task.labels_of(np.arange(samples), split=split)
    correct = 0
    try:
        for i in range(0, samples, batch_size):
            idx = list(range(i, min(samples, i + batch_size)))
            logits = None
            for logits in model.stream(task.segments_of(idx, num_segments, segment_len,
                                                        split=split)):
                pass
            correct += int((logits.argmax(-1) == labels[idx]).sum())
    finally:
        model.train(was_training)
    return correct


def evaluate_lengths(model_path, task: str = "memorize", lengths: Sequence[int] = (1, 2, 4, 8),
                     samples=100, out=None, *, tokenizer_path=None, seed: int = 0,
                     batch_size: int = 1, threads: Optional[int] = None, resume: bool = True,
                     log=print) -> Dict[str, Any]:
    """Accuracy of the model at ``model_path`` on test samples 0 ... samples - 1 of ``task`` at
    each number of segments in ``lengths``, each sample streamed lazily (segments_of +
    model.stream, the last segment's logits) in constant memory. Per length: accuracy, Wilson 95%
    interval, wall time, tokens/s and the process's peak RSS so far. ``samples`` is one count or
    one per length (fewer for the longest inputs). Written to ``out`` (JSON) after every length,
    and returned; with ``resume`` a rerun keeps the lengths ``out`` already holds for the same
    model, task, seed and sample count and evaluates only the others (peak RSS is then that of
    the run that measured the length)."""
    import rmt

    if threads is not None:
        rmt.set_num_threads(int(threads))
    log = log or (lambda *a, **k: None)
    model_path = Path(model_path)
    model = rmt.load(model_path)
    model.eval()
    tok_path = Path(tokenizer_path) if tokenizer_path else model_path.parent / "tokenizer.json"
    tokenizer = rmt.WordTokenizer.load(tok_path)
    t = rmt.memory_task(task, seed=seed, tokenizer=tokenizer)
    T = model.config.segment_len
    lengths = [int(S) for S in lengths]
    counts = [int(samples)] * len(lengths) if np.ndim(samples) == 0 else [int(n) for n in samples]
    if len(counts) != len(lengths) or min(counts, default=1) < 1 or min(lengths, default=1) < 1:
        raise ValueError(f"lengths must be >= 1 and samples one count >= 1 or one per length, "
                         f"got lengths {lengths}, samples {samples}")
    report = {"model": str(model_path), "task": task, "seed": seed, "segment_len": T,
              "split": "test", "results": [], "engine": engine_version(), "date": _now()}
    earlier: Dict[Tuple[int, int], Dict[str, Any]] = {}
    if out is not None and resume and Path(out).exists():
        old = json.loads(Path(out).read_text())
        if (old.get("model"), old.get("task"), old.get("seed"), old.get("segment_len")) == \
                (str(model_path), task, seed, T):
            earlier = {(r["num_segments"], r["samples"]): r for r in old.get("results", [])}
    results = report["results"]
    for S, samples in zip(lengths, counts):
        if (S, samples) in earlier:
            results.append(earlier[(S, samples)])
            log(f"[p2 eval] {S} segments: done earlier, kept", flush=True)
            continue
        t0 = time.perf_counter()
        correct = _count_correct(model, t, S, T, samples, batch_size)
        wall = time.perf_counter() - t0
        lo, hi = wilson_interval(correct, samples)
        r = {"num_segments": int(S), "tokens_per_sample": int(S * T), "samples": samples,
             "correct": correct, "accuracy": correct / samples, "wilson95": [lo, hi],
             "wall_time": wall, "tokens_per_second": samples * S * T / wall if wall > 0 else None,
             "peak_rss_mb": _peak_rss_mb()}
        results.append(r)
        log(f"[p2 eval] {S} segments ({S * T} tokens): accuracy {r['accuracy']:.3f} "
            f"[{lo:.3f}, {hi:.3f}], {r['tokens_per_second']:.0f} tok/s, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        if out is not None:
            _write_json_atomic(Path(out), report)
    if out is not None:
        _write_json_atomic(Path(out), report)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rmt.p2", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="curriculum training (resumable)")
    tr.add_argument("--task", default="memorize")
    tr.add_argument("--out", required=True)
    tr.add_argument("--quick", action="store_true")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=None)
    for name in ("segment_len", "max_segments", "d_model", "n_layers", "n_heads", "d_ff",
                 "num_mem_tokens", "batch_size", "steps_per_stage", "eval_every", "eval_samples",
                 "patience", "generalization_samples", "generalization_max_segments"):
        tr.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=None)
    tr.add_argument("--lr", type=float, default=None)
    tr.add_argument("--clip-norm", type=float, default=None, help="0: no clipping (default 1.0)")
    tr.add_argument("--target-accuracy", type=float, default=0.95)
    tr.add_argument("--mixed-lengths", action="store_true",
                    help="stage S trains on samples of 1 ... S segments")
    tr.add_argument("--question-warmup", action="store_true",
                    help="reasoning: a relation curriculum on 1 segment before stage 1")
    tr.add_argument("--warmup-max-steps", type=int, default=None)
    ev = sub.add_parser("eval", help="accuracy at growing lengths, streamed")
    ev.add_argument("--model", required=True)
    ev.add_argument("--task", default="memorize")
    ev.add_argument("--lengths", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ev.add_argument("--samples", type=int, nargs="+", default=[100],
                    help="one count, or one per length")
    ev.add_argument("--batch-size", type=int, default=1)
    ev.add_argument("--out", default=None)
    ev.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.cmd == "train":
        train_curriculum(a.task, a.out, segment_len=a.segment_len, max_segments=a.max_segments,
                         d_model=a.d_model, n_layers=a.n_layers, n_heads=a.n_heads, d_ff=a.d_ff,
                         num_mem_tokens=a.num_mem_tokens, batch_size=a.batch_size, lr=a.lr,
                         clip_norm=a.clip_norm,
                         steps_per_stage=a.steps_per_stage, eval_every=a.eval_every,
                         eval_samples=a.eval_samples, patience=a.patience,
                         target_accuracy=a.target_accuracy,
                         generalization_samples=a.generalization_samples,
                         generalization_max_segments=a.generalization_max_segments,
                         mixed_lengths=a.mixed_lengths, question_warmup=a.question_warmup,
                         warmup_max_steps=a.warmup_max_steps, seed=a.seed, threads=a.threads,
                         quick=a.quick)
    else:
        if len(a.samples) not in (1, len(a.lengths)):
            p.error(f"--samples takes one count or one per length ({len(a.lengths)}), "
                    f"got {len(a.samples)}")
        samples = a.samples[0] if len(a.samples) == 1 else a.samples
        evaluate_lengths(a.model, a.task, a.lengths, samples, a.out, batch_size=a.batch_size,
                         threads=a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
