"""The type stubs of the compiled module (python/rmt/_core/*.pyi) name everything it exports:
regenerate them with scripts/make-stubs.sh after changing a binding."""
import ast
from pathlib import Path

import pytest

import rmt
from rmt import _core

STUBS = Path(rmt.__file__).parent / "_core"


def stub_names(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("module,stub", [(_core, "__init__.pyi"), (_core.ops, "ops.pyi"),
                                         (_core.kernels, "kernels.pyi")])
def test_stub_names_every_export(module, stub):
    exported = {n for n in dir(module) if not n.startswith("_")}
    missing = exported - stub_names(STUBS / stub)
    assert not missing, f"{stub} lacks {sorted(missing)}: run scripts/make-stubs.sh"
