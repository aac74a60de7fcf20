"""Real MLflow (embedded SQLite store in a temp folder): a tracked training run logs params, per-step losses,
artifacts and lineage, registers a pyfunc model, and that model loads and generates in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_cli


def test_tracked_training_run_and_pyfunc_model(params: Path, tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    run_dir = tmp_path / "run"
    p = run_cli(
        "train",
        "gan",
        "--params",
        str(params),
        "--max-steps",
        "4",
        "--out",
        str(run_dir),
        "-q",
        "--register",
        "productgen-gan-test",
    )
    assert p.returncode == 0, p.stderr
    assert "MLflow run" in p.stdout
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    exp = client.get_experiment_by_name("productgen-gan")
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run.data.params["train.batch_size"] == "8" and run.data.params["gan.loss"] == "hinge"
    history = client.get_metric_history(run.info.run_id, "loss_d")
    assert [m.step for m in history] == [2, 4]
    dataset = json.loads((Path(str(params)).parent / "prepared" / "dataset.json").read_text())
    assert run.data.tags["dataset.content_hash"] == dataset["content_hash"]
    assert run.data.tags["git.commit"] and run.data.tags["kind"] == "train"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss_curve.png", "metrics.jsonl", "samples", "weights"} <= artifacts
    weights = {a.path for a in client.list_artifacts(run.info.run_id, "weights")}
    assert "weights/generator.safetensors" in weights and "weights/config.json" in weights
    versions = client.search_model_versions("name='productgen-gan-test'")
    assert len(versions) == 1

    code = (
        "import base64, io, mlflow, pandas as pd; from PIL import Image; "
        "m = mlflow.pyfunc.load_model('models:/productgen-gan-test/1'); "
        "out = m.predict(pd.DataFrame({'category': ['shoes'], 'count': [3], 'seed': [7]})); "
        "im = Image.open(io.BytesIO(base64.b64decode(out['image'][0]))); "
        "print(len(out), im.size, out['category'].tolist())"
    )
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.strip().splitlines()[-1] == "3 (28, 28) ['shoes', 'shoes', 'shoes']"
    # The CLI commands accept the registered model as well as a folder: same weights, byte for byte.
    from productgen.tracking.runs import resolve_model

    folder = resolve_model("models:/productgen-gan-test/1")
    assert (folder / "generator.safetensors").read_bytes() == (run_dir / "model/generator.safetensors").read_bytes()
    assert resolve_model(run_dir / "model") == (run_dir / "model").resolve()
    import pytest

    from productgen.common.errors import UserError

    with pytest.raises(UserError, match="no model here"):
        resolve_model(tmp_path)
    with pytest.raises(UserError, match="cannot load"):
        resolve_model("models:/no-such-model@champion")
