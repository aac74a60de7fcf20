#!/usr/bin/env bash
# How far the committed metrics move on a CPU with another instruction set (issue 18, item 3). A fresh clone of
# HEAD runs `dvc repro -f` with PyTorch, oneDNN and MKL held to that instruction set (the kernels an AVX2-only
# CPU would run: other vector widths, so other summation orders and roundings), then prints
#   * `dvc metrics diff HEAD` in the clone: DVC's view of what moved against the committed metrics, and
#   * one line per metric and weights file: committed | this run | absolute and relative difference.
#
#   bash bench/dvc_repro_cpu.sh [ISA] [WORKDIR]   # ISA: avx2 (default), avx512, or native (no limit)
#
# `native` on the machine that committed the lock is the same-CPU check (bench/dvc_repro_twice.sh runs two).
# Expected time: one whole pipeline (about 18 min on a quiet 2-core CPU). The frozen champion stages are not run.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ISA="${1:-avx2}"
WORK="${2:-/tmp/productgen-repro-$ISA}"
export DO_NOT_TRACK=true DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false
export PATH="$ROOT/.venv/bin:$PATH"
case "$ISA" in
  native) ;;
  avx2) export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ;;
  avx512) export ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE MKL_ENABLE_INSTRUCTIONS=AVX512 ;;
  *) echo "bench/dvc_repro_cpu.sh: unknown ISA '$ISA' (choose avx2, avx512 or native)" >&2; exit 2 ;;
esac
CACHE="$(cd "$ROOT" && dvc cache dir)"
rm -rf "$WORK"
git clone -q "$ROOT" "$WORK"
cd "$WORK"
dvc cache dir --local "$CACHE"          # share the checkout's cache: the raw data is there, nothing to pull
dvc config --local cache.type copy      # outputs are plain files in the clone, never links into the cache
cp -a "$ROOT/data" data                 # the raw dataset (DVC-tracked, not in git)
python -c "import torch; print('torch CPU capability:', torch.backends.cpu.get_cpu_capability())"
start=$(date +%s)
dvc repro -f > "$WORK.log" 2>&1
seconds=$(( $(date +%s) - start ))
echo "dvc repro -f ($ISA) in $seconds s (log $WORK.log)"
echo "--- dvc metrics diff HEAD (the clone's run against the committed metrics)"
dvc metrics diff HEAD --precision 6 || true
python - "$ROOT" "$WORK" "$ISA" <<'PY'
import hashlib, json, sys
from pathlib import Path

root, work, isa = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]


def flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flat(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield f"{prefix}{k}", float(v)


rows, same = [], 0
for m in sorted(root.glob("artifacts/**/metrics.json")):
    rel = m.relative_to(root)
    other = work / rel
    if not other.is_file():
        continue
    a, b = dict(flat(json.loads(m.read_text()))), dict(flat(json.loads(other.read_text())))
    for k in sorted(a):
        if k not in b:
            continue
        if a[k] == b[k]:
            same += 1
            continue
        rel_diff = abs(b[k] - a[k]) / abs(a[k]) if a[k] else float("inf")
        rows.append((f"{rel.parent.as_posix()}:{k}", a[k], b[k], b[k] - a[k], rel_diff))
weights_same = weights = 0
for w in sorted(root.glob("artifacts/**/model/*.safetensors")):
    other = work / w.relative_to(root)
    if other.is_file():
        weights += 1
        weights_same += hashlib.sha256(w.read_bytes()).digest() == hashlib.sha256(other.read_bytes()).digest()
print(f"--- committed vs {isa}: {same} metric values identical, {len(rows)} differ; "
      f"{weights_same} of {weights} weight files identical")
if rows:
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  {'committed':>12}  {isa:>12}  {'difference':>12}  relative")
    for what, a, b, d, r in rows:
        print(f"{what:<{width}}  {a:>12.6g}  {b:>12.6g}  {d:>+12.4g}  {r:.2%}")
PY
