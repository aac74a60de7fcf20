"""MLflow tracking for training and evaluation runs (the MLOps layer: the core never imports this).

Default store: an embedded SQLite file (``mlflow.db``) with artifacts in ``mlartifacts/`` beside it, so it
works offline with no server; ``MLFLOW_TRACKING_URI`` selects a tracking server instead. Every run carries
its lineage as tags: the prepared dataset's content hash, the DVC hashes of the raw data and of the prepared
output, and the git commit (with a flag when the work tree has uncommitted changes).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

DEFAULT_DB = "mlflow.db"
PIP_REQUIREMENTS = ["torch", "numpy", "pillow", "safetensors", "pandas", "mlflow", "productgen"]


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(DEFAULT_DB).resolve()}"


def _artifact_root(uri: str) -> str | None:
    """For a SQLite store, keep artifacts in ``mlartifacts/`` next to the database file."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None  # a server decides (``--artifacts-destination``)


def configure(experiment: str) -> str:
    """Point MLflow at the store and make sure ``experiment`` exists; return the experiment id."""
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        exp_id = found.experiment_id
    else:
        root = _artifact_root(uri)
        exp_id = mlflow.create_experiment(experiment, artifact_location=f"{root}/{experiment}" if root else None)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _dvc_hashes(prepared: Path) -> dict[str, str]:
    """md5s DVC recorded for the raw data (data.dvc) and for the prepared output (dvc.lock), where present."""
    tags: dict[str, str] = {}
    try:
        data_dvc = yaml.safe_load(Path("data.dvc").read_text())
        tags["dvc.data_md5"] = str(data_dvc["outs"][0]["md5"])
    except (OSError, KeyError, TypeError, IndexError, yaml.YAMLError):
        pass
    try:
        lock = yaml.safe_load(Path("dvc.lock").read_text())
        target = os.path.normpath(str(prepared))
        for stage in (lock or {}).get("stages", {}).values():
            for out in stage.get("outs", []):
                if os.path.normpath(out.get("path", "")) == target:
                    tags["dvc.prepared_md5"] = str(out["md5"])
    except (OSError, AttributeError, TypeError, yaml.YAMLError):
        pass
    return tags


def lineage(dataset_root: Path, content_hash: str) -> dict[str, str]:
    tags = {"dataset.path": str(dataset_root), "dataset.content_hash": content_hash}
    commit = _git("rev-parse", "HEAD")
    tags["git.commit"] = commit or "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no")
    tags["git.dirty"] = "unknown" if status is None else str(bool(status)).lower()
    tags.update(_dvc_hashes(dataset_root))
    return tags


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"train.lr": "0.0002", ...}`` for ``log_params``."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        text = json.dumps(obj) if isinstance(obj, (list, tuple)) else str(obj)
        out[prefix[:-1]] = text[:500]
    return out


class RunLogger:
    """Thin helper around the active run; ``log_step`` is the engine's ``on_log`` callback."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


@contextmanager
def run(experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> Iterator[RunLogger]:
    import mlflow

    configure(experiment)
    with mlflow.start_run(run_name=run_name, tags=tags) as active:
        flat = flatten(params)
        for i in range(0, len(flat), 100):  # MLflow caps one batch at 100 params
            mlflow.log_params(dict(list(flat.items())[i : i + 100]))
        yield RunLogger(active.info.run_id)


def log_gan_model(model_dir: Path, registered_name: str | None = None) -> str:
    """Log the trained GAN as a pyfunc model from code (no pickle); return its ``models:/`` URI."""
    import mlflow
    import pandas as pd

    from productgen.models.io import read_config
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    code = Path(__file__).parent / "serving" / "gan_pyfunc.py"
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "category"), ColSpec("long", "count"), ColSpec("long", "seed")]),
        outputs=Schema([ColSpec("string", "category"), ColSpec("long", "seed"), ColSpec("long", "index"),
                        ColSpec("string", "image")]),  # fmt: skip
    )
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(code),
        artifacts={"model_dir": str(model_dir)},
        signature=signature,
        input_example=pd.DataFrame({"category": [read_config(model_dir)["classes"][0]], "count": [2], "seed": [0]}),
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=registered_name,
    )
    return info.model_uri


def log_image_model(model_dir: Path, registered_name: str | None = None) -> str:
    """Log an image -> image model (restoration, translation, style) as a pyfunc from code; return its URI."""
    import base64
    import io

    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from PIL import Image

    from productgen.models.io import read_config

    cfg = read_config(model_dir)
    code = Path(__file__).parent / "serving" / "image_pyfunc.py"
    cols = [ColSpec("string", "image")]
    if cfg.get("model") == "adain":
        cols.append(ColSpec("string", "style", required=False))
    signature = ModelSignature(inputs=Schema(cols), outputs=Schema(
        [ColSpec("string", "image"), ColSpec("long", "width"), ColSpec("long", "height")]))  # fmt: skip
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 255, dtype=np.uint8)).save(buf, format="PNG")
    example = {"image": [base64.b64encode(buf.getvalue()).decode("ascii")]}
    if cfg.get("model") == "adain":
        example["style"] = example["image"]
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(code), artifacts={"model_dir": str(model_dir)}, signature=signature,
        input_example=pd.DataFrame(example), pip_requirements=PIP_REQUIREMENTS, registered_model_name=registered_name,
    )
    return info.model_uri


def log_trained_model(model_dir: Path, registered_name: str | None = None) -> str:
    """Log the model in ``model_dir`` with the pyfunc flavour that fits its family; return its URI."""
    from productgen.models.io import read_config

    kind = read_config(model_dir).get("model")
    if kind == "gan":
        return log_gan_model(model_dir, registered_name)
    if kind == "vae":
        return log_vae_model(model_dir, registered_name)
    return log_image_model(model_dir, registered_name)


def log_vae_model(model_dir: Path, registered_name: str | None = None) -> str:
    """The conditional VAE samples per category like the GAN, so it is served by the same generator pyfunc."""
    return log_gan_model(model_dir, registered_name)


def model_dir_from_uri(uri: str, dest: Path | None = None) -> Path:
    """The weights folder (safetensors + config.json) of a logged productgen model, downloaded from MLflow.

    ``uri`` is any MLflow model URI: ``models:/productgen-restore@champion``, ``models:/name/3``, ``runs:/<id>/model``.
    Downloads go to ``dest`` (default: a cache folder per URI under ~/.cache/productgen/models) and are refreshed
    on every call, so an alias that moved gives the new version.
    """
    import hashlib

    import mlflow
    from mlflow.exceptions import MlflowException

    from productgen.errors import UserError

    mlflow.set_tracking_uri(tracking_uri())
    if dest is None:
        key = hashlib.sha256(f"{tracking_uri()}|{uri}".encode()).hexdigest()[:16]
        dest = Path.home() / ".cache" / "productgen" / "models" / key
    import shutil

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    except MlflowException as err:
        raise UserError(f"{uri}: cannot load from the MLflow store {tracking_uri()} ({str(err).splitlines()[0]})") from None
    # The pyfunc stores the weights folder under artifacts/ (the name of the folder it was logged from).
    found = next((p.parent for p in sorted((local / "artifacts").rglob("config.json"))
                  if any(p.parent.glob("*.safetensors"))), None)  # fmt: skip
    if found is None:
        raise UserError(f"{uri}: not a productgen model (no weights folder with config.json among its artifacts)")
    return found


def resolve_model(ref: str | Path) -> Path:
    """A model given by the user: a local model folder, or an MLflow model URI (``models:/...``, ``runs:/...``)."""
    from productgen.errors import UserError

    text = str(ref)
    if text.startswith(("models:/", "runs:/")):
        return model_dir_from_uri(text)
    path = Path(text).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise UserError(f"{ref}: no model here (expected a folder with config.json and *.safetensors, "
                        f"or an MLflow URI such as models:/productgen-restore@champion)")  # fmt: skip
    return path
