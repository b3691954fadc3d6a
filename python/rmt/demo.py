"""`python -m rmt demo`: RMT against Transformer-XL on a copy task whose answer lies further back
than Transformer-XL's cache can reach, trained from scratch in a few minutes on 2 cores.

The task: copy-L cut into S segments (rmt.tasks.CopyTask). The answer repeats the input twice, so
the second copy is about 2L tokens after the input it copies. Transformer-XL with a cache of one
segment sees at most n_layers * (mem_len + segment_len) tokens back; RMT carries the input in its
memory tokens from segment to segment. Both models have the same layers and sizes; RMT has
num_mem_tokens = segment_len memory tokens, Transformer-XL mem_len = segment_len cached rows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np


@dataclass
class DemoSettings:
    length: int = 8              # copy-L
    num_segments: int = 4
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 128
    batch_size: int = 32
    steps: int = 1500
    lr: float = 2e-3
    eval_every: int = 100
    seed: int = 0

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(steps=60, eval_every=20)


def _models(task, s: DemoSettings):
    import rmt

    base = dict(vocab_size=task.vocab_size, d_model=s.d_model, n_layers=s.n_layers,
                n_heads=s.n_heads, d_ff=s.d_ff, segment_len=task.segment_len, dropout=0.0)
    return {
        "RMT": rmt.RMT(rmt.ModelConfig(**base, num_mem_tokens=task.segment_len), seed=s.seed),
        "Transformer-XL": rmt.TransformerXL(rmt.ModelConfig(**base, mem_len=task.segment_len),
                                            seed=s.seed),
    }


def run(settings: Optional[DemoSettings] = None, out_dir="rmt-demo", progress: bool = True,
        print_fn=print) -> Dict[str, Dict]:
    """Trains both models, prints a comparison table, writes metrics and a plot to out_dir.
    Returns {model name: {history, test metrics, seconds}}."""
    import rmt
    from rmt import tasks

    s = settings or DemoSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = tasks.CopyTask(length=s.length, num_segments=s.num_segments, seed=s.seed)
    split = task.split(n_val=256, n_test=512)
    print_fn(f"copy-{s.length} in {s.num_segments} segments of {task.segment_len} tokens "
             f"(vocabulary {task.vocab_size}); answer = the input twice, scored per token")
    print_fn(f"models: {s.n_layers} layers, d_model {s.d_model}, {s.n_heads} heads, d_ff {s.d_ff}; "
             f"batch {s.batch_size}, {s.steps} steps of AdamW lr {s.lr}, threads {rmt.get_num_threads()}")
    results = {}
    for name, model in _models(task, s).items():
        print_fn(f"\n== {name} ({model.num_parameters:,} parameters)")
        trainer = rmt.Trainer(model, rmt.AdamW(lr=s.lr, weight_decay=0.0), clip_norm=1.0,
                              schedule="cosine", warmup_steps=min(100, s.steps // 10), seed=s.seed)
        started = time.perf_counter()

        def report(rec, name=name):
            if "eval_accuracy" in rec and not progress:
                print_fn(f"  step {rec['step']:5d}  val accuracy {rec['eval_accuracy']:.3f}")

        trainer.fit(task.train_batches(s.batch_size), steps=s.steps, eval_data=split["val"],
                    eval_every=s.eval_every, progress=progress, callback=report,
                    log_file=out / f"{name.lower().replace('-', '')}.jsonl")
        seconds = time.perf_counter() - started
        test = rmt.evaluate(model, split["test"])
        results[name] = {"history": trainer.history, "test": test, "seconds": seconds}
        print_fn(f"  test accuracy {test['accuracy']:.3f} after {seconds:.0f} s")

    print_fn("\n| model | test accuracy | test loss | train time |")
    print_fn("|---|---|---|---|")
    for name, r in results.items():
        print_fn(f"| {name} | {r['test']['accuracy']:.3f} | {r['test']['loss']:.3f} | {r['seconds']:.0f} s |")
    chance = 1.0 / (task.vocab_size - 2)
    print_fn(f"(chance: {chance:.3f})")
    plot = _plot(results, out / "demo.png", task, chance)
    if plot:
        print_fn(f"plot: {plot}")
    return results


def _plot(results, path: Path, task, chance) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        evals = [(h["step"], h["eval_accuracy"]) for h in r["history"] if "eval_accuracy" in h]
        if evals:
            steps, acc = zip(*evals)
            ax.plot(steps, acc, marker="o", label=f"{name} (test {r['test']['accuracy']:.2f})")
    ax.axhline(chance, color="gray", linestyle=":", label="chance")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation accuracy (per answer token)")
    ax.set_title(f"copy-{task.length} in {task.num_segments} segments")
    ax.set_ylim(0, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
