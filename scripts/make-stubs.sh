#!/usr/bin/env bash
# Regenerates the type stubs of the compiled module (python/rmt/_core/*.pyi) from the built
# extension. tests/test_stubs.py fails when they fall out of date.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q pybind11-stubgen
out=$(mktemp -d)
PYTHONPATH=python pybind11-stubgen rmt._core -o "$out"
rm -rf python/rmt/_core
cp -r "$out/rmt/_core" python/rmt/_core
echo "stubs written to python/rmt/_core/"
