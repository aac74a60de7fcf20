"""A trained VAE's FID sampled from N(0, I) against the same weights sampled from its fitted prior, in one run.

Why: ``vae.prior: fitted`` (models/vae.py) changes nothing but where samples draw their latents, so its worth is
measured on one set of weights: the model folder as exported (fitted per-category Gaussians) and a copy with the
prior buffers removed and ``vae.prior: normal`` (the decoder samples N(0, I), as before the option existed). Both
are scored by ``productgen evaluate``'s own code with the same seed, real set and fake count (default: the
published protocol, 10,000 samples vs the 10,000-image test split; the real statistics come from the cache after
the first).

    PYTHONPATH=src python bench/vae_prior.py artifacts/train/vae-cpu-2h/model
    PYTHONPATH=src python bench/vae_prior.py artifacts/train/vae-cpu-2h/model --num-fake 2000 --max-real 2000
    # on 2 cores: one variant per process and core, each writing its evaluation (metrics.json) under --out
    OMP_NUM_THREADS=1 python bench/vae_prior.py MODEL --variants normal --out OUT &
    OMP_NUM_THREADS=1 python bench/vae_prior.py MODEL --variants fitted --out OUT

Prints FID and KID of each and, with both, the ratio fitted / normal. Needs only the productgen core.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from productgen.config import EvaluateConfig  # noqa: E402
from productgen.evaluation.generation import evaluate  # noqa: E402

PRIOR_BUFFERS = ("prior_mean", "prior_scale")


def normal_copy(model: Path, dest: Path) -> Path:
    """``model`` with its prior buffers dropped and ``vae.prior: normal``: the same decoder sampling N(0, I)."""
    shutil.copytree(model, dest)
    cfg = json.loads((dest / "config.json").read_text(encoding="utf-8"))
    if cfg.get("model") != "vae" or cfg["vae"].get("prior") != "fitted":
        raise SystemExit(f"{model}: not a VAE exported with vae.prior: fitted")
    cfg["vae"]["prior"] = "normal"
    (dest / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    weights = load_file(str(dest / "generator.safetensors"))
    save_file({k: v for k, v in weights.items() if k not in PRIOR_BUFFERS}, str(dest / "generator.safetensors"))
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a vae model folder exported with vae.prior: fitted")
    ap.add_argument("--prepared", type=Path, default=ROOT / "artifacts" / "prepared")
    ap.add_argument("--num-fake", type=int, default=None, help="default: as many as real images")
    ap.add_argument("--max-real", type=int, default=None, help="default: the whole split")
    ap.add_argument("--out", type=Path, default=None, help="keep the evaluations here (default: a temp folder)")
    ap.add_argument("--variants", nargs="+", choices=("normal", "fitted"), default=["normal", "fitted"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        variants = {
            "normal": normal_copy(args.model, Path(tmp) / "normal") if "normal" in args.variants else None,
            "fitted": args.model,
        }
        rows = {}
        for name in args.variants:
            folder = variants[name]
            assert folder is not None
            cfg = dataclasses.replace(
                EvaluateConfig(),
                model=str(folder),
                out=str(out / name),
                num_fake=args.num_fake,
                max_real=args.max_real,
                device="cpu",
            )
            t0 = time.perf_counter()
            m = evaluate(cfg, args.prepared, show_progress=False)
            rows[name] = (m["fid"], 1000 * m["kid_mean"], 1000 * m["kid_std"], time.perf_counter() - t0)
            print(f"{name}: FID {m['fid']:.2f} ({m['n_fake']} vs {m['n_real']})", flush=True)
    base = rows["normal"][0] if "normal" in rows else None
    print("\n| prior | FID | KID x 1000 | FID ratio to N(0, I) | seconds |\n|---|---|---|---|---|")
    for name, (fid, kid, kid_std, secs) in rows.items():
        ratio = f"{fid / base:.3f}" if base else "-"
        label = "N(0, I)" if name == "normal" else "fitted"
        print(f"| {label} | {fid:.2f} | {kid:.2f} +- {kid_std:.2f} | {ratio} | {secs:.0f} |")


if __name__ == "__main__":
    main()
