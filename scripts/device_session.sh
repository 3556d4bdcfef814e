#!/usr/bin/env bash
# What to run when a session is lent a GPU machine (the `device` tool runs this in a copy of the work tree).
# Continues the committed CPU GAN run on CUDA (bf16 autocast + torch.compile) for a fixed number of minutes,
# brings back its checkpoint, log and samples under $OUT, and measures the GPU speed target
# (300-slice 512x512 CT in fast mode) with benchmarks.speed's GPU check. Usage:
#   scripts/device_session.sh [MINUTES]        (default 8; keep the whole call under the device's time limit)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-8}"
OUT="${OUT:-runs/device-out}"
RUN="${RUN:-training/gan-cpu-mid}"
mkdir -p "$OUT"
python -m pip install --quiet -e ".[fid]" >/dev/null 2>&1 || python -m pip install --quiet -e . >/dev/null
python -m AnomalyScoutLib phantom --out runs/phantom-normal --n 40 --seed 1000 >/dev/null
cp -r "$RUN" runs/gan-device
# The run's data_source names this machine's phantom folder; point it at the copy made above.
python - <<'PY'
import json, pathlib
p = pathlib.Path("runs/gan-device/training_options.json")
s = json.loads(p.read_text()); s["data_source"] = str(pathlib.Path("runs/phantom-normal").resolve())
p.write_text(json.dumps(s, indent=2))
PY
timeout --signal=INT "$((MINUTES * 60))" python -m AnomalyScoutLib train-gan --out runs/gan-device --resume \
    --kimg 100000 --precision bf16 --compile --device cuda --no-progress --checkpoint-every 60 || true
cp runs/gan-device/checkpoint.safetensors runs/gan-device/log.csv "$OUT"/
cp runs/gan-device/samples/latest.png "$OUT"/samples-latest.png 2>/dev/null || true
python -c "import json, sys; from benchmarks.speed import measure_gpu; json.dump(measure_gpu(16), sys.stdout)" \
    > "$OUT/speed-gpu.json" || true
cat "$OUT/speed-gpu.json"
