"""After the lease: unpack what the two device calls of ``bench/gpu_checks.sh`` brought back, print every figure,
and (``--ship``) make the GPU-trained generators the shipped champions where they beat the current ones.

    python bench/gpu_unpack.py --files /work/.device/<call B files_at> --files-a /work/.device/<call A files_at>
    python bench/gpu_unpack.py --files ... --ship       # champions/gan and champions/vae, with their cards

What it does: joins ``models.tar.part-*`` and extracts it and ``results-B.tar.gz`` (and ``results-A.tar.gz``) into
``--out``; turns the discriminators that travelled in fp16 back into fp32 files (the generators travelled in fp32:
they are the weights that were scored); prints one JSON line per benchmark and per generator run. With ``--ship``,
each task's best run is copied into ``champions/<task>`` by :func:`productgen.registry.shipped.package` with a card
(protocol, figure, anchor, profile and steps, device, training time), but only where the card of the champion
already shipped scored worse on the same protocol (10,000 vs 10,000) or there is none.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

ANCHORS = {
    "gan": "Lucic et al. 2018 best tuned GAN 21.5, PA-GAN 15.8 (target <= 15)",
    "vae": "Dai & Wipf 2-stage VAE 29.3, plain VAE 43.6",
}


def extract(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=Path, required=True, help="call B's files folder (files_at)")
    ap.add_argument("--files-a", type=Path, default=None, help="call A's files folder")
    ap.add_argument("--out", type=Path, default=Path("artifacts/gpu-checks/unpacked"))
    ap.add_argument("--ship", action="store_true", help="ship the best GAN / VAE as champions where they are better")
    args = ap.parse_args(argv)
    out: Path = args.out
    if args.files_a is not None and (args.files_a / "results-A.tar.gz").is_file():
        extract(args.files_a / "results-A.tar.gz", out / "A")
        for name in ("dcgan.json", "restore.json"):
            f = out / "A" / name
            if f.is_file():
                d = json.loads(f.read_text())
                print(json.dumps(d.get("summary") or {"bench": name, "results": d.get("results")}))
    if (args.files / "results-B.tar.gz").is_file():
        extract(args.files / "results-B.tar.gz", out / "B")
    parts = sorted(args.files.glob("models.tar.part-*"))
    if parts:
        with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts))) as tar:
            tar.extractall(out / "B", filter="data")
        from safetensors.torch import load_file, save_file

        for d in (out / "B" / "models").glob("*/discriminator.safetensors"):
            t = load_file(str(d))
            save_file(
                {k: v.float() if v.is_floating_point() else v for k, v in t.items()},
                str(d),
                metadata={"format": "productgen-weights"},
            )
    summary_file = out / "B" / "gen" / "summary.json"
    if not summary_file.is_file():
        print(f"no {summary_file}: call B's results are missing")
        return 1
    runs: dict[str, dict[str, Any]] = json.loads(summary_file.read_text())["runs"]
    for res in runs.values():
        print(json.dumps({"bench": "gpu-gan", **res}))
    f50 = out / "B" / "fid50k.json"
    if f50.is_file():
        print(f50.read_text().replace("\n", " "))
    if not args.ship:
        return 0

    from productgen.registry import shipped

    log = args.files / "log-B.txt"  # nvidia-smi's CSV line names the GPU the runs trained on
    gpu = next(
        (
            ln.split(",")[0].strip()
            for ln in (log.read_text(errors="replace").splitlines() if log.is_file() else [])
            if ln.startswith("NVIDIA")
        ),
        "a GPU",
    )

    for task in ("gan", "vae"):
        scored = {n: r for n, r in runs.items() if r.get("task") == task and "fid" in r and r.get("n_real") == 10000}
        if not scored:
            print(f"{task}: no run scored on 10k vs 10k; nothing shipped")
            continue
        name = min(scored, key=lambda n: scored[n]["fid"])
        res, model = scored[name], out / "B" / "models" / name
        if not (model / "config.json").is_file():
            print(f"{task}: the best run {name} did not come back ({model}); nothing shipped")
            continue
        current = shipped.read_card(shipped.root() / task) if shipped.shipped(task) else {}
        old = current.get("metrics", {})
        if old.get("fid") is not None and old.get("n_real") == 10000 and old["fid"] <= res["fid"]:
            print(f"{task}: shipped champion FID {old['fid']:.2f} <= {res['fid']:.2f} of GPU run {name}; kept it")
            continue
        metrics = json.loads((out / "B" / "gen" / name / "eval" / "metrics.json").read_text())
        profile = (model / "profile.yaml").read_text()
        card = {
            "protocol": "FID, 10,000 generated vs the 10,000-image Fashion-MNIST test split (TF-Inception)",
            "figure": f"FID {res['fid']:.2f}",
            "anchor": ANCHORS[task],
            "device": f"one {gpu} (bench/gpu_checks.sh B)",
            "train_time": f"{res['train_s']:.0f} s",
            "profile": f"flows/profiles/gpu-{task}.yaml + run {name}",
            "steps": res["steps"],
            "command": f"productgen train {task} --profile <this run's profile.yaml>",
            "profile_yaml": profile,
            "summary": f"GPU {task}, FID {res['fid']:.2f} (10k vs 10k)",
        }
        dest = shipped.package(task, model, metrics, card, keep=("generator",))
        print(f"{task}: shipped {name} (FID {res['fid']:.2f}) to {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
