#!/usr/bin/env bash
# The checks that need a GPU, as ONE prepared plan of two device calls (docs/gpu.md has the exact `run` calls):
#
#   bash bench/gpu_checks.sh stage      # HERE, before the lease: FID network in two parts under .gpu-carry/, sizes
#   bash bench/gpu_checks.sh A          # device call A (carry .gpu-carry/a): throughput benchmarks, <= 260 s
#       bench/bench_dcgan.py    the pytorch/examples DCGAN recipe (PNG ImageFolder, 8 and 2 loader workers, fp32
#                               eager) against our engine at 64 px, same batch (target >= 3x)
#       bench/bench_restore.py  the restorer's images/s: batch 256 eager (the old way) vs NCHW, batch 1024, CUDA graphs
#   bash bench/gpu_checks.sh B          # device call B (carry data/fashion-mnist + .gpu-carry/b): <= 490 s
#       join the FID network (sha1 checked), prepare the dataset, bench/gpu_gan.py: the GAN recipes and the VAE
#       trained side by side for $GAN_BUDGET s, each scored 10k vs 10k (`productgen evaluate` defaults), then
#       bench/bench_fid50k.py: FID of 50,000 images of the best GAN in <= 30 s (strict fp32)
#   bash bench/gpu_checks.sh A --tiny   # CPU rehearsal of a call at tiny sizes (also: B --tiny); --dry-run = --tiny
#   bash bench/gpu_checks.sh previous   # the 2026-11-30 set: style benchmark, every task's smoke run, denoisers
#
# Why two calls: the FID network (default_1.pt, 87 MB; 80 MB gzipped) and the Fashion-MNIST files (31 MB) do not fit
# one call's 64 MiB carry. Call A brings the first part and leaves it in $STAGE (files outside the repo stay while
# the machine is warm, 30 s after a call: start B at once); call B brings the rest with the data. If B finds no
# first part (a fresh machine), it still trains and brings the models back, to be scored here with
# `productgen evaluate` (about 30 minutes per model on 2 CPU cores).
# Every step prints JSON lines and has its own time limit. Results in $OUT (default artifacts/gpu-checks): log-A.txt,
# results-A.tar.gz | log-B.txt, results-B.tar.gz (summaries, profiles, metrics, reports, grids, logs), gan-samples.png,
# models.tar.part-* (the best GAN: generator fp32, discriminator fp16; the VAE's decoder), at most 8 files.
set -u -o pipefail
cd "$(dirname "$0")/.."
MODE=${1:-help}
shift || true
TINY=""
for a in "$@"; do case $a in --tiny | --dry-run) TINY=1 ;; *) echo "unknown option $a" >&2; exit 2 ;; esac; done
OUT=${OUT:-artifacts/gpu-checks}
STAGE=${STAGE:-/tmp/pg-stage}     # survives between the two calls while the machine stays warm
W=${WORK:-/tmp/productgen-gpu}
GAN_BUDGET=${GAN_BUDGET:-280}    # training seconds of every generator run (they share the GPU; imports and compile included)
GAN_RUNS=${GAN_RUNS:-"gan:base:gpu-gan gan:nosm:gpu-gan:gan.self_modulation=false gan:w96:gpu-gan:gan.g_channels=96,gan.d_channels=96 vae:vae:gpu-vae"}
FID_SHA1=a16e4d89c0ecbc17a915dd76ea9e41211aa82562
PART1_BYTES=${PART1_BYTES:-}   # of the gzipped network (default: half of network + data, so both calls carry the same)
PY=${PY:-python3}
[ -x .venv/bin/python ] && [ -z "${PY_SET:-}" ] && [ "$MODE" = stage ] && PY=.venv/bin/python
if [ -n "$TINY" ]; then
  DEVICE=${DEVICE:-cpu}; STAGE=$(mktemp -d /tmp/pg-stage-tiny.XXXX); W=$(mktemp -d /tmp/pg-work-tiny.XXXX)
  [ "$OUT" = artifacts/gpu-checks ] && OUT=$(mktemp -d /tmp/pg-out-tiny.XXXX); [ -x .venv/bin/python ] && PY=.venv/bin/python
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  DEVICE=${DEVICE:-cuda}
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true
say() { echo "[$(date +%T) +${SECONDS}s] $*"; }
LIMIT=${LIMIT:-}   # seconds this call may take (A: 260, B: 490; timeout_s 280 / 510: with a 2-minute start, 15 min)
left() {  # seconds left for a phase, keeping $1 for what must follow (the packing); capped at $2
  local l=$((LIMIT - SECONDS - $1)); [ $l -gt "${2:-100000}" ] && l=$2; [ $l -lt 5 ] && l=5; echo $l
}
machine() {
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, os; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU', 'cpus', os.cpu_count())"
}
travel() {  # bytes that travel with a call: tracked + untracked-not-ignored files + the carried paths
  { git ls-files -z; git ls-files -z -o --exclude-standard; } | xargs -0 -r du -cb 2>/dev/null | tail -n 1 | cut -f1
}

case $MODE in
stage)
  src=$($PY -c "from productgen.metrics.extractors import find_tf_inception; print(find_tf_inception())") || exit 1
  [ "$(sha1sum "$src" | cut -d' ' -f1)" = $FID_SHA1 ] || { echo "$src: wrong sha1"; exit 1; }
  ls data/fashion-mnist/train-images-idx3-ubyte.gz >/dev/null || { echo "data/fashion-mnist missing: productgen data fetch / dvc pull"; exit 1; }
  grep -qx '/.gpu-carry/' .gitignore || { echo ".gitignore lacks /.gpu-carry/ (the carried parts must be git-ignored)"; exit 1; }
  rm -rf .gpu-carry && mkdir -p .gpu-carry/a .gpu-carry/b
  gzip -9 -c "$src" > .gpu-carry/fid.gz
  PART1_BYTES=${PART1_BYTES:-$((($(stat -c %s .gpu-carry/fid.gz) + $(du -cb data/fashion-mnist | tail -n 1 | cut -f1)) / 2))}
  head -c "$PART1_BYTES" .gpu-carry/fid.gz > .gpu-carry/a/fid.gz.part-1
  tail -c +$((PART1_BYTES + 1)) .gpu-carry/fid.gz > .gpu-carry/b/fid.gz.part-2
  rm .gpu-carry/fid.gz
  [ "$(cat .gpu-carry/a/fid.gz.part-1 .gpu-carry/b/fid.gz.part-2 | gunzip | sha1sum | cut -d' ' -f1)" = $FID_SHA1 ] \
    || { echo "the parts do not join back to the network"; exit 1; }
  base=$(travel)
  a=$((base + $(du -cb .gpu-carry/a | tail -n 1 | cut -f1)))
  b=$((base + $(du -cb .gpu-carry/b data/fashion-mnist | tail -n 1 | cut -f1)))
  lim=$((64 * 1024 * 1024))
  echo "working tree that travels anyway: $base bytes"
  echo "call A: $a bytes of $lim ($((a * 100 / lim))%)   carry [\".gpu-carry/a\"]"
  echo "call B: $b bytes of $lim ($((b * 100 / lim))%)   carry [\"data/fashion-mnist\", \".gpu-carry/b\"]"
  [ $a -lt $lim ] && [ $b -lt $lim ] || { echo "OVER THE LIMIT: remove big untracked files; if the tracked tree alone is over 11 MB, see docs/gpu.md (fallback)"; exit 1; }
  echo 'run A: command "bash bench/gpu_checks.sh A", carry [".gpu-carry/a"], timeout_s 280'
  echo 'run B: command "bash bench/gpu_checks.sh B", carry ["data/fashion-mnist", ".gpu-carry/b"], timeout_s 510 (start it at once after A)'
  ;;

A)
  LIMIT=${LIMIT:-260}; [ -n "$TINY" ] && LIMIT=3000
  mkdir -p "$OUT" "$STAGE" "$W"
  exec > >(tee "$OUT/log-A.txt") 2>&1
  machine
  say "stash FID network part 1 in $STAGE"
  cp .gpu-carry/a/fid.gz.part-1 "$STAGE/" 2>/dev/null || say "no .gpu-carry/a/fid.gz.part-1 (run 'bash bench/gpu_checks.sh stage' here first)"
  if [ -n "$TINY" ]; then
    dc=(--tiny --recipes dcgan-engine gan-engine --source synthetic); rs=(--tiny --variants b256-eager b256-eager-nchw --source synthetic)
  else
    dc=(--workers 8 2 --images 60000 --steps 150 --warmup 20 --source synthetic --timeout 100)
    rs=(--variants b256-eager b256-eager-nchw b1024-eager b256-cudagraphs --steps 200 --warmup 30 --timeout 90)
  fi
  say "bench: DCGAN recipe vs our engine, 64 px, batch 128"
  timeout "$(left 95 "$([ -n "$TINY" ] && echo 3000 || echo 165)")" $PY bench/bench_dcgan.py --device "$DEVICE" "${dc[@]}" --json "$W/dcgan.json" || say "dcgan bench: exit $?"
  say "bench: restorer images/s"
  timeout "$(left 5)" $PY bench/bench_restore.py --device "$DEVICE" "${rs[@]}" --json "$W/restore.json" || say "restore bench: exit $?"
  tar -C "$W" -czf "$OUT/results-A.tar.gz" dcgan.json restore.json 2>/dev/null
  ls -la "$OUT" "$STAGE"
  say "done"
  ;;

B)
  LIMIT=${LIMIT:-490}; [ -n "$TINY" ] && LIMIT=3000
  mkdir -p "$OUT" "$STAGE" "$W"
  exec > >(tee "$OUT/log-B.txt") 2>&1
  machine
  if [ -n "$TINY" ]; then cp .gpu-carry/a/fid.gz.part-1 "$STAGE/" 2>/dev/null; fi   # the rehearsal has no call A
  cp .gpu-carry/b/fid.gz.part-2 "$STAGE/" 2>/dev/null || say "no .gpu-carry/b/fid.gz.part-2"
  noeval=()
  if [ -f "$STAGE/fid.gz.part-1" ] && [ -f "$STAGE/fid.gz.part-2" ]; then
    cat "$STAGE/fid.gz.part-1" "$STAGE/fid.gz.part-2" | gunzip > "$STAGE/default_1.pt"
    if [ "$(sha1sum "$STAGE/default_1.pt" | cut -d' ' -f1)" = $FID_SHA1 ]; then
      export PRODUCTGEN_TF_INCEPTION="$STAGE/default_1.pt"; say "FID network joined, sha1 ok"
    else
      say "FID network: wrong sha1 after joining; training only (score the models on the CPU)"; noeval=(--no-eval)
    fi
  else
    say "FID network part 1 missing (a fresh machine since call A?): training only, models come back for CPU scoring"
    noeval=(--no-eval)
  fi
  export PRODUCTGEN_FID_STATS_DIR="$W/fid-stats"
  if [ -n "$TINY" ]; then
    GAN_BUDGET=75; gg=(--tiny --tiny-steps 100000 --budget "$GAN_BUDGET"); GAN_RUNS="gan:base:gpu-gan vae:vae:gpu-vae"
    f5=(--tiny)
  else
    say "prepare the built-in dataset"
    [ -f artifacts/prepared/dataset.json ] || timeout "$(left 400)" $PY -m productgen data prepare || { say "data prepare failed"; exit 1; }
    gg=(--budget "$GAN_BUDGET" --eval-timeout 120 --max-steps "${MAX_STEPS:-0}"); f5=()
  fi
  say "generators: $GAN_RUNS for ${GAN_BUDGET}s each, side by side, then FID (10k vs 10k; --tiny: 30 vs 30)"
  timeout "$(left 25)" $PY bench/gpu_gan.py "${gg[@]}" "${noeval[@]}" --device "$DEVICE" --eval-device "$DEVICE" \
    --out "$W/gen" --runs $GAN_RUNS || say "generators: exit $?"
  best=$($PY -c "import json,sys; d=json.load(open(sys.argv[1])); r=d['runs']; b=d['summary']['best'].get('gan') or next((n for n,v in r.items() if v.get('task')=='gan' and 'error' not in v), ''); print(b)" "$W/gen/summary.json" 2>/dev/null)
  vae=$($PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(next((n for n,v in d['runs'].items() if v.get('task')=='vae' and 'error' not in v), ''))" "$W/gen/summary.json" 2>/dev/null)
  say "best GAN: ${best:-none}; VAE run: ${vae:-none}"
  if [ ${#noeval[@]} -eq 0 ] && [ "${FID50K:-1}" = 1 ]; then
    if [ -n "$best" ] && [ -d "$W/gen/$best/train/model" ]; then m=(--model "$W/gen/$best/train/model"); else m=(--random-generator); fi
    say "FID of 50,000 generated images (strict fp32), generation included"
    timeout "$(left 15 "$([ -n "$TINY" ] && echo 3000 || echo 120)")" $PY bench/bench_fid50k.py "${m[@]}" --device "$DEVICE" "${f5[@]}" --json "$W/fid50k.json" || say "fid50k: exit $?"
  fi
  say "pack results"
  $PY - "$W" "$best" "$vae" <<'EOF'
import json, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
w, best, vae = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
for name, keep in ((best, {"generator": None, "discriminator": "half"}), (vae, {"generator": None})):
    if not name or not (w / "gen" / name / "train" / "model" / "config.json").is_file():
        continue
    src, dst = w / "gen" / name / "train" / "model", w / "models" / name
    dst.mkdir(parents=True, exist_ok=True)
    for part, how in keep.items():
        t = load_file(str(src / f"{part}.safetensors"))
        save_file({k: v.half() if how == "half" and v.is_floating_point() else v for k, v in t.items()},
                  str(dst / f"{part}.safetensors"), metadata={"format": "productgen-weights"})
    (dst / "config.json").write_text((src / "config.json").read_text())
    (dst / "profile.yaml").write_text((w / "gen" / name / "profile.yaml").read_text())
    print(f"model {name} -> models/{name} (generator fp32{', discriminator fp16 for transport' if 'discriminator' in keep else ''})")
EOF
  tar -C "$W" -czf "$OUT/results-B.tar.gz" --exclude='*.safetensors' --exclude='checkpoints' --exclude='fid-stats' \
    --exclude='models' . 2>/dev/null
  if [ "${EXPORT_STATS:-0}" = 1 ]; then  # the test split's mu and sigma (no features) for a CPU evaluation without KID
    $PY - "$W/fid-stats" "$W/stats-export" <<'EOF'
import dataclasses, json, sys
from pathlib import Path
from productgen.metrics.cache import StatsCache
src, dst = StatsCache(sys.argv[1]), StatsCache(sys.argv[2])
for meta in Path(sys.argv[1]).glob("*.json"):
    stats = src.load(meta.stem)
    if stats is not None:
        print("exported", dst.save(meta.stem, dataclasses.replace(stats, features=None), {**{k: v for k, v in json.loads(meta.read_text()).items() if k in ("content_hash", "split", "extractor", "extractor_sha")}, "exported_from": "gpu-checks B (features dropped: FID only)"}))
EOF
    [ -d "$W/stats-export" ] && tar -C "$W" -cf - stats-export | split -b 15m - "$OUT/stats.tar.part-"
  fi
  g=$(ls "$W/gen/$best/train/samples/"*.png 2>/dev/null | tail -n 1); [ -n "$g" ] && cp "$g" "$OUT/gan-samples.png"
  [ -d "$W/models" ] && tar -C "$W" -cf - models | split -b 15m - "$OUT/models.tar.part-"
  ls -la "$OUT"
  say "done"
  ;;

previous)
  BUDGET=${BUDGET:-150}; CAL_STEPS=${CAL_STEPS:-300}; SMOKE_STEPS=${SMOKE_STEPS:-30}
  mkdir -p "$OUT" "$W"
  exec > >(tee "$OUT/log.txt") 2>&1
  if ls .whl/*.whl >/dev/null 2>&1; then   # wheels the GPU image lacks (EfficientNet-Lite0), carried in .whl/
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  fi
  machine
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
  ;;

*)
  sed -n '2,26p' "$0"
  [ "$MODE" = help ] || exit 2
  ;;
esac
