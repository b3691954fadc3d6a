"""Every notebook in notebooks/ runs top to bottom in its quick mode (RMT_NOTEBOOK_QUICK=1), as CI
runs it: a failing cell fails the test."""
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS if p.name == "p1_algorithmic.ipynb"]


def _snapshot(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(path, monkeypatch):
    monkeypatch.setenv("RMT_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # The kernel imports the in-tree package, whatever the current directory.
    python_dir = str(ROOT / "python")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (python_dir, os.environ.get("PYTHONPATH", "")) if p))
    figures = ROOT / "notebooks" / "figures"
    results = ROOT / "results"
    before = (_snapshot(figures), _snapshot(results))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()   # raises CellExecutionError naming the failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert errors == []
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "quick mode: True" in text
    # Quick mode writes neither figures nor results into the repository.
    assert (_snapshot(figures), _snapshot(results)) == before
