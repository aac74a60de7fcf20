#!/usr/bin/env bash
# Reproducibility of the whole DVC pipeline, twice (issue 18, item 3): two fresh clones of HEAD, `dvc repro -f`
# in each (the raw data copied from this checkout; nothing pulled from a remote), then one table: every
# metrics.json value and every weights file's sha256, clone A | clone B | same?
#
#   bash bench/dvc_repro_twice.sh [WORKDIR]      # default WORKDIR: /tmp/productgen-repro-twice
#
# Expected time on the 2-core CPU: twice the pipeline (about 16 min each today, so 32-40 min), run one after the
# other so the clones do not compete for the cores (timings would not be comparable). Exit 1 when anything
# differs. The frozen champion stages are not run (dvc repro never runs them).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-/tmp/productgen-repro-twice}"
export DO_NOT_TRACK=true DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false
export PATH="$ROOT/.venv/bin:$PATH"
CACHE="$(cd "$ROOT" && dvc cache dir)"
rm -rf "$WORK" && mkdir -p "$WORK"
for side in a b; do
  git clone -q "$ROOT" "$WORK/$side"
  (
    cd "$WORK/$side"
    dvc cache dir --local "$CACHE"          # share this checkout's cache: the raw data is there, nothing to pull
    dvc config --local cache.type copy      # outputs are plain files in each clone, never links into the cache
    cp -a "$ROOT/data" data                 # the raw dataset (DVC-tracked, not in git)
    start=$(date +%s)
    dvc repro -f > "$WORK/$side.log" 2>&1
    echo "$(( $(date +%s) - start ))" > "$WORK/$side.seconds"
  )
  echo "clone $side: dvc repro -f in $(cat "$WORK/$side.seconds") s (log $WORK/$side.log)"
done
python - "$WORK" <<'PY'
import hashlib, json, sys
from pathlib import Path

work = Path(sys.argv[1])
a, b = work / "a", work / "b"

def flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flat(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float, str, bool)) or v is None:
            yield f"{prefix}{k}", v

rows = []
for m in sorted(a.glob("artifacts/**/metrics.json")):
    rel = m.relative_to(a)
    other = b / rel
    va = dict(flat(json.loads(m.read_text())))
    vb = dict(flat(json.loads(other.read_text()))) if other.is_file() else {}
    for k in sorted(va):
        if k.startswith("per_category.") or k in ("mlflow_run_id",):
            continue
        rows.append((f"{rel}:{k}", str(va[k]), str(vb.get(k, "-")), va[k] == vb.get(k)))
for w in sorted(a.glob("artifacts/**/model/*.safetensors")):
    rel = w.relative_to(a)
    ha = hashlib.sha256(w.read_bytes()).hexdigest()[:16]
    hb = hashlib.sha256((b / rel).read_bytes()).hexdigest()[:16] if (b / rel).is_file() else "-"
    rows.append((f"{rel} sha256", ha, hb, ha == hb))
width = max(len(r[0]) for r in rows)
print(f"{'what':<{width}}  {'clone A':<20}  {'clone B':<20}  same")
for what, va, vb, same in rows:
    print(f"{what:<{width}}  {va[:20]:<20}  {vb[:20]:<20}  {'yes' if same else 'NO'}")
differ = sum(not r[3] for r in rows)
times = [int((work / f"{s}.seconds").read_text()) for s in "ab"]
print(f"{len(rows)} values, {differ} differ; dvc repro -f took {times[0]} s and {times[1]} s")
sys.exit(1 if differ else 0)
PY
