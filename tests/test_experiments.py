"""The experiment runner (rmt.experiments): results files, resumable grids, killed runs, seeds."""
import json
import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

import rmt
from rmt import experiments as ex


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models: one thread is much faster than two on a shared machine (see rmt.experiments).
    previous = rmt.get_num_threads()
    rmt.set_num_threads(1)
    yield
    rmt.set_num_threads(previous)


def tiny(kind="rmt", seed=0, num_segments=2, **kw):
    args = dict(task_args={"length": 4},
                model=dict(n_layers=1, n_heads=2, d_model=16, d_head=None, d_ff=32, dropout=0.1),
                steps=8, batch_size=4, eval_every=3, n_val=16, n_test=16, checkpoint_every=2,
                target_accuracy=None, seed=seed, optimizer={"lr": 3e-3, "warmup_steps": 2})
    args.update(kw)
    return ex.make_spec("copy", num_segments, kind, **args)


class Killed(Exception):
    pass


def counter():
    calls = []

    def callback(rec):
        if "loss" in rec:
            calls.append(rec["step"])
    return calls, callback


def losses(result):
    return [p["loss"] for p in result["curve"]["train"]]


def test_one_results_file_per_run_with_the_required_fields(tmp_path):
    grid = [tiny("rmt"), tiny("txl"), tiny("transformer")]
    results = ex.run_grid(grid, tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(f"{ex.run_id(s)}.json" for s in grid)   # no temporaries, no checkpoints
    assert len(set(files)) == 3
    for spec, r in zip(grid, results):
        on_disk = json.loads((tmp_path / f"{ex.run_id(spec)}.json").read_text())
        assert on_disk == json.loads(json.dumps(r))
        assert on_disk["spec"] == spec
        m = on_disk["metrics"]
        for k in ("val_accuracy", "val_loss", "test_accuracy", "test_loss"):
            assert isinstance(m[k], float) and np.isfinite(m[k])
        assert 0.0 <= m["test_accuracy"] <= 1.0 and m["test_loss"] > 0
        train, evals = on_disk["curve"]["train"], on_disk["curve"]["eval"]
        assert [p["step"] for p in train] == list(range(1, 9))
        assert [p["step"] for p in evals] == [3, 6, 8]
        assert all(0.0 <= p["eval_accuracy"] <= 1.0 for p in evals)
        assert on_disk["wall_time"] > 0 and on_disk["steps_per_second"] > 0
        assert on_disk["steps_taken"] == 8 and on_disk["resumed_from_step"] == 0
        engine = on_disk["engine"]
        assert engine["version"] == rmt.__version__
        assert engine["commit"] is None or len(engine["commit"]) == 40
        assert on_disk["date"][:4].isdigit() and "T" in on_disk["date"]
    assert [r["spec"]["memory"] for r in results] == [6, 6, 0]   # segment length (2 x 6 tokens)


def test_load_results_reads_every_run_and_ignores_other_files(tmp_path):
    assert ex.load_results(tmp_path / "missing") == []
    grid = [tiny("rmt"), tiny("memtr")]
    ex.run_grid(grid, tmp_path)
    (tmp_path / "notes.json").write_text(json.dumps({"hello": 1}))
    loaded = ex.load_results(tmp_path)
    assert sorted(r["run_id"] for r in loaded) == sorted(ex.run_id(s) for s in grid)
    table = ex.summary_table(loaded)
    assert [(row["kind"], row["runs"]) for row in table] == [("memtr", 1), ("rmt", 1)]


def test_a_second_call_skips_done_runs(tmp_path):
    grid = [tiny("rmt"), tiny("txl")]
    first = ex.run_grid(grid, tmp_path)
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    calls, callback = counter()
    second = ex.run_grid(grid, tmp_path, callback=callback)
    assert calls == []                                   # no training step at all
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == mtimes
    assert json.loads(json.dumps(first)) == second
    # A different spec under the same run_id (d_ff is not in the slug) is not taken for done.
    other = tiny("rmt", model=dict(n_layers=1, n_heads=2, d_model=16, d_head=None, d_ff=48,
                                   dropout=0.1))
    assert ex.run_id(other) == ex.run_id(grid[0])
    with pytest.raises(ValueError, match="different spec.*model"):
        ex.run_grid([other], tmp_path, callback=callback)
    assert calls == []
    # One more spec: only that one trains.
    third = ex.run_grid(grid + [tiny("memtr")], tmp_path, callback=callback)
    assert calls == list(range(1, 9)) and len(third) == 3


def test_a_killed_run_resumes_from_its_checkpoint(tmp_path):
    spec = tiny("rmt")
    straight = ex.run_grid([spec], tmp_path / "a")[0]

    def kill_at_5(rec):
        if rec.get("step") == 5 and "loss" in rec:
            raise Killed()

    with pytest.raises(Killed):
        ex.run_grid([spec], tmp_path / "b", callback=kill_at_5)
    rid = ex.run_id(spec)
    assert not (tmp_path / "b" / f"{rid}.json").exists()
    assert (tmp_path / "b" / "_checkpoints" / rid / "last.safetensors").exists()
    calls, callback = counter()
    resumed = ex.run_grid([spec], tmp_path / "b", callback=callback)[0]
    assert calls == [5, 6, 7, 8]                          # checkpoint at step 4 (every 2 steps)
    assert resumed["resumed_from_step"] == 4
    np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-6)
    for k, v in straight["metrics"].items():
        assert resumed["metrics"][k] == pytest.approx(v, rel=1e-6), k
    assert not (tmp_path / "b" / "_checkpoints").exists()   # cleaned up once the results exist


def test_curriculum_stages_fill_whole_segments_of_the_same_length():
    def stages(task, length, S):
        spec = ex.make_spec(task, S, "rmt", task_args={"length": length}, curriculum={})
        return [(st["task_args"]["length"], st["num_segments"]) for st in ex.curriculum_stages(spec)]

    assert stages("copy", 24, 3) == [(8, 1), (16, 2)]
    assert stages("copy", 24, 6) == [(4, 1), (8, 2), (12, 3), (16, 4), (20, 5)]
    assert stages("copy", 24, 9) == [(8, 3), (16, 6)]
    assert stages("reverse", 24, 4) == [(6, 1), (12, 2), (18, 3)]
    assert stages("copy", 24, 1) == []
    for task, S in [("copy", 3), ("copy", 9), ("reverse", 6)]:
        spec = ex.make_spec(task, S, "rmt", task_args={"length": 24}, curriculum={})
        final = ex.make_task(spec)
        for st in ex.curriculum_stages(spec):
            t = ex.make_task({**spec, **st})
            assert t.segment_len == final.segment_len and t.left_pad == 0
            assert t.vocab_size == final.vocab_size
    assert ex.curriculum_stages(ex.make_spec("copy", 3, "rmt", task_args={"length": 24})) == []
    retrieval = ex.make_spec("retrieval", 3, "rmt", task_args={"pairs": 4}, curriculum={})
    assert ex.curriculum_stages(retrieval) == []
    assert "-cur-" in ex.run_id(retrieval)
    assert "-cur-" not in ex.run_id(ex.make_spec("retrieval", 3, "rmt", task_args={"pairs": 4}))


def test_padded_curriculum_stages_cover_every_shorter_number_of_segments():
    def spec(task, S, rule, length=24, **cur):
        return ex.make_spec(task, S, "rmt", task_args={"length": length},
                            curriculum={"stages": rule, **cur})

    def stages(task, S, rule):
        return [(st["task_args"]["length"], st["num_segments"])
                for st in ex.curriculum_stages(spec(task, S, rule))]

    # copy-24 in 9 segments of 8: exact stages start at 3 segments, padded ones at 1
    assert stages("copy", 9, "padded") == [(2, 1), (5, 2), (8, 3), (10, 4), (13, 5), (16, 6),
                                           (18, 7), (21, 8)]
    # where the segment length is a multiple of 3 (copy) or 2 (reverse) the rules agree
    for task, S in [("copy", 3), ("copy", 6), ("reverse", 2), ("reverse", 4), ("reverse", 6)]:
        assert stages(task, S, "padded") == stages(task, S, "exact")
    final = ex.make_task(spec("copy", 9, "padded"))
    for st in ex.curriculum_stages(spec("copy", 9, "padded")):
        t = ex.make_task({**spec("copy", 9, "padded"), **st})
        # same segments, less than one segment of padding: a stage needs all of its segments
        assert t.segment_len == final.segment_len and 0 <= t.left_pad < t.segment_len
        assert t.vocab_size == final.vocab_size
    # "exact" is the default and is not written out: old specs and their run ids are unchanged
    assert spec("copy", 9, "exact") == ex.make_spec("copy", 9, "rmt", task_args={"length": 24},
                                                    curriculum={})
    assert ex.run_id(spec("copy", 9, "exact")).endswith("-cur-seed0")
    assert ex.run_id(spec("copy", 9, "padded")).endswith("-curpad-seed0")
    assert ex.run_id(spec("copy", 9, "padded", max_steps=200)).endswith("-curpad200-seed0")
    with pytest.raises(ValueError, match="curriculum stages"):
        spec("copy", 9, "some")


def test_fine_curriculum_stages_halve_the_steps_between_the_padded_ones():
    def spec(task, S, rule="fine"):
        return ex.make_spec(task, S, "rmt", task_args={"length": 24},
                            curriculum={"stages": rule})

    def stages(task, S, rule="fine"):
        return [(st["task_args"]["length"], st["num_segments"])
                for st in ex.curriculum_stages(spec(task, S, rule))]

    assert stages("copy", 6) == [(2, 1), (4, 1), (6, 2), (8, 2), (10, 3), (12, 3), (14, 4),
                                 (16, 4), (18, 5), (20, 5), (22, 6)]
    assert stages("reverse", 4) == [(3, 1), (6, 1), (9, 2), (12, 2), (15, 3), (18, 3), (21, 4)]
    for task, S in [("copy", 3), ("copy", 6), ("copy", 9), ("reverse", 4), ("reverse", 6)]:
        fine, padded = stages(task, S), stages(task, S, "padded")
        assert set(padded) <= set(fine) and len(fine) == 2 * len(padded) + 1
        assert fine == sorted(fine) and len(set(fine)) == len(fine)
        final = ex.make_task(spec(task, S))
        for st in ex.curriculum_stages(spec(task, S)):
            t = ex.make_task({**spec(task, S), **st})
            # the stage's own number of segments, all needed, of the run's length
            assert t.segment_len == final.segment_len and 0 <= t.left_pad < t.segment_len
            assert t.seq_len == st["num_segments"] * t.segment_len
    assert ex.run_id(spec("copy", 6)).endswith("-curfine-seed0")
    assert ex.main(["p1-copy", "--out", "unused", "--segments", "6", "--kinds", "rmt",
                    "--curriculum", "--fine-stages", "--list"]) == 0


def test_cli_rejects_two_stage_rules(capsys):
    with pytest.raises(SystemExit):
        ex.main(["p1-copy", "--out", "unused", "--curriculum", "--padded-stages",
                 "--fine-stages", "--list"])
    assert "pick one" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ex.main(["p1-copy", "--out", "unused", "--fine-stages", "--list"])
    assert "need --curriculum" in capsys.readouterr().err


def test_a_padded_curriculum_run_trains_left_padded_stages(tmp_path):
    s = tiny("rmt", num_segments=3, task_args={"length": 5},
             curriculum={"stages": "padded", "max_steps": 2, "eval_every": 1, "n_val": 8})
    assert ex.make_task(s).segment_len == 5            # 15 tokens in 3 segments of 5
    r = ex.run_grid([s], tmp_path)[0]
    # copy-1 in 1 segment (3 tokens, 2 pads), copy-3 in 2 (9 tokens, 1 pad)
    assert [(st["task_args"]["length"], st["num_segments"], st["task_args"]["segment_len"])
            for st in r["curriculum"]] == [(1, 1, 5), (3, 2, 5)]
    rows = ex.summary_table([r, ex.run_grid([tiny("rmt", num_segments=3, task_args={"length": 5},
                                                   curriculum={})], tmp_path)[0]])
    # (tiny runs train 8 steps, not the grid's 2000: the label says so)
    assert [(row["label"], row["stages"]) for row in rows] == [("RMT +cur, 8 steps", "exact"),
                                                               ("RMT +curpad2, 8 steps", "padded")]


def test_a_fine_curriculum_run_trains_its_halfway_stages(tmp_path):
    s = tiny("rmt", num_segments=3, task_args={"length": 5},
             curriculum={"stages": "fine", "max_steps": 2, "eval_every": 1, "n_val": 8})
    r = ex.run_grid([s], tmp_path)[0]
    # padded stages copy-1 in 1 and copy-3 in 2, each after its halfway stage, then copy-4 in 3
    assert [(st["task_args"]["length"], st["num_segments"], st["steps"])
            for st in r["curriculum"]] == [(1, 1, 2), (2, 2, 2), (3, 2, 2), (4, 3, 2)]
    assert ex.summary_table([r])[0]["label"] == "RMT +curfine2, 8 steps"


def test_the_summary_keeps_another_memory_apart():
    def result(spec, acc):
        return {"spec": spec, "metrics": {"test_accuracy": acc}}

    grid = ex.get_grid("p1-copy")
    rmt6 = next(s for s in grid if s["kind"] == "rmt" and s["num_segments"] == 6)
    rows = ex.summary_table([result(rmt6, 0.5), result(ex.with_memory(rmt6, 6), 0.1),
                             result(ex.with_memory(rmt6, 12), 0.7)])   # 12 is the grid's own
    assert [(r["label"], r["test_accuracy"], r["runs"]) for r in rows] == \
        [("RMT", 0.6, 2), ("RMT, memory 6", 0.1, 1)]
    # copy-120's fixed memories (60 / 30 / 40, not the segment lengths) are its grid's: no label
    assert all("memory" not in r["label"] for r in ex.summary_table(
        [result(s, 0.1) for s in ex.get_grid("p1-copy120")]))


def test_the_summary_keeps_task_lengths_and_stage_budgets_apart(tmp_path):
    short, longer = tiny("txl", task_args={"length": 3}), tiny("txl", task_args={"length": 4})
    rows = ex.summary_table(ex.run_grid([short, longer], tmp_path))
    assert [(row["task"], row["length"], row["runs"]) for row in rows] == [("copy", 3, 1),
                                                                           ("copy", 4, 1)]
    # copy-24 by default and copy-24 by name are one cell
    named = ex.make_spec("copy", 3, "txl", task_args={"length": 24})
    unnamed = ex.make_spec("copy", 3, "txl")
    fake = lambda spec, acc: {"spec": spec, "metrics": {"test_accuracy": acc}}
    rows = ex.summary_table([fake(named, 1.0), fake(unnamed, 0.5)])
    assert [(row["length"], row["runs"]) for row in rows] == [(24, 2)]
    # a run with another stage budget is another variant, not another seed
    default = ex.make_spec("copy", 3, "rmt", curriculum={})
    budget = ex.make_spec("copy", 3, "rmt", curriculum={"max_steps": 200})
    rows = ex.summary_table([fake(default, 1.0), fake(budget, 0.0)])
    assert [(row["label"], row["curriculum_tag"], row["runs"]) for row in rows] == [
        ("RMT +cur", "cur", 1), ("RMT +cur200", "cur200", 1)]
    # so is a run of another step budget (--steps), with or without a curriculum
    longer = ex.with_steps(budget, 4000)
    plain, plain_short = ex.make_spec("copy", 3, "txl"), ex.make_spec("copy", 3, "txl", steps=300)
    rows = ex.summary_table([fake(s, 0.5) for s in (budget, longer, plain, plain_short)])
    assert [(row["label"], row["variant"], row["steps"], row["runs"]) for row in rows] == [
        ("RMT +cur200", " +cur200", 2000, 1), ("RMT +cur200, 4000 steps", " +cur200, 4000 steps", 4000, 1),
        ("Tr-XL, 300 steps", ", 300 steps", 300, 1), ("Tr-XL", None, 2000, 1)]


def test_a_curriculum_stage_with_few_inputs_still_validates(tmp_path):
    # copy-1 over 2 symbols (the first padded stage here) has only 2 distinct inputs
    s = tiny("rmt", num_segments=4, task_args={"length": 4, "vocab_size": 4}, n_val=4, n_test=4,
             curriculum={"stages": "padded", "max_steps": 2, "eval_every": 1, "n_val": 8})
    r = ex.run_grid([s], tmp_path)[0]
    assert r["curriculum"][0]["task_args"]["length"] == 1
    assert 0.0 <= r["curriculum"][0]["val_accuracy"] <= 1.0


def test_a_bad_curriculum_is_a_clear_error():
    for bad in (True, "padded", 3):
        with pytest.raises(ValueError, match="curriculum must be None or a dict"):
            ex.make_spec("copy", 3, "rmt", curriculum=bad)
    # a hand-built spec gets the curriculum defaults filled in
    spec = {**ex.make_spec("copy", 9, "rmt"), "curriculum": {"stages": "padded"}}
    assert ex.run_id(spec).endswith("-curpad-seed0")
    assert ex.normalize_spec(spec)["curriculum"]["max_steps"] == ex.CURRICULUM_DEFAULTS["max_steps"]


def test_the_copy120_grid_has_the_papers_fixed_memory():
    specs = ex.get_grid("p1-copy120")
    assert sorted({(s["num_segments"], s["kind"], s["memory"]) for s in specs}) == [
        (3, "rmt", 60), (3, "transformer", 0), (3, "txl", 60),
        (6, "rmt", 30), (6, "transformer", 0), (6, "txl", 30),
        (9, "rmt", 40), (9, "transformer", 0), (9, "txl", 40)]
    for s in specs:
        task = ex.make_task(s)
        assert task.vocab_size == 10 and task.seq_len == 360 and task.left_pad == 0
        assert task.segment_len == 360 // s["num_segments"]
    assert len({ex.run_id(s) for s in specs}) == len(specs)


def test_with_steps_changes_the_budget_and_the_intervals_that_followed_it(capsys):
    spec = ex.get_grid("p1-copy120")[4]
    short = ex.with_steps(spec, 300)
    assert (short["steps"], short["eval_every"], short["checkpoint_every"]) == (300, 30, 30)
    assert {k: v for k, v in short.items() if k not in ("steps", "eval_every", "checkpoint_every")} \
        == {k: v for k, v in spec.items() if k not in ("steps", "eval_every", "checkpoint_every")}
    assert "-st300-" in ex.run_id(short) and ex.with_steps(spec, spec["steps"]) == spec
    fixed = ex.make_spec("copy", 3, "rmt", steps=100, eval_every=7)
    assert ex.with_steps(fixed, 50)["eval_every"] == 7
    assert ex.main(["p1-copy120", "--out", "unused", "--segments", "6", "--kinds", "rmt",
                    "--steps", "300", "--list"]) == 0
    assert capsys.readouterr().out.strip().endswith("-b16-st300-seed0")


def test_with_memory_changes_the_memory_of_every_kind_that_has_one(capsys):
    grid = ex.get_grid("p1-copy")
    for spec in grid:
        changed = ex.with_memory(spec, 6)
        assert changed["memory"] == (0 if spec["kind"] == "transformer" else 6)
        assert {k: v for k, v in changed.items() if k != "memory"} == \
            {k: v for k, v in spec.items() if k != "memory"}
    rmt6 = ex.with_memory(next(s for s in grid if s["kind"] == "rmt" and s["num_segments"] == 6), 6)
    assert "-rmt-m6-" in ex.run_id(rmt6)
    assert ex.build_model(rmt6).config.num_mem_tokens == 6
    txl6 = ex.with_memory(next(s for s in grid if s["kind"] == "txl"), 6)
    assert ex.build_model(txl6).config.mem_len == 6
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="memory must be an int"):
            ex.with_memory(grid[0], bad)
    assert ex.main(["p1-copy", "--out", "unused", "--segments", "6", "--kinds", "rmt", "txl",
                    "transformer", "--memory", "6", "--list"]) == 0
    ids = sorted(capsys.readouterr().out.split())
    assert [i.split("-")[2:4] for i in ids] == [["rmt", "m6"], ["transformer", "m0"], ["txl", "m6"]]
    with pytest.raises(SystemExit):
        ex.main(["p1-copy", "--out", "unused", "--memory", "0", "--list"])
    assert "--memory must be >= 1" in capsys.readouterr().err
    # the LM grid has several memories per kind: one --memory would merge them
    with pytest.raises(SystemExit):
        ex.main(["p1-lm", "--out", "unused", "--memory", "6", "--list"])
    assert "one and the same run" in capsys.readouterr().err


def test_cli_runs_every_selected_run_once_per_seed(capsys):
    assert ex.main(["p1-copy", "--out", "unused", "--segments", "6", "--kinds", "rmt", "txl",
                    "--seeds", "1", "2", "--list"]) == 0
    ids = capsys.readouterr().out.split()
    assert sorted((i.split("-")[2], i.rsplit("-", 1)[1]) for i in ids) == \
        [("rmt", "seed1"), ("rmt", "seed2"), ("txl", "seed1"), ("txl", "seed2")]
    for bad in (["--seeds", "1", "1"], ["--seeds", "-1"]):
        with pytest.raises(SystemExit):
            ex.main(["p1-copy", "--out", "unused", "--list"] + bad)
        assert "--seeds must be distinct" in capsys.readouterr().err


def test_cli_curriculum_options_need_the_curriculum(capsys):
    with pytest.raises(SystemExit):
        ex.main(["p1-copy", "--out", "unused", "--padded-stages", "--list"])
    assert "need --curriculum" in capsys.readouterr().err
    assert ex.main(["p1-copy", "--out", "unused", "--segments", "9", "--kinds", "rmt",
                    "--curriculum", "--padded-stages", "--stage-steps", "200", "--list"]) == 0
    assert capsys.readouterr().out.strip().endswith("-curpad200-seed0")


def test_a_curriculum_run_trains_the_stages_first_and_resumes(tmp_path):
    spec = tiny("rmt", curriculum={"max_steps": 4, "eval_every": 2, "n_val": 8,
                                   "target_accuracy": None})   # copy-2 in 1 segment of 6
    stage_steps = []
    straight = ex.run_grid([spec], tmp_path / "a", callback=lambda r: stage_steps.append(
        (r.get("curriculum_stage"), r.get("step"))) if "loss" in r else None)[0]
    assert len(straight["curriculum"]) == 1
    st = straight["curriculum"][0]
    assert st["task_args"]["length"] == 2 and st["num_segments"] == 1 and st["steps"] == 4
    assert 0 <= st["val_accuracy"] <= 1
    assert stage_steps[:4] == [(0, 1), (0, 2), (0, 3), (0, 4)]
    assert stage_steps[4:] == [(None, k) for k in range(1, 9)]
    # the curriculum changes the run: the same spec without it trains otherwise
    plain = ex.run_grid([tiny("rmt")], tmp_path / "c")[0]
    assert plain["curriculum"] is None and losses(plain) != losses(straight)
    rows = ex.summary_table([straight, plain])
    assert sorted((row["label"], row["curriculum"], row["runs"]) for row in rows) == [
        ("RMT +cur4, 8 steps", True, 1), ("RMT, 8 steps", False, 1)]   # max_steps 4: not the default

    def kill_at_5(rec):
        if rec.get("step") == 5 and "loss" in rec and "curriculum_stage" not in rec:
            raise Killed()

    with pytest.raises(Killed):
        ex.run_grid([spec], tmp_path / "b", callback=kill_at_5)
    resumed = ex.run_grid([spec], tmp_path / "b")[0]
    assert resumed["resumed_from_step"] == 4
    no_time = lambda cur: [{k: v for k, v in st.items() if k != "wall_time"} for st in cur]
    assert no_time(resumed["curriculum"]) == no_time(straight["curriculum"])
    np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-6)


def test_a_run_killed_in_its_curriculum_resumes_at_the_stage_it_was_in(tmp_path):
    # copy-6 in 3 segments of 6: stages copy-2 in 1 segment and copy-4 in 2
    spec = tiny("rmt", num_segments=3, task_args={"length": 6},
                curriculum={"max_steps": 4, "eval_every": 2, "n_val": 8, "target_accuracy": None})
    straight = ex.run_grid([spec], tmp_path / "a")[0]
    assert [st["task_args"]["length"] for st in straight["curriculum"]] == [2, 4]

    def kill_in_stage_2(rec):
        if rec.get("curriculum_stage") == 1 and rec.get("step") == 3 and "loss" in rec:
            raise Killed()

    with pytest.raises(Killed):
        ex.run_grid([spec], tmp_path / "b", callback=kill_in_stage_2)
    ckpt = tmp_path / "b" / "_checkpoints" / ex.run_id(spec)
    assert (ckpt / ex.CURRICULUM_CHECKPOINT).exists() and not (ckpt / "last.safetensors").exists()
    records, messages = [], []
    resumed = ex.run_grid([spec], tmp_path / "b", log=messages.append,
                          callback=lambda r: records.append(
                              (r.get("curriculum_stage"), r["step"])) if "loss" in r else None)[0]
    # the first stage is not trained again; the second starts over from its first step
    assert records[:4] == [(1, 1), (1, 2), (1, 3), (1, 4)]
    assert records[4:] == [(None, k) for k in range(1, 9)]
    assert any("resuming after stage 1/2" in m for m in messages)
    assert resumed["resumed_after_stage"] == 1 and straight["resumed_after_stage"] == 0
    assert any("curriculum stage 2/2, copy-4 in 2 segments: 4 steps" in m for m in messages)
    no_time = lambda cur: [{k: v for k, v in st.items() if k != "wall_time"} for st in cur]
    assert no_time(resumed["curriculum"]) == no_time(straight["curriculum"])
    np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-6)
    for k, v in straight["metrics"].items():
        assert resumed["metrics"][k] == pytest.approx(v, rel=1e-6), k
    assert not (tmp_path / "b" / "_checkpoints").exists()


def test_a_run_killed_between_its_curriculum_and_its_first_checkpoint_skips_the_stages(tmp_path):
    spec = tiny("rmt", num_segments=3, task_args={"length": 6},
                curriculum={"max_steps": 4, "eval_every": 2, "n_val": 8, "target_accuracy": None})
    straight = ex.run_grid([spec], tmp_path / "a")[0]

    def kill_at_proper_step_1(rec):
        if rec.get("step") == 1 and "loss" in rec and "curriculum_stage" not in rec:
            raise Killed()

    with pytest.raises(Killed):
        ex.run_grid([spec], tmp_path / "b", callback=kill_at_proper_step_1)
    records = []
    resumed = ex.run_grid([spec], tmp_path / "b", callback=lambda r: records.append(
        (r.get("curriculum_stage"), r["step"])) if "loss" in r else None)[0]
    assert records == [(None, k) for k in range(1, 9)]   # no stage trained again
    assert resumed["resumed_from_step"] == 0
    np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-6)


def test_checkpoints_of_another_spec_with_the_same_run_id_are_not_resumed(tmp_path):
    # dropout is not in the run_id, and a checkpoint loads into a model of any dropout
    spec = tiny("rmt", num_segments=3, task_args={"length": 6},
                curriculum={"max_steps": 4, "eval_every": 2, "n_val": 8, "target_accuracy": None})
    other = tiny("rmt", num_segments=3, task_args={"length": 6},
                 curriculum={"max_steps": 4, "eval_every": 2, "n_val": 8, "target_accuracy": None},
                 model=dict(n_layers=1, n_heads=2, d_model=16, d_head=None, d_ff=32, dropout=0.0))
    assert ex.run_id(other) == ex.run_id(spec)

    def kill_in_stage_2(rec):
        if rec.get("curriculum_stage") == 1 and "loss" in rec:
            raise Killed()

    with pytest.raises(Killed):
        ex.run_grid([spec], tmp_path, callback=kill_in_stage_2)
    with pytest.raises(ValueError, match="different spec with the same run_id.*model"):
        ex.run_grid([other], tmp_path)
    assert len(ex.run_grid([spec], tmp_path)) == 1   # its own spec still resumes


def test_a_curriculum_checkpoint_of_other_stages_is_a_clear_error(tmp_path):
    spec = tiny("rmt", num_segments=3, task_args={"length": 6},
                curriculum={"max_steps": 2, "eval_every": 2, "n_val": 8, "target_accuracy": None})
    ckpt = tmp_path / "_checkpoints" / ex.run_id(spec)
    ckpt.mkdir(parents=True)
    model = ex.build_model(spec)
    other = [{"task_args": {"length": 3}, "num_segments": 1, "steps": 2, "val_accuracy": 0.5}]
    model.save(ckpt / ex.CURRICULUM_CHECKPOINT, {"curriculum": json.dumps(other)})
    with pytest.raises(ValueError, match="other curriculum stages"):
        ex.run_grid([spec], tmp_path)
    model.save(ckpt / ex.CURRICULUM_CHECKPOINT)   # no record of the stages at all
    with pytest.raises(ValueError, match="not a curriculum checkpoint"):
        ex.run_grid([spec], tmp_path)


def test_select_filters_kinds_and_segments_and_adds_the_curriculum():
    specs = ex.select(ex.get_grid("p1-copy"), kinds=["rmt", "txl"], segments=[1, 9],
                      curriculum={})
    assert [(s["kind"], s["num_segments"]) for s in specs] == [
        ("txl", 1), ("rmt", 1), ("txl", 9), ("rmt", 9)]
    assert [s["curriculum"] is not None for s in specs] == [False, False, True, True]


def test_runs_are_deterministic_in_the_seed(tmp_path):
    a = ex.run_grid([tiny("rmt", seed=3)], tmp_path / "a")[0]
    b = ex.run_grid([tiny("rmt", seed=3)], tmp_path / "b")[0]
    c = ex.run_grid([tiny("rmt", seed=4)], tmp_path / "c")[0]
    assert losses(a) == losses(b)
    assert a["curve"]["eval"] == b["curve"]["eval"] and a["metrics"] == b["metrics"]
    assert losses(a) != losses(c)
    assert a["run_id"] != c["run_id"]


def test_run_ids_are_readable_and_distinct():
    rid = ex.run_id(tiny("rmt", seed=7))
    assert rid == "copy4-s2-rmt-m6-L1-d16-bpttfull-adam-lr0p003-b4-st8-seed7"
    specs = [tiny(k, seed=s, num_segments=n) for k in ex.KINDS for s in (0, 1) for n in (1, 2)]
    specs.append(tiny("rmt", bptt_depth=1))
    assert len({ex.run_id(s) for s in specs}) == len(specs)
    with pytest.raises(ValueError, match="duplicate"):
        ex.run_grid([tiny("rmt"), tiny("rmt")], "/nonexistent/never-written")


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError, match="kind"):
        tiny("lstm")
    with pytest.raises(ValueError, match="baseline"):
        tiny("transformer", memory=4)
    with pytest.raises(ValueError, match="task"):
        ex.make_spec("sorting", 2, "rmt")
    with pytest.raises(ValueError, match="missing"):
        ex.normalize_spec({"task": "copy"})
    with pytest.raises(ValueError, match="unknown grid"):
        ex.get_grid("p9")


def test_named_grids_follow_the_paper_and_the_memory_conventions():
    expect = {"p1-copy": ("copy", [1, 3, 6, 9], {1: 72, 3: 24, 6: 12, 9: 8}),
              "p1-reverse": ("reverse", [1, 2, 4, 6], {1: 48, 2: 24, 4: 12, 6: 8}),
              "p1-retrieval": ("retrieval", [1, 2, 3, 4, 5], {1: 10, 2: 5, 3: 4, 4: 3, 5: 2})}
    for name, (task, segments, seg_len) in expect.items():
        grid = ex.get_grid(name)
        assert len(grid) == 4 * len(segments)
        assert sorted({s["num_segments"] for s in grid}) == segments
        assert {s["kind"] for s in grid} == set(ex.KINDS)
        for s in grid:
            assert s["task"] == task and not s["quick"]
            want = 0 if s["kind"] == "transformer" else seg_len[s["num_segments"]]
            assert s["memory"] == want, (name, s["kind"], s["num_segments"])
            assert s["model"] == ex.PAPER_MODELS[task]
            assert s["batch_size"] == 32 and s["optimizer"]["clip_norm"] == 0.25
            model = ex.build_model(s)
            cfg = model.config
            assert cfg.segment_len == seg_len[s["num_segments"]]
            assert cfg.num_mem_tokens == (want if s["kind"] in ("rmt", "memtr") else 0)
            assert cfg.mem_len == (want if s["kind"] == "txl" else 0)
        quick = ex.get_grid(name, quick=True)
        assert [ex.run_id(q) for q in quick] == [ex.run_id(ex.quick_spec(s)) for s in grid]
        for q in quick:
            assert q["quick"] and q["model"]["n_layers"] == 2 and q["model"]["d_model"] == 32
            assert 30 <= q["steps"] <= 60 and ex.run_id(q).startswith("quick-")
    assert len(ex.get_grid("p1")) == 52


def test_cli_runs_a_quick_grid_and_lists_run_ids(tmp_path, capsys):
    assert ex.main(["p1-retrieval", "--out", str(tmp_path), "--list", "--quick"]) == 0
    listed = capsys.readouterr().out.split()
    assert len(listed) == 20 and all(r.startswith("quick-retrieval4") for r in listed)
    assert ex.main(["p1-retrieval", "--out", str(tmp_path), "--quick"]) == 0
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == sorted(listed)
    out = capsys.readouterr().out
    assert "retrieval  5 segments      RMT" in out
    assert rmt.get_num_threads() == 1    # restored to the fixture's setting


def test_results_are_written_atomically(tmp_path):
    target = tmp_path / "r.json"
    ex._write_json_atomic(target, {"a": 1})
    with pytest.raises(TypeError):
        ex._write_json_atomic(target, {"a": object()})   # fails while writing
    assert json.loads(target.read_text()) == {"a": 1}    # the old file is intact
    assert os.listdir(tmp_path) == ["r.json"]            # and no temporary is left
    mask = os.umask(0o022)
    try:
        ex._write_json_atomic(target, {"a": 2})
    finally:
        os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o644       # an ordinary file, not mkstemp's 0600


def test_a_saved_model_gives_attention_maps_of_its_memory_rows(tmp_path):
    spec = tiny("rmt")
    result = ex.run_grid([spec], tmp_path, save_models=True)[0]
    path = ex.model_path(tmp_path, ex.run_id(spec))
    assert result["model"] == f"models/{ex.run_id(spec)}.safetensors" and path.exists()
    model = rmt.load(path)
    task = ex.make_task(spec)
    test = task.split(spec["n_val"], spec["n_test"])["test"]
    # the saved model is the reported one
    assert rmt.evaluate(model, test)["accuracy"] == pytest.approx(
        result["metrics"]["test_accuracy"])
    maps = ex.attention_maps(model, test["tokens"][:4])
    S, L = spec["num_segments"], spec["model"]["n_layers"]
    rows = model.segment_rows()
    Q = rows["write"].stop
    assert maps.shape == (S, L, Q, Q)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    assert np.all(maps[:, :, rows["read"], rows["tokens"]] == 0)   # the read block is blind to x
    # the same as averaging the stream's own maps
    _, state = model.step(test["tokens"][:4, :task.segment_len])
    np.testing.assert_allclose(maps[0, 0], state.attention(0).mean(axis=(0, 1)), rtol=1e-6)
    with pytest.raises(ValueError, match="segment_len"):
        ex.attention_maps(model, test["tokens"][:4, :-1])


# ---- language modelling (P1 Tables 2 and 4): the "lm" task, Tr-XL+RMT, bits per byte ----

def tiny_lm(kind="rmt", memory=None, bptt=None, cache=None, corpus=None, **kw):
    args = dict(task_args={"segment_len": 8, **({"corpus": corpus} if corpus else {})},
                model=dict(n_layers=1, n_heads=2, d_model=16, d_head=None, d_ff=32, dropout=0.0),
                memory=memory, bptt_depth=bptt, cache=cache, steps=6, batch_size=4,
                eval_every=3, n_val=5, n_test=7, target_accuracy=None,
                optimizer={"lr": 3e-3, "warmup_steps": 2})
    args.update(kw)
    return ex.make_spec("lm", 3, kind, **args)


@pytest.fixture
def small_corpus(tmp_path):
    # random words: no window of 24 bytes occurs twice, so "this window is in train" can fail
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 9)))
             for _ in range(1200)]
    text = "\n".join(" ".join(words[i:i + 10]) for i in range(0, len(words), 10)) + "\n"
    path = tmp_path / "austen.txt"
    path.write_text(text)
    return str(path)


def test_lm_task_windows_come_from_their_own_split(small_corpus):
    from rmt.tasks import LanguageModelTask

    task = LanguageModelTask(segment_len=8, corpus=small_corpus, num_segments=3, seed=5)
    c = task.corpus
    assert task.vocab_size == 256 and task.seq_len == 24
    split = task.split(n_val=4, n_test=3)
    assert split["val"]["tokens"].shape == (4, 24) and split["test"]["tokens"].shape == (3, 24)
    # validation: the valid split's first 4 * 24 + 1 bytes, consecutive, targets shifted by one
    np.testing.assert_array_equal(split["val"]["tokens"].ravel(), c.valid[:96])
    np.testing.assert_array_equal(split["val"]["targets"].ravel(), c.valid[1:97])
    np.testing.assert_array_equal(split["test"]["tokens"].ravel(), c.test[:72])
    # training windows: consecutive bytes of the train split, a function of (seed, step)
    batches = task.train_batches(6)
    b = batches(11)
    np.testing.assert_array_equal(b["tokens"], batches(11)["tokens"])
    assert not np.array_equal(b["tokens"], batches(12)["tokens"])
    train = c.train.tobytes()
    for row, tgt in zip(b["tokens"], b["targets"]):
        assert bytes(row.astype(np.uint8)) in train
        np.testing.assert_array_equal(row[1:], tgt[:-1])
    for name in ("val", "test"):           # held-out windows never occur in the train split
        for row in split[name]["tokens"]:
            assert bytes(row.astype(np.uint8)) not in train
    other = LanguageModelTask(segment_len=8, corpus=small_corpus, num_segments=3, seed=6)
    assert not np.array_equal(other.train_batches(6)(11)["tokens"], b["tokens"])
    with pytest.raises(ValueError, match="segment_len"):
        LanguageModelTask(segment_len=0, corpus=small_corpus)
    with pytest.raises(TypeError, match="corpus"):
        LanguageModelTask(corpus=3)
    with pytest.raises(FileNotFoundError):
        LanguageModelTask(corpus=small_corpus + ".missing")
    with pytest.raises(ValueError, match="valid windows"):
        task.split(n_val=0)
    with pytest.raises(ValueError, match="does not fit in the valid split"):
        LanguageModelTask(segment_len=200, corpus=small_corpus, num_segments=3)
    with pytest.raises(ValueError, match="batch_size"):
        task.train_batches(0)


def test_lm_task_default_corpus_is_the_austen_novels():
    from rmt.tasks import LanguageModelTask

    task = LanguageModelTask(segment_len=64, num_segments=4)
    assert len(task.corpus.train) > 3_000_000
    text = bytes(task.split(2, 2)["val"]["tokens"].ravel().astype(np.uint8)).decode("utf-8", "replace")
    assert re.search(r"[a-z]+ [a-z]+ [a-z]+", text), text


def test_lm_runs_report_bits_per_byte_and_txl_rmt_has_both_memories(tmp_path, small_corpus):
    grid = [tiny_lm("transformer", corpus=small_corpus),
            tiny_lm("txl", 8, corpus=small_corpus),
            tiny_lm("rmt", 4, 1, corpus=small_corpus),
            tiny_lm("txl_rmt", 4, 1, cache=8, corpus=small_corpus)]
    results = ex.run_grid(grid, tmp_path)
    for r in results:
        m = r["metrics"]
        for k in ("val", "test", "last_val", "last_test"):
            assert m[f"{k}_bpc"] == pytest.approx(m[f"{k}_loss"] / math.log(2))
        assert 0 < m["test_bpc"] < 9
    cfg = ex.build_model(grid[3]).config
    assert isinstance(ex.build_model(grid[3]), rmt.RMT)
    assert (cfg.num_mem_tokens, cfg.mem_len) == (4, 8)
    assert "-txl_rmt-m4c8-" in ex.run_id(grid[3]) and "-bptt1-" in ex.run_id(grid[3])
    rows = ex.lm_table(ex.load_results(tmp_path))
    assert [r["label"] for r in rows] == ["Baseline", "Tr-XL [8]", "RMT [4] BPTT-1",
                                          "Tr-XL+RMT [8+4] BPTT-1"]
    assert ex.summary_table(ex.load_results(tmp_path)) == []   # accuracy tables skip LM runs
    # the model a run reports is better than its initialisation on the test windows
    task = ex.make_task(grid[2])
    init = rmt.evaluate(ex.build_model(grid[2]), [task.split(5, 7)["test"]])["loss"]
    assert results[2]["metrics"]["test_loss"] < init


def test_lm_specs_reject_a_cache_on_other_kinds():
    with pytest.raises(ValueError, match="only txl_rmt"):
        ex.make_spec("lm", 2, "rmt", task_args={"segment_len": 8}, cache=8)
    spec = tiny_lm("txl_rmt", 4)
    assert spec["cache"] == 8          # default: the segment length
    bad = {**spec, "cache": 0}
    with pytest.raises(ValueError, match="cache"):
        ex.normalize_spec(bad)
    with pytest.raises(ValueError, match="only txl_rmt"):
        ex.normalize_spec({**tiny_lm("txl", 4), "cache": 8})


def test_the_lm_grid_has_the_shape_of_p1_tables_2_and_4():
    grid = ex.get_grid("p1-lm")
    labels = [ex.lm_label(s) for s in grid]
    assert labels == ["Baseline", "Tr-XL [10]", "Tr-XL [20]", "Tr-XL [40]", "Tr-XL [64]",
                      "Tr-XL [128]",
                      "RMT [5] BPTT-2", "RMT [10] BPTT-2", "RMT [20] BPTT-2", "RMT [10] BPTT-0",
                      "RMT [10] BPTT-1", "RMT [10] BPTT-3", "Tr-XL+RMT [64+10] BPTT-2"]
    assert len({ex.run_id(s) for s in grid}) == len(grid)
    for s in grid:
        assert s["task"] == "lm" and s["num_segments"] == 4 and s["target_accuracy"] is None
        assert s["task_args"] == {"segment_len": 64} and s["model"] == ex.PAPER_MODELS["lm"]
    assert ex.main(["p1-lm", "--out", "unused", "--list", "--kinds", "txl_rmt"]) == 0


def test_the_long_lm_grid_is_four_cells_of_the_lm_grid_trained_four_times_longer():
    short = {ex.lm_label(s): s for s in ex.get_grid("p1-lm")}
    long = ex.get_grid("p1-lm-long")
    assert [ex.lm_label(s) for s in long] == ["RMT [10] BPTT-2", "RMT [10] BPTT-0", "Tr-XL [10]",
                                              "Baseline"]
    for s in long:
        base = short[ex.lm_label(s)]
        assert s["steps"] == 4 * base["steps"] == ex.LM_LONG_STEPS
        assert s["eval_every"] == s["checkpoint_every"] == ex.LM_LONG_STEPS // 10
        assert {k: v for k, v in s.items() if k not in ("steps", "eval_every", "checkpoint_every")} \
            == {k: v for k, v in base.items() if k not in ("steps", "eval_every", "checkpoint_every")}
        assert ex.run_id(s) == ex.run_id(base).replace("-st1000-", "-st4000-")


def test_run_ids_of_a_corpus_path_name_the_file_and_hash_the_path(tmp_path, small_corpus):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "austen.txt").write_text(open(small_corpus).read())
    a, b = tiny_lm("rmt", 4, corpus=small_corpus), tiny_lm("rmt", 4, corpus=str(other / "austen.txt"))
    ra, rb = ex.run_id(a), ex.run_id(b)
    assert ra.startswith("lm8_austen.txt.") and rb.startswith("lm8_austen.txt.") and ra != rb
    assert "/" not in ra and ex.run_id(tiny_lm("rmt", 4)).startswith("lm8-s3-rmt-m4-")


def test_a_results_file_written_before_a_spec_key_existed_is_still_the_same_run(tmp_path):
    spec = tiny()
    ex.run_grid([spec], tmp_path)
    path = tmp_path / f"{ex.run_id(spec)}.json"
    old = json.loads(path.read_text())
    del old["spec"]["curriculum"]          # as in files written before the curriculum option
    path.write_text(json.dumps(old))
    lines = []
    ex.run_grid([spec], tmp_path, log=lines.append)
    assert lines == [f"[1/1] {ex.run_id(spec)}: done, skipped"]
    old["spec"]["steps"] = 9               # a real difference is still refused, and named
    path.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="differs in: steps"):
        ex.run_grid([spec], tmp_path)


def _committed_results():
    """Every results file of the runner under results/ (they carry an `engine` record)."""
    root = Path(__file__).resolve().parents[1] / "results"
    for path in sorted(root.rglob("*.json")):
        with open(path) as fh:
            record = json.load(fh)
        if isinstance(record, dict) and isinstance(record.get("engine"), dict):
            yield path, record


def test_the_committed_p1_results_are_the_runs_their_names_say():
    folders = {"p1", "p1_copy120", "p1_lm", "p1_lm_long", "p1_quadratic"}
    records = [(path, r) for path, r in _committed_results() if path.parent.name in folders]
    assert len(records) > 100
    for path, r in records:
        spec = ex.normalize_spec(r["spec"])
        assert ex.run_id(spec) == path.stem == r["run_id"]


def _git(*args):
    out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent,
                         capture_output=True, text=True)
    return out.returncode, out.stdout.strip()


def test_every_committed_result_names_the_engine_commit_that_produced_it():
    records = list(_committed_results())
    assert len(records) > 100
    commits = set()
    for path, record in records:
        commit = record["engine"].get("commit")
        assert isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{40}", commit), path
        commits.add(commit)
    # In a full git checkout (CI's clone, a developer's), each of them is in the history; a
    # shallow clone or an unpacked sdist has no history to look in.
    code, shallow = _git("rev-parse", "--is-shallow-repository")
    if code == 0 and shallow == "false":
        missing = sorted(c for c in commits if _git("cat-file", "-e", c + "^{commit}")[0] != 0)
        assert missing == []
