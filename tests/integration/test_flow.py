"""The retrain flow as a real Prefect run (ephemeral mode, own PREFECT_HOME) with real GX, MLflow and the
real TF-Inception network, on a tiny folder dataset: a full run ends with a promoted champion; a dataset that
fails validation stops the flow before any training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from productgen.metrics.extractors import installed_tf_inception
from tests.conftest import ROOT, write_good_folder

pytestmark = pytest.mark.skipif(installed_tf_inception() is None, reason="TF-Inception weights missing")

PARAMS = """\
data: {{source: folder, input: {root}/shop, out: {root}/prepared, mode: L, resolution: 28}}
validation: {{out: {root}/validation, min_images_per_category: 5}}
train: {{out: {root}/train, batch_size: 8, max_steps: 2, log_every: 1, sample_every: 2, checkpoint_every: 2,
         device: cpu}}
gan: {{z_dim: 16, g_channels: 16, d_channels: 16, max_channels: 32, embed_dim: 16}}
evaluate: {{out: {root}/eval, split: train, max_real: 12, num_fake: 12, device: cpu}}
registry: {{fid_max: null, gain_db_min: null}}
retrain: {{snapshot: false, drift: {{enabled: false}}}}
"""


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Prefect home for this module's runs, as a user's ~/.prefect outlives each run: the first ephemeral start
    creates and migrates its database (about 18 s on 2 cores), the later ones find it ready (about 10 s)."""
    return tmp_path_factory.mktemp("prefect-home")


def _run_flow(root: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
    }
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "flows" / "retrain.py"), "--params", str(root / "params.yaml"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
    )


def test_retrain_flow_validates_trains_evaluates_registers_and_promotes(tmp_path: Path, prefect_home: Path) -> None:
    write_good_folder(tmp_path / "shop", {"bags": 12, "shoes": 12, "shirts": 12}, size=(28, 28))
    (tmp_path / "params.yaml").write_text(PARAMS.format(root=tmp_path))
    p = _run_flow(tmp_path, prefect_home)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "promoted to champion (no champion yet" in p.stdout + p.stderr
    assert "Finished in state Completed()" in p.stdout + p.stderr
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    champion = MlflowClient().get_model_version_by_alias("productgen-gan", "champion")
    assert str(champion.version) == "1" and float(champion.tags["eval.fid"]) > 0
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("productgen-gan").experiment_id])
    assert {r.data.tags["kind"] for r in runs} == {"train", "evaluate"}
    assert len(list((tmp_path / "eval").glob("*/samples.png"))) == 1


def test_failed_validation_stops_the_flow_before_training(tmp_path: Path, prefect_home: Path) -> None:
    write_good_folder(tmp_path / "shop", {"bags": 12, "shoes": 12, "shirts": 12}, size=(28, 28))
    (tmp_path / "shop" / "bags" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "params.yaml").write_text(PARAMS.format(root=tmp_path))
    p = _run_flow(tmp_path, prefect_home)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out[-3000:]
    assert "validation FAILED" in out and "report:" in out
    assert "Task run 'train" not in out and not (tmp_path / "train").exists()
    assert "broken.jpg" in (tmp_path / "validation" / "quarantine.csv").read_text()


def test_retrain_flow_runs_an_image_to_image_task(tmp_path: Path, prefect_home: Path) -> None:
    """The same flow trains, evaluates (PSNR next to the degraded input) and promotes a restorer, here under a
    registered name of its own (a shop's second restore model)."""
    write_good_folder(tmp_path / "shop", {"bags": 12, "shoes": 12, "shirts": 12}, size=(28, 28))
    params = PARAMS.format(root=tmp_path) + "restore: {channels: 8, max_channels: 16, view: noise25}\n"
    (tmp_path / "params.yaml").write_text(params)
    p = _run_flow(tmp_path, prefect_home, "--task", "restore", "--model-name", "productgen-restore-noise25")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "productgen-restore-noise25 v1: psnr" in out and "promoted to champion (no champion yet" in out
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    champion = MlflowClient().get_model_version_by_alias("productgen-restore-noise25", "champion")
    tags = champion.tags
    assert tags["eval.primary_metric"] == "psnr" and float(tags["eval.psnr"]) > 0
    assert float(tags["eval.baseline_psnr"]) > 0
    assert len(list((tmp_path / "eval").glob("*/before_after.png"))) == 1
