"""Real DVC in temporary git repositories: `dvc repro` runs prepare -> validate -> train -> evaluate, a failed
validation stops the pipeline, a `dvc push` / `dvc pull` round trip restores identical data and weights in a fresh
clone, a forced re-run reproduces the metrics exactly, a queued pair of experiments (`dvc exp run --queue -S`,
`--run-all`) and a workspace `dvc exp run -S` are compared with `dvc exp show`, `dvc metrics diff` and
`dvc plots diff` on the real dvc.yaml.

The tests that need the pipeline run share one: ``pipeline`` runs ``dvc repro evaluate`` once per module and
commits it (a full run of the four stages is most of each test's time). They only add to that checkout (a fresh
clone, another model family's stages, experiments run last), so their order in this file is the order they need.
Tests that break the data or re-run a stage on purpose get a checkout of their own (``repo``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, ROOT, tree_digest, write_good_folder


def project_params(**changes: dict[str, object]) -> str:
    """The project's own params.yaml with some sections changed, as a user would edit it."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    return yaml.safe_dump(params, sort_keys=False)


# The quick CPU profile of the train / evaluate stages, shrunk to seconds for the test.
TINY_PROFILE = {
    "train": {
        "batch_size": 4,
        "max_steps": 4,
        "device": "cpu",
        "log_every": 2,
        "sample_every": 4,
        "checkpoint_every": 4,
    },
    "gan": {"z_dim": 16, "g_channels": 8, "d_channels": 8, "max_channels": 16, "embed_dim": 8},
    "evaluate": {
        "split": "train",
        "max_real": 12,
        "num_fake": 12,
        "batch_size": 12,
        "device": "cpu",
        "kid": False,
        "per_category": False,
    },
}

PARAMS = project_params(
    data={"source": "folder", "input": "data/shop", "mode": "RGB", "resolution": 32},
    validation={"min_images_per_category": 2},
)


def sh(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_repo(root: Path) -> Path:
    """A project checkout with the real dvc.yaml, a small folder dataset under data/, and a local remote."""
    repo = root / "project"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (repo / "params.yaml").write_text(PARAMS)
    (repo / "flows/profiles").mkdir(parents=True)
    (repo / "flows/profiles/quick-cpu.yaml").write_text(yaml.safe_dump(TINY_PROFILE, sort_keys=False))
    tiny_restore = {
        "train": TINY_PROFILE["train"],
        "restore": {"channels": 8, "max_channels": 16},
        "evaluate": {"split": "train", "max_real": 12, "batch_size": 12, "device": "cpu"},
    }
    (repo / "flows/profiles/quick-cpu-restore.yaml").write_text(yaml.safe_dump(tiny_restore, sort_keys=False))
    write_good_folder(repo / "data" / "shop", {"bags": 5, "shoes": 5, "shirts": 5})
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "remote", "add", "-d", "local", str(root / "remote"), cwd=repo)
    sh("dvc", "add", "-q", "data", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "dataset v1", cwd=repo)
    return repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A checkout of its own, for a test that breaks the data or forces a stage."""
    return make_repo(tmp_path)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkout where ``dvc repro evaluate`` ran the four stages, pushed and committed ("pipeline run")."""
    repo = make_repo(tmp_path_factory.mktemp("pipeline"))
    out = sh("dvc", "repro", "evaluate", cwd=repo)
    for stage in ("prepare", "validate", "train", "evaluate"):
        assert f"Running stage '{stage}'" in out.stdout
    sh("dvc", "push", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "pipeline run", cwd=repo)
    return repo


def test_repro_push_pull_round_trip(pipeline: Path, tmp_path: Path) -> None:
    repo = pipeline
    assert (repo / "artifacts/prepared/dataset.json").is_file()
    assert (repo / "artifacts/dvc/train/model/generator.safetensors").is_file()
    assert (repo / "artifacts/validation/report.md").read_text().startswith("# Dataset validation: PASSED")
    metrics = sh("dvc", "metrics", "show", cwd=repo).stdout
    assert "artifacts/validation/metrics.json" in metrics and "artifacts/dvc/eval/metrics.json" in metrics
    assert "nothing to commit" in sh("git", "status", cwd=repo).stdout  # dvc.lock and the .gitignores committed

    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    assert not (clone / "data" / "shop").exists()
    sh("dvc", "pull", "-q", "--with-deps", "evaluate", cwd=clone)  # the stages this test ran
    assert tree_digest(clone / "data") == tree_digest(repo / "data")
    assert tree_digest(clone / "artifacts/prepared") == tree_digest(repo / "artifacts/prepared")
    assert tree_digest(clone / "artifacts/dvc/train/model") == tree_digest(repo / "artifacts/dvc/train/model")
    status = sh("dvc", "status", "evaluate", cwd=clone).stdout
    assert "up to date" in status
    again = sh("dvc", "repro", "evaluate", cwd=clone).stdout
    assert "Running stage" not in again


def test_failed_validation_stops_repro(repo: Path) -> None:
    (repo / "data/shop/bags/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    proc = sh("dvc", "repro", cwd=repo, check=False)
    assert proc.returncode != 0
    assert "validation FAILED" in proc.stderr + proc.stdout
    quarantine = (repo / "artifacts/validation/quarantine.csv").read_text()
    assert "broken.jpg" in quarantine


def test_prepare_is_reproducible_across_runs(repo: Path) -> None:
    sh("dvc", "repro", "prepare", cwd=repo)
    first = tree_digest(repo / "artifacts/prepared")
    sh("dvc", "repro", "--force", "prepare", cwd=repo)
    assert tree_digest(repo / "artifacts/prepared") == first


def test_restoration_chain_in_the_pipeline(pipeline: Path) -> None:
    """A second model family runs through its own train / evaluate stages with committed metrics."""
    repo = pipeline
    out = sh("dvc", "repro", "evaluate-restore", cwd=repo).stdout
    assert "Running stage 'train-restore'" in out and "Running stage 'train'" not in out
    metrics = json.loads((repo / "artifacts/dvc/restore/metrics.json").read_text())
    assert metrics["psnr"] > 0 and metrics["baseline_psnr"] > 0 and metrics["view"] == "noise25"
    assert (repo / "artifacts/dvc/restore/train/model/config.json").is_file()
    assert "artifacts/dvc/restore/metrics.json" in sh("dvc", "metrics", "show", cwd=repo).stdout


def _experiments(rows: list[dict]) -> dict[str, dict]:
    found = {}
    for row in rows:
        for e in row.get("experiments") or []:
            for rev in e.get("revs") or []:
                data = rev.get("data") or {}
                found[data.get("name") or e.get("name")] = data
    return found


def test_train_evaluate_reproduce_and_experiments(pipeline: Path) -> None:
    """Last in this file: the workspace experiment at its end changes the checkout (params.yaml, outputs)."""
    repo = pipeline
    committed = json.loads((repo / "artifacts/dvc/eval/metrics.json").read_text())
    assert committed["fid"] > 0
    losses = (repo / "artifacts/dvc/train/losses.csv").read_text().splitlines()
    assert losses[0].startswith("step,loss_d,loss_g") and len(losses) == 3  # steps 2 and 4

    # A forced re-run on the CPU profile reproduces the committed metrics exactly.
    sh("dvc", "repro", "--force", "train", "evaluate", cwd=repo)
    assert json.loads((repo / "artifacts/dvc/eval/metrics.json").read_text()) == committed
    assert "up to date" in sh("dvc", "status", "evaluate", cwd=repo).stdout

    # A queued pair (each run in a temporary copy; the workspace is left alone), compared with the baseline.
    for name, lr in (("lr-g-1e-4", "0.0001"), ("lr-g-1e-3", "0.001")):
        queued = sh("dvc", "exp", "run", "evaluate", "--queue", "-n", name, "-S", f"gan.lr_g={lr}", cwd=repo)
        assert f"Queued experiment '{name}'" in queued.stdout + queued.stderr
    sh("dvc", "exp", "run", "--run-all", "-j", "1", cwd=repo)
    exps = _experiments(json.loads(sh("dvc", "exp", "show", "--json", cwd=repo).stdout))
    for name, lr in (("lr-g-1e-4", 0.0001), ("lr-g-1e-3", 0.001)):
        assert exps[name]["params"]["params.yaml"]["data"]["gan"]["lr_g"] == lr
        assert exps[name]["metrics"]["artifacts/dvc/eval/metrics.json"]["data"]["fid"] > 0
    table = sh("dvc", "exp", "show", "--only-changed", "--csv", cwd=repo).stdout  # the table, every column
    assert "gan.lr_g" in table.splitlines()[0] and "lr-g-1e-4" in table and "lr-g-1e-3" in table
    plots = sh("dvc", "plots", "diff", "HEAD", "lr-g-1e-4", "lr-g-1e-3", "--json", cwd=repo).stdout
    assert "loss_g" in plots and "lr-g-1e-4" in plots and "lr-g-1e-3" in plots

    # An experiment in the workspace with a changed parameter, compared side by side.
    sh("dvc", "exp", "run", "evaluate", "-n", "faster-g", "-S", "gan.lr_g=0.001", cwd=repo)
    exps = sh("dvc", "exp", "show", "--json", cwd=repo).stdout
    assert "faster-g" in exps and "0.001" in exps
    diff = sh("dvc", "metrics", "diff", "HEAD", "faster-g", "--json", cwd=repo).stdout
    assert "fid" in diff
    plots = sh("dvc", "plots", "diff", "HEAD", "faster-g", "--json", cwd=repo).stdout
    assert "loss_g" in plots or "losses.csv" in plots
