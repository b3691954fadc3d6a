#!/usr/bin/env bash
# The Debian packages the C++ build needs (headers only): xtensor, xsimd, xtl.
# Skips apt entirely when they are already there.
set -euo pipefail
need=()
for pkg in xtl-dev libxtensor-dev libxsimd-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
