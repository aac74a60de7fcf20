"""A trained VAE's FID sampled from N(0, I) against the same weights sampled from its fitted prior, in one run.

Why: ``vae.prior: fitted`` (models/vae.py) changes nothing but where samples draw their latents, so its worth is
measured on one set of weights: the model folder as exported (fitted per-category Gaussians) and a copy with the
prior buffers removed and ``vae.prior: normal`` (the decoder samples N(0, I), as before the option existed). Both
are scored by ``productgen evaluate``'s own code with the same seed, real set and fake count (default: the
published protocol, 10,000 samples vs the 10,000-image test split; the real statistics come from the cache after
the first).

    PYTHONPATH=src python bench/vae_prior.py artifacts/train/vae-cpu-2h/model
    PYTHONPATH=src python bench/vae_prior.py artifacts/train/vae-cpu-2h/model --num-fake 2000 --max-real 2000

Prints FID and KID of each and the ratio fitted / normal. Needs only the productgen core.
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
    ap.add_argument("--out", type=Path, default=None, help="keep both evaluations here (default: a temp folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        variants = {"N(0, I)": normal_copy(args.model, Path(tmp) / "normal"), "fitted": args.model}
        rows = {}
        for name, folder in variants.items():
            cfg = dataclasses.replace(
                EvaluateConfig(),
                model=str(folder),
                out=str(out / name.replace("(0, I)", "ormal").replace(" ", "")),
                num_fake=args.num_fake,
                max_real=args.max_real,
                device="cpu",
            )
            t0 = time.perf_counter()
            m = evaluate(cfg, args.prepared, show_progress=False)
            rows[name] = (m["fid"], 1000 * m["kid_mean"], 1000 * m["kid_std"], time.perf_counter() - t0)
            print(f"{name}: FID {m['fid']:.2f} ({m['n_fake']} vs {m['n_real']})", flush=True)
    base = rows["N(0, I)"][0]
    print("\n| prior | FID | KID x 1000 | ratio to N(0, I) | seconds |\n|---|---|---|---|---|")
    for name, (fid, kid, kid_std, secs) in rows.items():
        print(f"| {name} | {fid:.2f} | {kid:.2f} +- {kid_std:.2f} | {fid / base:.3f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
