"""Real DVC in temporary git repositories: `dvc repro` runs prepare + validate, a failed validation stops the
pipeline, and a `dvc push` / `dvc pull` round trip restores identical data in a fresh clone."""

from __future__ import annotations

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


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A project checkout with the real dvc.yaml, a small folder dataset under data/, and a local remote."""
    repo = tmp_path / "project"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (repo / "params.yaml").write_text(PARAMS)
    write_good_folder(repo / "data" / "shop", {"bags": 5, "shoes": 5, "shirts": 5})
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"), cwd=repo)
    sh("dvc", "add", "-q", "data", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "dataset v1", cwd=repo)
    return repo


def test_repro_push_pull_round_trip(repo: Path, tmp_path: Path) -> None:
    out = sh("dvc", "repro", cwd=repo)
    assert "Running stage 'prepare'" in out.stdout and "Running stage 'validate'" in out.stdout
    assert (repo / "artifacts/prepared/dataset.json").is_file()
    assert (repo / "artifacts/validation/report.md").read_text().startswith("# Dataset validation: PASSED")
    metrics = sh("dvc", "metrics", "show", cwd=repo).stdout
    assert "artifacts/validation/metrics.json" in metrics
    sh("dvc", "push", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "pipeline run", cwd=repo)

    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    assert not (clone / "data" / "shop").exists()
    sh("dvc", "pull", "-q", cwd=clone)
    assert tree_digest(clone / "data") == tree_digest(repo / "data")
    assert tree_digest(clone / "artifacts/prepared") == tree_digest(repo / "artifacts/prepared")
    status = sh("dvc", "status", cwd=clone).stdout
    assert "up to date" in status
    again = sh("dvc", "repro", cwd=clone).stdout
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
