"""The `rmt` command line (also `python -m rmt`):

    rmt demo [--quick]                      RMT vs Transformer-XL on a copy task, table and plot
    rmt train --task copy --kind rmt ...    train a model on an algorithmic task, save a checkpoint
    rmt eval CHECKPOINT --task copy ...     evaluate a checkpoint on a task's test split
    rmt bench [--quick]                     GEMM against the FMA peak, numpy and torch
    rmt info                                what this build and CPU provide
"""
from __future__ import annotations

import argparse
import json
import sys


def _info(args) -> int:
    import rmt

    print(f"rmt {rmt.__version__}")
    print(f"instruction sets: {', '.join(rmt.available_isas())} (active: {rmt.get_isa()})")
    print(f"OpenMP: {'yes' if rmt.has_openmp else 'no'}, threads: {rmt.get_num_threads()}")
    mr, nr = rmt.gemm_tile()
    print(f"GEMM register tile (float32): {mr} x {nr}")
    return 0


def _bench(args) -> int:
    from . import bench

    threads = [int(t) for t in args.threads.split(",")]
    bench.run_gemm_benchmark(quick=args.quick, threads=threads)
    return 0


def _demo(args) -> int:
    import rmt
    from . import demo

    if args.threads:
        rmt.set_num_threads(args.threads)
    settings = demo.DemoSettings.quick() if args.quick else demo.DemoSettings()
    if args.steps:
        settings.max_steps = [args.steps] * len(settings.stages)
    demo.run(settings, out_dir=args.out, progress=not args.no_progress)
    return 0


def _make_task(args):
    from . import tasks

    if args.task == "retrieval":
        return tasks.AssociativeRetrievalTask(pairs=args.pairs, num_segments=args.segments,
                                              seed=args.seed)
    if args.task == "quadratic":
        return tasks.QuadraticEquationsTask(num_segments=args.segments, seed=args.seed)
    cls = tasks.TASKS[args.task]
    return cls(length=args.length, num_segments=args.segments, seed=args.seed)


def _train(args) -> int:
    import rmt

    if args.threads:
        rmt.set_num_threads(args.threads)
    task = _make_task(args)
    split = task.split(n_val=args.eval_samples, n_test=args.eval_samples)
    T = task.segment_len
    extra = {}
    if args.kind in ("rmt", "memtr"):
        extra["num_mem_tokens"] = args.mem if args.mem is not None else T
    if args.kind == "txl" or (args.kind == "rmt" and args.mem_len):
        extra["mem_len"] = args.mem_len if args.mem_len is not None else T
    cfg = rmt.ModelConfig(kind=args.kind, vocab_size=task.vocab_size, d_model=args.d_model,
                          n_layers=args.layers, n_heads=args.heads, d_ff=args.d_ff,
                          segment_len=T, dropout=args.dropout, **extra)
    model = rmt.from_config(cfg, seed=args.seed)
    print(f"{task}\n{model}")
    trainer = rmt.Trainer(model, rmt.AdamW(lr=args.lr, weight_decay=args.weight_decay),
                          bptt_depth=args.bptt_depth, clip_norm=args.clip_norm,
                          schedule=args.schedule, warmup_steps=args.warmup, seed=args.seed)
    trainer.fit(task.train_batches(args.batch_size), steps=args.steps, eval_data=split["val"],
                eval_every=args.eval_every, progress=not args.no_progress,
                log_file=args.log, checkpoint_dir=args.checkpoint_dir,
                checkpoint_every=args.checkpoint_every, resume=args.resume,
                target_accuracy=args.target_accuracy)
    test = rmt.evaluate(model, split["test"])
    print(json.dumps({"test_accuracy": test["accuracy"], "test_loss": test["loss"],
                      "test_sequence_accuracy": test["sequence_accuracy"],
                      "steps": trainer.step_count}))
    model.save(args.out)
    print(f"saved {args.out}")
    return 0


def _eval(args) -> int:
    import rmt

    model = rmt.load(args.checkpoint)
    if not args.segments:
        # The segment count whose segment length is the model's.
        for n in range(1, 257):
            args.segments = n
            if _make_task(args).segment_len == model.config.segment_len:
                break
    task = _make_task(args)
    if task.vocab_size != model.config.vocab_size:
        print(f"error: the task's vocabulary ({task.vocab_size} ids) differs from the model's "
              f"({model.config.vocab_size}): the checkpoint was trained on another task",
              file=sys.stderr)
        return 2
    if task.segment_len != model.config.segment_len:
        print(f"error: the task's segment length {task.segment_len} differs from the model's "
              f"{model.config.segment_len}: pick --length/--segments to match", file=sys.stderr)
        return 2
    split = task.split(n_val=args.eval_samples, n_test=args.eval_samples)
    metrics = rmt.evaluate(model, split["test"])
    print(json.dumps({"test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"],
                      "test_sequence_accuracy": metrics["sequence_accuracy"]}))
    return 0


def _task_args(p, segments_default=1):
    p.add_argument("--task", choices=["copy", "reverse", "retrieval", "quadratic"], default="copy",
                   help="quadratic: equations in 30 tokens, solutions in 150 (use --segments 6)")
    p.add_argument("--length", type=int, default=24, help="copy/reverse length")
    p.add_argument("--pairs", type=int, default=4, help="retrieval key-value pairs")
    p.add_argument("--segments", type=int, default=segments_default)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-samples", type=int, default=1000)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rmt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="what this build and CPU provide")
    p.set_defaults(fn=_info)

    p = sub.add_parser("bench", help="GEMM against the FMA peak, numpy and torch")
    p.add_argument("--quick", action="store_true", help="a handful of shapes (< 1 minute)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.set_defaults(fn=_bench)

    p = sub.add_parser("demo", help="RMT vs Transformer-XL on a copy task (a few minutes)")
    p.add_argument("--quick", action="store_true", help="a few seconds: checks the install")
    p.add_argument("--steps", type=int, help="maximum training steps per curriculum stage")
    p.add_argument("--out", default="rmt-demo", help="folder for metrics and the plot")
    p.add_argument("--threads", type=int, help="threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=_demo)

    p = sub.add_parser("train", help="train a model on an algorithmic task")
    _task_args(p, segments_default=3)
    p.add_argument("--kind", choices=["transformer", "memtr", "txl", "rmt"], default="rmt")
    p.add_argument("--mem", type=int, help="memory tokens (rmt, memtr); default segment length")
    p.add_argument("--mem-len", type=int, help="Transformer-XL cache; default segment length")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", choices=["constant", "linear", "cosine", "plateau"], default="constant")
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--clip-norm", type=float, default=0.25)
    p.add_argument("--bptt-depth", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--target-accuracy", type=float, default=None)
    p.add_argument("--log", help="metrics file (.jsonl or .csv)")
    p.add_argument("--checkpoint-dir", help="folder for last/best checkpoints")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default="model.safetensors", help="the trained model")
    p.set_defaults(fn=_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a task's test split")
    p.add_argument("checkpoint")
    _task_args(p, segments_default=0)
    p.set_defaults(fn=_eval)

    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
