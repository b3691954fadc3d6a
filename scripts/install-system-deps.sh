#!/usr/bin/env bash
# The Debian packages the project needs: the C++ build's headers (xtensor, xsimd, xtl) and the
# default language-modelling corpus, Jane Austen's six novels as shipped by r-cran-janeaustenr
# (rmt.data.default_corpus reads its data files directly; R itself is never run).
# Skips apt entirely when they are already there.
set -euo pipefail
need=()
for pkg in xtl-dev libxtensor-dev libxsimd-dev r-cran-janeaustenr; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
