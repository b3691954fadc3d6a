"""The Python API: model classes, state dicts, checkpoints, streaming, generation, trainer,
tasks, and the errors bad arguments raise."""
import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest

import rmt
from rmt import tasks

SMALL = dict(vocab_size=12, d_model=16, n_layers=2, n_heads=2, d_ff=32, segment_len=6)


def rmt_model(**kw):
    return rmt.RMT(rmt.ModelConfig(**{**SMALL, "num_mem_tokens": 2, "dropout": 0.0, **kw}))


def batch(B=3, S=2, T=6, V=12, seed=0):
    g = np.random.default_rng(seed)
    tokens = g.integers(0, V, (B, S * T))
    targets = g.integers(0, V, (B, S * T))
    return {"tokens": tokens, "targets": targets}


# ---- model classes ----

@pytest.mark.parametrize("cls,extra", [(rmt.Transformer, {}), (rmt.MemoryTransformer, {"num_mem_tokens": 2}),
                                       (rmt.TransformerXL, {"mem_len": 6}), (rmt.RMT, {"num_mem_tokens": 2})])
def test_each_class_builds_its_kind_and_trains_a_step(cls, extra):
    model = cls(rmt.ModelConfig(**SMALL, **extra))
    assert model.config.kind == cls.kind
    assert model.num_parameters == sum(v.size for v in model.parameters().values())
    before = model.state_dict()
    trainer = rmt.Trainer(model, rmt.AdamW(lr=1e-2))
    rec = trainer.step(batch())
    assert np.isfinite(rec["loss"]) and rec["tokens"] == 36
    after = model.parameters()
    assert any(not np.array_equal(before[k], after[k]) for k in before)


def test_parameters_are_views_and_state_dict_copies():
    model = rmt_model()
    params = model.parameters()
    params["out_bias"][0] = 3.5
    assert model.parameters()["out_bias"][0] == 3.5          # a view: the write reached the model
    sd = model.state_dict()
    sd["out_bias"][0] = -1.0
    assert model.parameters()["out_bias"][0] == 3.5          # a copy: the model is untouched
    other = rmt_model()
    other.load_state_dict(model.state_dict())
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(other.parameters()[k], v)


def test_load_state_dict_names_what_does_not_match():
    model = rmt_model()
    sd = model.state_dict()
    sd["out_bias"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="out_bias: shape"):
        model.load_state_dict(sd)
    sd = model.state_dict()
    del sd["mem_tokens"]
    with pytest.raises(ValueError, match="missing keys: mem_tokens"):
        model.load_state_dict(sd)
    sd = model.state_dict()
    sd["out_bias"][:] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.load_state_dict(sd)


def test_config_round_trips_through_json_and_bad_configs_are_named():
    cfg = rmt.ModelConfig(**SMALL, num_mem_tokens=3, mem_len=4)
    assert rmt.ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="n_heads"):
        rmt.ModelConfig(**{**SMALL, "n_heads": 3})
    with pytest.raises(ValueError, match="num_mem_tokens"):
        rmt.RMT(rmt.ModelConfig(**SMALL))                       # M = 0 for RMT
    with pytest.raises(ValueError, match="segment_len"):
        rmt.ModelConfig(**{**SMALL, "segment_len": -1})
    with pytest.raises(ValueError, match="unknown"):
        rmt.ModelConfig.from_dict({**SMALL, "colour": "red"})


def test_forward_matches_loss_and_grad_and_leaves_grads_alone():
    model = rmt_model().eval()
    b = batch()
    model.zero_grad()
    loss, logits = model.loss_and_grad(b["tokens"], b["targets"], return_logits=True)
    grads = model.flat_grads.copy()
    loss2, logits2 = model.forward(b["tokens"], b["targets"])
    assert loss == pytest.approx(loss2)
    np.testing.assert_array_equal(logits, logits2)
    np.testing.assert_array_equal(model.flat_grads, grads)
    np.testing.assert_array_equal(model(b["tokens"]), logits)


# ---- streaming ----

@pytest.mark.parametrize("cls,extra", [(rmt.RMT, {"num_mem_tokens": 2}), (rmt.TransformerXL, {"mem_len": 6}),
                                       (rmt.RMT, {"num_mem_tokens": 2, "mem_len": 6})])
def test_stream_matches_the_whole_sequence(cls, extra):
    model = cls(rmt.ModelConfig(**{**SMALL, "dropout": 0.0}, **extra)).eval()
    b = batch(B=2, S=4)
    whole = model(b["tokens"])
    segments = [b["tokens"][:, s * 6:(s + 1) * 6] for s in range(4)]
    streamed = np.concatenate(list(model.stream(segments)), axis=1)
    np.testing.assert_allclose(streamed, whole, rtol=1e-5, atol=1e-5)


def test_attention_maps_show_what_the_memory_rows_read():
    model = rmt_model().eval()
    rows = model.segment_rows()
    assert rows == {"read": slice(0, 2), "tokens": slice(2, 8), "write": slice(8, 10)}
    _, state = model.step(batch(B=2, S=1)["tokens"])
    for layer in range(model.config.n_layers):
        a = state.attention(layer)
        assert a.shape == (2, model.config.n_heads, 10, 10)
        np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-5)
        # RMT's read block does not see its segment; a token sees no later token; the write
        # block sees everything
        assert np.all(a[:, :, rows["read"], rows["tokens"]] == 0)
        tok = a[:, :, rows["tokens"], rows["tokens"]]
        assert np.all(np.triu(np.ones((6, 6), bool), 1)[None, None] <= (tok == 0))
        assert np.all(a[:, :, rows["write"], :] > 0)
    assert state.attention(0) is not state.attention(0)   # a new array each call
    with pytest.raises(TypeError, match="layer"):
        state.attention(0.5)
    enc = rmt.RMTEncoder(rmt.ModelConfig(kind="rmt_encoder", vocab_size=12, d_model=16,
                                         n_layers=1, n_heads=2, d_ff=16, segment_len=6,
                                         num_mem_tokens=2, num_classes=3, dropout=0.0)).eval()
    assert enc.segment_rows()["tokens"] == slice(4, 10)
    _, est = enc.step(np.array([[4, 5, 6, 7, 8, 9], [0] * 6]))
    assert est.attention(0).shape == (1, 2, 11, 11)   # the all-padding sample did not run


ENCODER_SMALL = dict(kind="rmt_encoder", vocab_size=12, d_model=16, n_layers=2, n_heads=2,
                     d_ff=16, segment_len=6, num_mem_tokens=2, num_classes=3, dropout=0.0)


@pytest.mark.parametrize("cls,extra", [(rmt.Transformer, {}), (rmt.MemoryTransformer, {"num_mem_tokens": 2}),
                                       (rmt.TransformerXL, {"mem_len": 6}), (rmt.RMT, {"num_mem_tokens": 2}),
                                       (rmt.RMT, {"num_mem_tokens": 2, "mem_len": 6}),
                                       (rmt.RMTEncoder, ENCODER_SMALL)])
def test_a_new_stream_reuses_a_finished_streams_workspace_and_gives_the_same_bits(cls, extra):
    # A finished stream's activation workspaces go back to the model, and its next stream starts
    # in them (no fresh pages to fault in). What the old stream left there must not show: a
    # stream after others, with another batch size and at other thread counts, gives the bits of
    # the same stream in a fresh model, and its state has no attention maps before it steps.
    cfg = rmt.ModelConfig(**{**SMALL, "dropout": 0.0, **extra})
    g = np.random.default_rng(1)
    first = g.integers(1, 12, (4, 18))
    second = g.integers(1, 12, (3, 18))
    second[1, :8] = 0   # (the encoder: a sample with no content in its first segment)

    def stream(model, tokens, threads):
        rmt.set_num_threads(threads)
        try:
            state = model.init_memory(len(tokens))
            with pytest.raises(ValueError, match="no segment"):
                state.attention(0)
            out = []
            for s in range(3):
                logits, state = model.step(tokens[:, s * 6:(s + 1) * 6], state)
                out += [logits, state.attention(1)]
            return out + ([] if state.memory is None else [state.memory.copy()])
        finally:
            rmt.set_num_threads(2)

    fresh = stream(cls(cfg, seed=3).eval(), second, 1)
    model = cls(cfg, seed=3).eval()
    for threads in (1, 2, 3):
        stream(model, first, threads)
        for a, b in zip(fresh, stream(model, second, threads)):
            np.testing.assert_array_equal(a, b)


def test_finished_streams_keep_a_bounded_workspace_and_training_mode_frees_it():
    # The workspace a finished stream gives back is kept for the next stream, but not one of a
    # large batch (hundreds of MB would stay for as long as the model lives), and training mode,
    # which unrolls elsewhere, frees what is kept.
    cfg = rmt.ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                          segment_len=128, mem_len=128, dropout=0.0)
    model = rmt.TransformerXL(cfg).eval()
    core = model._core
    assert core.spare_stream_workspace_bytes == 0

    def one_segment(batch):
        state = model.init_memory(batch)
        model.step(np.ones((batch, 128), np.int64), state)
        model.step(np.ones((batch, 128), np.int64), state)   # (the cache: attention over 256 keys)
        del state

    one_segment(2)
    small = core.spare_stream_workspace_bytes
    # probs alone: 2 rows x 2 heads x 128 x 256 floats x 2 layers
    assert small >= 2 * 2 * 128 * 256 * 4 * 2
    one_segment(640)   # its probs alone: 640 x 2 layers x 256 KiB = 320 MiB, past the 256 MiB
    # (the large stream started in the small workspace and grew it: freed when it ended)
    assert core.spare_stream_workspace_bytes == 0
    one_segment(2)
    assert core.spare_stream_workspace_bytes == small
    model.train()
    assert core.spare_stream_workspace_bytes == 0
    model.eval()
    one_segment(2)
    assert core.spare_stream_workspace_bytes == small


def test_memory_state_is_a_view_that_step_advances():
    model = rmt_model().eval()
    state = model.init_memory(batch_size=2)
    np.testing.assert_array_equal(state.memory[0], model.parameters()["mem_tokens"])
    before = state.memory.copy()
    _, state2 = model.step(np.zeros((2, 6), np.int64), state)
    assert state2 is state and state.segments_seen == 1
    assert not np.allclose(state.memory, before)
    copy = state.copy()
    model.step(np.zeros((2, 6), np.int64), state)
    assert copy.segments_seen == 1 and state.segments_seen == 2


def test_streaming_100k_tokens_uses_no_more_memory_than_1k():
    # In a fresh process, so that the peak RSS measures this run only.
    code = r"""
import resource, sys, numpy as np, rmt
model = rmt.TransformerXL(rmt.ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2,
                                         d_ff=64, segment_len=50, mem_len=50, dropout=0.0)).eval()
def run(n_tokens):
    g = np.random.default_rng(0)
    segs = (g.integers(0, 50, (1, 50)) for _ in range(n_tokens // 50))
    for _ in model.stream(segs):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
a = run(1_000)
b = run(100_000)
print(a, b)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    small, large = map(int, out.stdout.split())
    assert large <= small * 1.02 + 512, f"peak RSS grew from {small} KiB to {large} KiB"


# ---- generation ----

def test_greedy_generation_is_deterministic_and_matches_the_forward():
    model = rmt.TransformerXL(rmt.ModelConfig(**{**SMALL, "dropout": 0.0}, mem_len=6)).eval()
    prompt = np.random.default_rng(1).integers(0, 12, (2, 8))
    out = model.generate(prompt, 7, greedy=True)
    assert out.shape == (2, 15)
    np.testing.assert_array_equal(out[:, :8], prompt)
    # Each generated token is the argmax of the forward over the sequence so far (padded to
    # whole segments: the causal mask makes the padding irrelevant).
    for t in range(8, 15):
        seq = np.zeros((2, 18), np.int64)
        seq[:, :t] = out[:, :t]
        logits = model(seq)
        np.testing.assert_array_equal(out[:, t], logits[:, t - 1].argmax(-1))


def test_sampling_respects_top_k_and_seed():
    model = rmt_model().eval()
    prompt = np.array([3, 4, 5])
    a = model.generate(prompt, 10, temperature=1.0, top_k=1, seed=0)
    b = model.generate(prompt, 10, greedy=True)
    np.testing.assert_array_equal(a, b)                       # top_k = 1 is greedy
    c = model.generate(prompt, 10, temperature=2.0, seed=5)
    d = model.generate(prompt, 10, temperature=2.0, seed=5)
    np.testing.assert_array_equal(c, d)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(prompt, 3, top_k=0)
    with pytest.raises(ValueError, match="prompt"):
        model.generate(np.zeros((1, 0), np.int64), 3)


# ---- checkpoints ----

def test_save_and_load_round_trip(tmp_path):
    model = rmt_model(mem_len=4)
    path = tmp_path / "m.safetensors"
    mask = os.umask(0o022)
    try:
        model.save(path)
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644   # an ordinary file, not the temporary's 0600
    loaded = rmt.load(path)
    assert type(loaded) is rmt.RMT and loaded.config == model.config
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(loaded.parameters()[k], v)


def test_corrupt_truncated_and_mismatched_checkpoints_raise(tmp_path):
    model = rmt_model()
    path = tmp_path / "m.safetensors"
    model.save(path)
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        rmt.load(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError):
        rmt.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        rmt.load(tmp_path / "missing.safetensors")
    other = rmt.RMT(rmt.ModelConfig(**{**SMALL, "d_model": 32}, num_mem_tokens=2))
    with pytest.raises(ValueError, match="d_model: 16 in the checkpoint, 32 in the model"):
        other.load_weights(path)


def test_a_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    model = rmt_model()
    path = tmp_path / "m.safetensors"
    model.save(path)
    good = path.read_bytes()
    import safetensors.numpy as stn

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(stn, "save_file", broken)
    with pytest.raises(KeyboardInterrupt):
        model.save(path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]   # no temporary left


# ---- trainer ----

def test_resume_reproduces_the_uninterrupted_losses(tmp_path):
    task = tasks.CopyTask(length=4, num_segments=3, seed=0)
    task.split(16, 16)
    cfg = rmt.ModelConfig(vocab_size=task.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                          segment_len=task.segment_len, num_mem_tokens=2, dropout=0.1)

    class Killed(Exception):
        pass

    def kill_after(n):
        def callback(rec):
            if rec.get("step") == n and "loss" in rec:
                raise Killed()
        return callback

    def run(ckpt, resume=False, callback=None):
        model = rmt.RMT(cfg, seed=3)
        trainer = rmt.Trainer(model, rmt.AdamW(lr=3e-3), clip_norm=1.0, schedule="cosine",
                              warmup_steps=2, seed=1)
        try:
            trainer.fit(task.train_batches(4), steps=8, eval_data=task._splits["val"],
                        eval_every=3, checkpoint_dir=ckpt, checkpoint_every=1, resume=resume,
                        callback=callback)
        except Killed:
            pass
        return [r["loss"] for r in trainer.history if "loss" in r]

    straight = run(tmp_path / "a")
    assert len(run(tmp_path / "b", callback=kill_after(5))) == 5   # killed before its checkpoint
    resumed = run(tmp_path / "b", resume=True)
    assert len(resumed) == 8
    np.testing.assert_allclose(resumed, straight, rtol=1e-6)


def test_trainer_logs_metrics_and_stops_on_target(tmp_path):
    model = rmt_model()
    log = tmp_path / "m.jsonl"
    b = batch()
    trainer = rmt.Trainer(model, rmt.Adam(lr=1e-2))
    hist = trainer.fit(lambda step: b, steps=50, eval_data=b, eval_every=2, log_file=log,
                       target_accuracy=0.0)
    assert trainer.step_count == 2                              # stopped at the first evaluation
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines[0]["step"] == 1 and "loss" in lines[0]
    assert any("eval_accuracy" in x for x in lines)
    csv_log = tmp_path / "m.csv"
    rmt.Trainer(rmt_model()).fit(lambda s: b, steps=2, log_file=csv_log)
    assert csv_log.read_text().splitlines()[0].startswith("step,loss")


def test_gradient_accumulation_equals_the_whole_batch():
    b = batch(B=4)
    results = []
    for acc in (1, 2, 4):
        model = rmt_model()
        trainer = rmt.Trainer(model, rmt.AdamW(lr=1e-2), accumulate=acc)
        rec = trainer.step(b)
        results.append((rec["loss"], model.flat_parameters.copy()))
    for loss, params in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-5)
        # Adam divides by sqrt(v): a near-zero gradient summed in another order can move its
        # parameter by a few lr * 1e-3 (lr = 1e-2); a wrong accumulation moves them by ~lr.
        np.testing.assert_allclose(params, results[0][1], rtol=1e-5, atol=1e-4)


def test_schedules():
    assert rmt.Linear(warmup_steps=10).factor(4, 100) == pytest.approx(0.5)
    assert rmt.Linear(warmup_steps=10).factor(55, 100) == pytest.approx(0.5)
    assert rmt.Cosine(warmup_steps=0).factor(50, 100) == pytest.approx(0.5)
    plateau = rmt.ReduceOnPlateau(reduce_by=0.5, patience=1)
    for metric in [1.0, 1.0, 1.0]:
        plateau.observe(metric)
    assert plateau.factor(100, 100) == 0.5


def test_curriculum_advances_and_starts_each_stage_from_the_best_checkpoint(tmp_path):
    stages = []
    for i in range(2):
        task = tasks.CopyTask(length=2, num_segments=1, seed=i)
        split = task.split(8, 8)
        stages.append(rmt.Stage(task.train_batches(4), split["val"], max_steps=4, name=f"stage {i}"))
    cfg = rmt.ModelConfig(vocab_size=12, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                          segment_len=stages[0].eval_data["tokens"].shape[1], num_mem_tokens=2)
    trainer = rmt.Trainer(rmt.RMT(cfg), rmt.AdamW(lr=1e-2))
    summary = trainer.fit_curriculum(stages, tmp_path, eval_every=1)
    assert [s["stage"] for s in summary] == ["stage 0", "stage 1"]
    assert trainer.step_count == sum(s["steps"] for s in summary)
    # The summary of a stage is the evaluation of its best checkpoint, from which the next stage
    # started.
    best0 = rmt.load(tmp_path / "stage00" / "best.safetensors")
    assert rmt.evaluate(best0, stages[0].eval_data)["loss"] == pytest.approx(summary[0]["eval_loss"])


# ---- bad input ----

def test_bad_input_is_a_python_exception():
    model = rmt_model()
    b = batch()
    with pytest.raises(IndexError, match="tokens"):
        model.loss_and_grad(b["tokens"] + 100, b["targets"])
    with pytest.raises(ValueError, match="multiple of segment_len"):
        model.loss_and_grad(b["tokens"][:, :5], b["targets"][:, :5])
    with pytest.raises((TypeError, ValueError), match="tokens"):
        model.loss_and_grad(b["tokens"].astype(np.float32), b["targets"])
    with pytest.raises(ValueError, match="empty"):
        model.loss_and_grad(np.zeros((0, 12), np.int64), np.zeros((0, 12), np.int64))
    mask = np.ones((3, 12), np.float32)
    mask[0, 0] = np.nan
    with pytest.raises(ValueError, match="loss_mask"):
        model.loss_and_grad(b["tokens"], b["targets"], loss_mask=mask)
    with pytest.raises(ValueError, match="bptt_depth"):
        model.loss_and_grad(b["tokens"], b["targets"], bptt_depth=-2)
    with pytest.raises(TypeError, match="batch"):
        rmt.Trainer(model).step([1, 2, 3, 4])
    with pytest.raises(TypeError, match="unknown batch field"):
        rmt.Trainer(model).step({**b, "colour": 1})
    with pytest.raises(ValueError, match="schedule"):
        rmt.Trainer(model, schedule="zigzag")
    with pytest.raises(ValueError, match="lr"):
        rmt.AdamW(lr=float("nan"))
    with pytest.raises(ValueError, match="batch_size"):
        model.init_memory(0)
    with pytest.raises(TypeError, match="MemoryState"):
        rmt_model().step(np.zeros((1, 6), np.int64), model.init_memory(1))


# ---- tasks ----

def test_copy_and_reverse_layout():
    task = tasks.CopyTask(length=24, num_segments=9, seed=0)
    assert task.seq_len == 72 and task.segment_len == 8 and task.vocab_size == 12
    b = task.train_batches(5)(0)
    toks, tgts = b["tokens"], b["targets"]
    x = toks[:, :24]
    assert (toks[:, 24] == tasks.START).all()
    np.testing.assert_array_equal(tgts[:, -48:-24], x)
    np.testing.assert_array_equal(tgts[:, -24:], x)
    assert (tgts[:, :-48] == -100).all()
    rev = tasks.ReverseTask(length=24, num_segments=6).train_batches(3)(1)
    assert rev["tokens"].shape == (3, 48)
    np.testing.assert_array_equal(rev["targets"][:, -24:], rev["tokens"][:, :24][:, ::-1])


def test_a_fixed_segment_length_left_pads_the_sample():
    # copy-5 in 2 segments of 8 (a padded curriculum stage of copy-24 in 9): 15 tokens, 1 pad
    task = tasks.CopyTask(length=5, vocab_size=12, num_segments=2, segment_len=8, seed=0)
    assert (task.segment_len, task.seq_len, task.left_pad) == (8, 16, 1)
    b = task.train_batches(4)(0)
    assert b["tokens"].shape == (4, 16)
    assert (b["tokens"][:, 0] == tasks.PAD).all() and (b["targets"][:, 0] == -100).all()
    x = b["tokens"][:, 1:6]
    assert (b["tokens"][:, 6] == tasks.START).all()
    np.testing.assert_array_equal(b["targets"][:, -10:], np.concatenate([x, x], axis=1))
    # the default segment length is the shortest that holds the input
    assert tasks.CopyTask(length=5, num_segments=2).segment_len == 8
    assert tasks.ReverseTask(length=5, num_segments=1, segment_len=12).left_pad == 2
    with pytest.raises(ValueError, match="cannot hold"):
        tasks.CopyTask(length=5, num_segments=2, segment_len=7)
    # a task with few distinct inputs refuses to hold out all of them (instead of drawing forever)
    few = tasks.CopyTask(length=2, vocab_size=12)
    assert few.num_inputs == 100
    with pytest.raises(ValueError, match="only 100 distinct inputs"):
        few.split(60, 40)
    assert len(few.split(50, 49)["test"]["tokens"]) == 49
    assert tasks.AssociativeRetrievalTask(pairs=2).num_inputs == 26 * 25 * 10 * 9
    with pytest.raises(ValueError, match="segment_len"):
        tasks.AssociativeRetrievalTask(pairs=4, segment_len=0)


def test_retrieval_answer_is_the_value_of_the_query_key():
    task = tasks.AssociativeRetrievalTask(pairs=4, num_segments=5, seed=0)
    b = task.train_batches(50)(0)
    for toks, tgts in zip(b["tokens"], b["targets"]):
        toks = toks[task.left_pad:]
        pairs = dict(zip(toks[0:8:2], toks[1:8:2]))
        assert len(pairs) == 4 and len(set(pairs.values())) == 4
        query = toks[-1]
        assert tgts[-1] == pairs[query]
        assert (tgts[:-1] == -100).all()


HELD_OUT_TASKS = {   # small tasks, so that held-out inputs would turn up in training batches
    "copy": (tasks.CopyTask, dict(length=3, vocab_size=5, num_segments=1)),       # 27 inputs
    "reverse": (tasks.ReverseTask, dict(length=3, vocab_size=5, num_segments=2)),
    "retrieval": (tasks.AssociativeRetrievalTask, dict(pairs=1, num_segments=2)),  # 260
}


@pytest.mark.parametrize("name", sorted(HELD_OUT_TASKS))
def test_splits_are_disjoint_deterministic_and_never_in_training(name):
    cls, args = HELD_OUT_TASKS[name]
    task = cls(**args, seed=7)
    begin, end = task.left_pad, task.left_pad + task.input_len

    def inputs(batch):
        return [r.tobytes() for r in batch["tokens"][:, begin:end]]

    split = task.split(8, 8)
    val, test = set(inputs(split["val"])), set(inputs(split["test"]))
    # deduplicated: 8 distinct inputs in each, none in both
    assert len(val) == 8 and len(test) == 8 and not val & test
    for step in range(20):
        assert not set(inputs(task.train_batches(16)(step))) & (val | test)
    again = cls(**args, seed=7)
    again_split = again.split(8, 8)
    for part in ("val", "test"):
        for key in ("tokens", "targets"):
            np.testing.assert_array_equal(again_split[part][key], split[part][key])
    # training batches are a function of (seed, step) alone
    np.testing.assert_array_equal(again.train_batches(16)(3)["tokens"],
                                  task.train_batches(16)(3)["tokens"])
    other = cls(**args, seed=8)
    assert not np.array_equal(other.split(8, 8)["val"]["tokens"], split["val"]["tokens"])


def test_retrieval_ids_and_layout():
    task = tasks.AssociativeRetrievalTask(pairs=4, num_segments=5, seed=3)
    # 8 input tokens, the marker, the query key: 10 model inputs in 5 segments of 2
    assert (task.seq_len, task.segment_len, task.left_pad, task.vocab_size) == (10, 2, 0, 38)
    b = task.train_batches(64)(0)
    toks, tgts = b["tokens"], b["targets"]
    keys, values = toks[:, 0:8:2], toks[:, 1:8:2]
    assert ((keys >= 2) & (keys <= 27)).all() and ((values >= 28) & (values <= 37)).all()
    assert (toks[:, 8] == tasks.START).all()          # the query marker before the query key
    assert all(q in k for q, k in zip(toks[:, 9], keys))
    assert ((tgts[:, -1] >= 28) & (tgts[:, -1] <= 37)).all()
    # pairs of a 3-pair task in 4 segments of 3: left-padded by 4
    padded = tasks.AssociativeRetrievalTask(pairs=3, num_segments=4, segment_len=3)
    assert padded.left_pad == 4
    p = padded.train_batches(2)(0)
    assert (p["tokens"][:, :4] == tasks.PAD).all() and (p["targets"][:, :-1] == -100).all()


# ---- the encoder through the public API ----

def encoder(**kw):
    cfg = dict(vocab_size=20, d_model=16, n_layers=1, n_heads=2, d_ff=32, segment_len=5,
               num_mem_tokens=2, num_classes=3, dropout=0.0)
    return rmt.RMTEncoder(rmt.ModelConfig(**{**cfg, **kw}))


def test_encoder_trains_classifies_and_streams():
    model = encoder()
    g = np.random.default_rng(0)
    samples = [g.integers(3, 20, n) for n in (12, 5, 3, 9)]
    tokens = rmt.right_align(samples, segment_len=5)
    assert tokens.shape == (4, 15) and (tokens[1, :10] == 0).all()
    labels = np.array([0, 1, 2, 1])
    trainer = rmt.Trainer(model, rmt.AdamW(lr=1e-2))
    losses = [trainer.step({"tokens": tokens, "labels": labels})["loss"] for _ in range(15)]
    assert losses[-1] < losses[0]
    model.eval()
    logits = model(tokens)
    assert logits.shape == (4, 3)
    metrics = rmt.evaluate(model, {"tokens": tokens, "labels": labels})
    assert metrics["accuracy"] == np.mean(logits.argmax(-1) == labels)
    last = None
    for seg_logits in model.stream(tokens[:, s * 5:(s + 1) * 5] for s in range(3)):
        last = seg_logits
    np.testing.assert_allclose(last, logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(IndexError, match="labels"):
        trainer.step({"tokens": tokens, "labels": np.array([0, 1, 2, 3])})
    with pytest.raises(TypeError, match="classif"):
        model.generate(tokens[:1], 2)
    with pytest.raises(ValueError, match="num_segments"):
        rmt.right_align(samples, segment_len=5, num_segments=2)


def test_memory_init_options():
    rand = rmt_model(num_mem_tokens=4, d_model=64).parameters()
    emb_std = rand["word_emb.weight"].std()
    assert 0.5 * emb_std < rand["mem_tokens"].std() < 2 * emb_std     # "randn": embedding scale
    rep = rmt_model(num_mem_tokens=4, d_model=64, mem_init="repeat").parameters()["mem_tokens"]
    assert all(np.array_equal(rep[0], rep[i]) for i in range(4))       # one vector repeated
    assert 0.7 < rep.std() < 1.3                                         # N(0, 1)


def test_unimplemented_options_are_refused_not_ignored():
    with pytest.raises(ValueError, match="dropatt"):
        rmt_model(dropatt=0.1)


def test_our_thread_count_is_our_own_beside_torch():
    # In one process torch and rmt run on one libgomp (whichever libgomp.so.1 loaded first serves
    # both): with OpenMP's own setting, torch.set_num_threads(1) put rmt on one thread too.
    torch = pytest.importorskip("torch")
    if not rmt.has_openmp:
        pytest.skip("a build without OpenMP always runs on one thread")
    ours, theirs = rmt.get_num_threads(), torch.get_num_threads()
    try:
        rmt.set_num_threads(2)
        torch.set_num_threads(1)
        assert rmt.get_num_threads() == 2          # torch's setting leaves ours alone
        torch.set_num_threads(2)
        rmt.set_num_threads(1)
        assert torch.get_num_threads() == 2        # and ours, torch's
        assert rmt.get_num_threads() == 1
        with pytest.raises(ValueError, match="num_threads must be >= 1"):
            rmt.set_num_threads(0)
        assert rmt.get_num_threads() == 1
    finally:
        rmt.set_num_threads(ours)
        torch.set_num_threads(theirs)


def test_our_default_thread_count_ignores_torchs_setting_before_import():
    # Until set_num_threads: OMP_NUM_THREADS, else the processors we may use; not the shared
    # runtime's per-thread setting, which torch may have changed before rmt's first use.
    pytest.importorskip("torch")
    if not rmt.has_openmp:
        pytest.skip("a build without OpenMP always runs on one thread")
    code = ("import torch; torch.set_num_threads(1); import rmt; "
            "print(rmt.get_num_threads(), torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(len(os.sched_getaffinity(0))), "1"]
    env["OMP_NUM_THREADS"] = "3"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["3", "1"]
