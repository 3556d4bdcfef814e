#!/usr/bin/env bash
# Idempotent set-up of the anomalib venv used by the external baseline (benchmarks/baselines/anomalib_runner.py).
# Usage: benchmarks/setup_anomalib.sh [VENV]   (default /work/bench-venv; several GB: torch 2.14.1 + torchvision)
# The harness finds it through ANOMALYSCOUT_ANOMALIB_PYTHON (default /work/bench-venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${1:-/work/bench-venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.anomalyscout-anomalib"
want="$(sha256sum requirements-anomalib.txt | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
"$VENV/bin/python" -m pip install --quiet -r requirements-anomalib.txt
"$VENV/bin/python" -c "import anomalib, torchvision; print('anomalib', anomalib.__version__)"
echo "$want" > "$stamp"
echo "anomalib venv ready: $VENV/bin/python (export ANOMALYSCOUT_ANOMALIB_PYTHON=$VENV/bin/python)"
