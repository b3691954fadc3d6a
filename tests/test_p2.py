"""rmt.p2: quick curriculum training (one curriculum.json entry per stage, resume skips finished
stages), evaluate_lengths' report, the Wilson interval, the CLI."""
import json
import math

import numpy as np
import pytest

import rmt
from rmt import p2


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    rmt.set_num_threads(1)
    out = tmp_path_factory.mktemp("p2") / "memorize"
    record = p2.train_curriculum("memorize", out, quick=True, threads=1, log=None)
    return out, record


def test_quick_training_writes_one_entry_per_stage(quick_run):
    out, record = quick_run
    on_disk = json.loads((out / "curriculum.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    c = on_disk["config"]
    assert c["quick"] is True and c["task"] == "memorize"
    assert [s["num_segments"] for s in on_disk["stages"]] == list(range(1, c["max_segments"] + 1))
    for s in on_disk["stages"]:
        assert s["finished"] and s["steps"] == c["steps_per_stage"]
        assert 0.0 <= s["eval_accuracy"] <= 1.0 and math.isfinite(s["eval_loss"])
        assert s["wall_time"] > 0 and s["tokens_per_sample"] == s["num_segments"] * c["segment_len"]
        assert len(s["evals"]) >= 1
        assert s["eval_split"] == "validation"
        # the stage's model on the test split at 1, 2, 4 segments (quick: up to 4, 4 samples)
        g = s["generalization"]
        assert [x["num_segments"] for x in g] == [1, 2, 4]
        for x in g:
            assert x["samples"] == 4 and x["accuracy"] == x["correct"] / 4
    assert on_disk["engine"]["commit"] is None or len(on_disk["engine"]["commit"]) == 40
    assert on_disk["date"] and on_disk["finished"]
    assert on_disk["model_config"]["kind"] == "rmt_encoder"
    model = rmt.load(out / "model.safetensors")
    assert isinstance(model, rmt.RMTEncoder)
    tok = rmt.WordTokenizer.load(out / "tokenizer.json")
    assert tok.vocab_size == model.config.vocab_size == c["max_vocab"]


def test_resume_skips_finished_stages_and_keeps_the_model(quick_run):
    out, record = quick_run
    before = rmt.load(out / "model.safetensors").parameters()
    lines = []
    again = p2.train_curriculum("memorize", out, quick=True, threads=1,
                                log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert len(lines) == record["config"]["max_segments"]
    assert all("skipped" in line for line in lines)
    assert [s["date"] for s in again["stages"]] == [s["date"] for s in record["stages"]]
    after = rmt.load(out / "model.safetensors").parameters()
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_resume_refuses_another_config(quick_run):
    out, _ = quick_run
    with pytest.raises(ValueError, match="another config"):
        p2.train_curriculum("memorize", out, quick=True, threads=1, d_model=8, log=None)


def test_evaluate_lengths_writes_the_fields(quick_run, tmp_path):
    out, _ = quick_run
    path = tmp_path / "lengths.json"
    report = p2.evaluate_lengths(out / "model.safetensors", "memorize", lengths=[1, 3],
                                 samples=5, out=path, threads=1, batch_size=2, log=None)
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    model = rmt.load(out / "model.safetensors")
    T = model.config.segment_len
    assert [r["num_segments"] for r in report["results"]] == [1, 3]
    task = rmt.memory_task("memorize", tokenizer=rmt.WordTokenizer.load(out / "tokenizer.json"))
    for r in report["results"]:
        assert r["samples"] == 5 and r["tokens_per_sample"] == r["num_segments"] * T
        assert r["accuracy"] == r["correct"] / 5
        lo, hi = r["wilson95"]
        assert 0 <= lo <= r["accuracy"] <= hi <= 1
        assert r["wall_time"] > 0 and r["tokens_per_second"] > 0 and r["peak_rss_mb"] > 10
        # the streamed answer equals classifying the whole sample at once
        whole = task.sample(5, r["num_segments"], T, split="test")
        pred = model(whole["tokens"]).argmax(-1)
        assert int((pred == whole["labels"]).sum()) == r["correct"]


def test_generalization_counts_match_a_whole_sample_forward(quick_run):
    out, record = quick_run
    model = rmt.load(out / "model.safetensors")
    task = rmt.memory_task("memorize", tokenizer=rmt.WordTokenizer.load(out / "tokenizer.json"))
    T = model.config.segment_len
    last = record["stages"][-1]["generalization"]
    for x in last:
        whole = task.sample(4, x["num_segments"], T, split="test")
        assert int((model(whole["tokens"]).argmax(-1) == whole["labels"]).sum()) == x["correct"]


def test_evaluate_lengths_resumes_and_takes_samples_per_length(quick_run, tmp_path):
    out, _ = quick_run
    path = tmp_path / "lengths.json"
    first = p2.evaluate_lengths(out / "model.safetensors", "memorize", lengths=[1, 2],
                                samples=[4, 2], out=path, threads=1, log=None)
    assert [r["samples"] for r in first["results"]] == [4, 2]
    lines = []
    again = p2.evaluate_lengths(out / "model.safetensors", "memorize", lengths=[1, 2, 3],
                                samples=[4, 2, 3], out=path, threads=1,
                                log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert again["results"][:2] == first["results"]   # kept, not re-measured
    assert sum("kept" in line for line in lines) == 2
    assert again["results"][2]["num_segments"] == 3 and again["results"][2]["samples"] == 3
    with pytest.raises(ValueError, match="one per length"):
        p2.evaluate_lengths(out / "model.safetensors", "memorize", lengths=[1, 2], samples=[4],
                            threads=1, log=None)


@pytest.mark.parametrize("correct, n, expected", [
    (50, 100, (0.4038, 0.5962)),
    (0, 10, (0.0, 0.2775)),
    (10, 10, (0.7225, 1.0)),
    (81, 263, (0.2553, 0.3662)),
])
def test_wilson_interval_known_values(correct, n, expected):
    lo, hi = p2.wilson_interval(correct, n)
    assert lo == pytest.approx(expected[0], abs=1e-4)
    assert hi == pytest.approx(expected[1], abs=1e-4)


def test_wilson_interval_bad_input():
    with pytest.raises(ValueError, match="n must"):
        p2.wilson_interval(0, 0)
    with pytest.raises(ValueError, match="correct"):
        p2.wilson_interval(11, 10)


def test_cli_train_and_eval(tmp_path):
    out = tmp_path / "run"
    assert p2.main(["train", "--task", "memorize", "--out", str(out), "--quick",
                    "--threads", "1", "--max-segments", "1"]) == 0
    rec = json.loads((out / "curriculum.json").read_text())
    assert len(rec["stages"]) == 1
    assert p2.main(["eval", "--model", str(out / "model.safetensors"), "--task", "memorize",
                    "--lengths", "1", "2", "--samples", "3", "--out", str(out / "len.json"),
                    "--threads", "1"]) == 0
    rep = json.loads((out / "len.json").read_text())
    assert [r["num_segments"] for r in rep["results"]] == [1, 2]


def test_cli_refuses_a_sample_count_per_length_that_does_not_match(tmp_path, capsys):
    with pytest.raises(SystemExit):
        p2.main(["eval", "--model", str(tmp_path / "m.safetensors"), "--lengths", "1", "2", "4",
                 "--samples", "5", "6"])
    assert "one per length" in capsys.readouterr().err


def test_an_interrupted_stage_resumes_from_its_last_checkpoint(tmp_path):
    out = tmp_path / "run"

    class Stop(Exception):
        pass

    def stop_late_in_stage_2(*args, **kwargs):
        # quick: 3 steps per stage, eval and last checkpoint every 2; the eval at step 3 of stage
        # 2 comes after its step-2 checkpoint
        if args and args[0].startswith("[p2] 2 seg step 3"):
            raise Stop

    with pytest.raises(Stop):
        p2.train_curriculum("memorize", out, quick=True, threads=1, log=stop_late_in_stage_2)
    rec = json.loads((out / "curriculum.json").read_text())
    assert [s["num_segments"] for s in rec["stages"]] == [1]
    assert not (out / "model.safetensors").exists()
    again = p2.train_curriculum("memorize", out, quick=True, threads=1, log=None)
    s1, s2 = again["stages"]
    assert s1["date"] == rec["stages"][0]["date"]
    assert s2["steps"] == 3 and s2["steps_this_run"] == 1
    assert [e["step"] for e in s2["evals"]] == [2, 3]
    assert (out / "model.safetensors").exists()


def test_mixed_lengths_trains_on_shorter_samples_too(quick_run, tmp_path):
    _, fixed = quick_run
    mixed = p2.train_curriculum("memorize", tmp_path / "mixed", quick=True, threads=1,
                                mixed_lengths=True, log=None)
    assert mixed["config"]["mixed_lengths"] is True and fixed["config"]["mixed_lengths"] is False
    # stage 1 has only 1-segment samples either way; stage 2 sees other batches when mixed
    assert mixed["stages"][0]["last_train_loss"] == pytest.approx(fixed["stages"][0]["last_train_loss"])
    assert mixed["stages"][1]["last_train_loss"] != fixed["stages"][1]["last_train_loss"]


def test_flops_count_by_hand_and_scale_as_claimed():
    cfg = dict(kind="rmt_encoder", d_model=4, n_layers=1, n_heads=2, d_ff=8, segment_len=5,
               num_mem_tokens=2, vocab_size=10, num_classes=3)
    n = 5 + 2 + 3   # [CLS] mem x 2 [SEP] x 5 [SEP]
    by_hand = 2 * (4 * n * 4 * 4 + 2 * n * n * 4 + 2 * n * 4 * 8)
    assert p2.encoder_flops(cfg, 1) == by_hand
    assert p2.encoder_flops(cfg, 4096) == 4096 * by_hand      # linear in the segments
    assert p2.encoder_flops(rmt.ModelConfig(**cfg), 3) == 3 * by_hand
    n_full = 5 * 1000 + 2
    assert p2.full_attention_flops(cfg, 5000) == 2 * (4 * n_full * 16 + 2 * n_full ** 2 * 4
                                                      + 2 * n_full * 32)
    # quadratic: 10x the tokens costs ~100x once attention dominates
    ratio = p2.full_attention_flops(cfg, 10 ** 6) / p2.full_attention_flops(cfg, 10 ** 5)
    assert 95 < ratio < 100


def test_question_warmup_runs_before_stage_1_and_resumes(tmp_path):
    out = tmp_path / "reasoning"
    rec = p2.train_curriculum("reasoning", out, quick=True, threads=1, question_warmup=True,
                              log=None)
    assert rec["config"]["question_warmup"] is True and rec["config"]["segment_len"] == 24
    assert [w["questions"] for w in rec["warmup"]] == ["east", "direct"]
    for w in rec["warmup"]:
        assert w["finished"] and w["num_segments"] == 1 and w["steps"] == 3
        assert (out / "checkpoints" / f"warmup-{w['questions']}" / "stage00" / "best.safetensors").exists()
    assert [s["num_segments"] for s in rec["stages"]] == [1, 2]
    lines = []
    again = p2.train_curriculum("reasoning", out, quick=True, threads=1, question_warmup=True,
                                log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert sum("warm-up" in line and "skipped" in line for line in lines) == 2
    assert [w["date"] for w in again["warmup"]] == [w["date"] for w in rec["warmup"]]
    with pytest.raises(ValueError, match="another config"):
        p2.train_curriculum("reasoning", out, quick=True, threads=1, log=None)
    with pytest.raises(ValueError, match="reasoning task"):
        p2.train_curriculum("memorize", tmp_path / "m", quick=True, question_warmup=True, log=None)


def test_a_record_from_before_the_warmup_option_resumes(quick_run, tmp_path):
    import shutil

    out, record = quick_run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    rec = json.loads((old / "curriculum.json").read_text())
    for key in ("question_warmup", "warmup_max_steps"):
        del rec["config"][key]
    (old / "curriculum.json").write_text(json.dumps(rec))
    lines = []
    p2.train_curriculum("memorize", old, quick=True, threads=1,
                        log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert lines and all("skipped" in line for line in lines)
    with pytest.raises(ValueError, match="without question_warmup"):
        p2.train_curriculum("memorize", tmp_path / "x", quick=True, warmup_max_steps=5, log=None)
