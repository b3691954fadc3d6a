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


def runtime_parameters(fn):
    """Parameter names from a pybind11 function's signature line (its docstring's first line);
    None for an overloaded function (several signatures)."""
    doc = fn.__doc__ or ""
    if "Overloaded function" in doc:
        return None
    sig = doc.split("\n", 1)[0]
    inner = sig[sig.index("(") + 1:sig.rindex(")")]
    names, depth, token = [], 0, ""
    for ch in inner + ",":
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            if token.strip():
                names.append(token.split(":")[0].split("=")[0].strip())
            token = ""
        else:
            token += ch
    return names


@pytest.mark.parametrize("module,stub", [(_core, "__init__.pyi"), (_core.ops, "ops.pyi"),
                                         (_core.kernels, "kernels.pyi")])
def test_stub_functions_take_the_bound_parameters(module, stub):
    tree = ast.parse((STUBS / stub).read_text())
    stale = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        fn = getattr(module, node.name, None)
        if fn is None or not callable(fn):
            continue
        bound = runtime_parameters(fn)
        if bound is None:
            continue
        stubbed = [a.arg for a in node.args.args]
        if stubbed != bound:
            stale.append(f"{node.name}: stub {stubbed}, bound {bound}")
    assert not stale, f"{stub} is stale ({'; '.join(stale)}): run scripts/make-stubs.sh"
