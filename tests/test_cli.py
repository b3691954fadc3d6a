"""The command line: train -> checkpoint -> eval, the demo in quick mode, clear errors."""
import json
import subprocess
import sys


def run(*args, check=True):
    return subprocess.run([sys.executable, "-m", "rmt", *args], capture_output=True, text=True,
                          check=check)


def test_train_then_eval(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    out = run("train", "--task", "copy", "--length", "4", "--segments", "2", "--kind", "rmt",
              "--layers", "1", "--d-model", "16", "--heads", "2", "--d-ff", "32", "--steps", "5",
              "--eval-every", "5", "--eval-samples", "16", "--no-progress", "--out", str(ckpt),
              "--log", str(tmp_path / "log.csv"))
    result = json.loads(out.stdout.strip().splitlines()[-2])
    assert result["steps"] == 5 and 0 <= result["test_accuracy"] <= 1
    out = run("eval", str(ckpt), "--task", "copy", "--length", "4", "--eval-samples", "16")
    assert 0 <= json.loads(out.stdout)["test_accuracy"] <= 1
    assert (tmp_path / "log.csv").read_text().startswith("step,loss")


def test_demo_quick_prints_the_table_and_saves_a_plot(tmp_path):
    out = run("demo", "--quick", "--no-progress", "--out", str(tmp_path))
    assert "| RMT |" in out.stdout and "| Transformer-XL |" in out.stdout
    assert (tmp_path / "demo.png").stat().st_size > 1000


def test_errors_are_messages_not_tracebacks(tmp_path):
    out = run("eval", str(tmp_path / "missing.safetensors"), check=False)
    assert out.returncode == 2 and "no checkpoint" in out.stderr and "Traceback" not in out.stderr


def test_train_and_eval_the_quadratic_task(tmp_path):
    ckpt = tmp_path / "q.safetensors"
    out = run("train", "--task", "quadratic", "--segments", "6", "--kind", "rmt", "--layers", "1",
              "--d-model", "16", "--heads", "2", "--d-ff", "32", "--steps", "3", "--eval-every",
              "3", "--eval-samples", "8", "--no-progress", "--out", str(ckpt))
    assert "QuadraticEquationsTask(num_segments=6, segment_len=30" in out.stdout
    result = json.loads(out.stdout.strip().splitlines()[-2])
    assert 0 <= result["test_sequence_accuracy"] <= 1 and 0 <= result["test_accuracy"] <= 1
    out = run("eval", str(ckpt), "--task", "quadratic", "--eval-samples", "8")
    metrics = json.loads(out.stdout)
    assert 0 <= metrics["test_sequence_accuracy"] <= 1 and 0 <= metrics["test_accuracy"] <= 1
    # a model of another task whose segments happen to be 30 long: a message, not a traceback
    other = tmp_path / "reverse.safetensors"
    run("train", "--task", "reverse", "--length", "30", "--segments", "2", "--kind", "rmt",
        "--layers", "1", "--d-model", "16", "--heads", "2", "--d-ff", "32", "--steps", "1",
        "--eval-every", "1", "--eval-samples", "8", "--no-progress", "--out", str(other))
    out = run("eval", str(other), "--task", "quadratic", "--eval-samples", "8", check=False)
    assert out.returncode == 2 and "vocabulary" in out.stderr and "Traceback" not in out.stderr
