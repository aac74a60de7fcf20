"""dvc.lock matches the code (issue 18): every stage's code and params dependencies hash (DVC's own md5) to what
dvc.lock recorded when the stage last ran. Data and outputs are left out, so this passes in a fresh clone that
has pulled nothing. ``test_lock_matches_the_code`` fails, one line per stage, until `dvc repro` is run and
dvc.lock committed; the frozen champion stages are checked for their lock entry and shipped files only (their
code drift is reported by ``python -m productgen.pipeline.dvc_deps --lock --frozen``, as `dvc status` skips it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from productgen.pipeline import dvc_deps
from tests.conftest import BIN, ROOT


def sh(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_lock_matches_the_code() -> None:
    drift = dvc_deps.lock_drift(ROOT, frozen=False)
    assert not drift, "\n" + "\n".join(dvc_deps.drift_lines(drift))


def test_every_shipped_champion_has_its_lock_entry() -> None:
    """champions/<task> is what dvc.lock says the champion stage produced (`dvc commit champion-<task>` after a
    retrain or when the stage is added)."""
    from dvc.repo import Repo

    lines = []
    lock = dvc_deps._load_yaml(ROOT / "dvc.lock").get("stages") or {}
    with Repo(str(ROOT)) as repo:
        for stage in repo.index.stages:
            if not stage.frozen or not stage.name.startswith("champion-"):
                continue
            if stage.name not in lock:
                lines.append(f"{stage.name}: no dvc.lock entry: run `dvc commit {stage.name}`")
                continue
            changed = {k: v for o in stage.outs for k, v in (o.status() or {}).items()}
            if changed:
                lines.append(f"{stage.name}: {changed}: run `dvc commit {stage.name}` and commit dvc.lock")
    assert not lines, "\n" + "\n".join(lines)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A git + DVC repository with a stage over code, params and data, one frozen stage, and a lock."""
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src/code.py").write_text("print('v1')\n")
    (repo / "params.yaml").write_text("model:\n  lr: 0.1\n  width: 8\nother:\n  x: 1\n")
    (repo / "data").mkdir()
    (repo / "data/items.txt").write_text("a\nb\n")
    (repo / "shipped").mkdir()
    (repo / "shipped/w.txt").write_text("weights\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n"
        "  build:\n"
        "    cmd: cat data/items.txt src/code.py > built.txt\n"
        "    deps: [data, src/code.py]\n"
        "    params: [model.lr]\n"
        "    outs: [built.txt]\n"
        "  champion:\n"
        "    frozen: true\n"
        "    cmd: cp src/code.py shipped/w.txt\n"
        "    deps: [src/code.py]\n"
        "    outs:\n"
        "      - shipped:\n"
        "          cache: false\n"
        "          persist: true\n"
    )
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "add", "-q", "data", cwd=repo)
    sh("dvc", "repro", "-q", "build", cwd=repo)
    sh("dvc", "commit", "-q", "-f", "champion", cwd=repo)  # the frozen stage's lock entry, without running it
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "v1", cwd=repo)
    return repo


def test_drift_is_code_and_params_not_data(tiny: Path, tmp_path: Path) -> None:
    assert dvc_deps.lock_drift(tiny) == {}
    assert "shipped" in (tiny / "dvc.lock").read_text()  # dvc commit wrote the frozen stage's entry

    # a fresh clone without the data or outputs: nothing to report (DVC would say "deleted")
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(tiny), str(clone), cwd=tmp_path)
    assert not (clone / "data/items.txt").exists()
    assert dvc_deps.lock_drift(clone) == {}

    # code and a read param change: one line per stage, naming it and what to do
    (clone / "src/code.py").write_text("print('v2')\n")
    (clone / "params.yaml").write_text("model:\n  lr: 0.2\n  width: 8\nother:\n  x: 2\n")
    drift = dvc_deps.lock_drift(clone)
    assert set(drift) == {"build"}
    assert "src/code.py modified" in drift["build"] and "params.yaml:model.lr modified" in drift["build"]
    (line,) = dvc_deps.drift_lines(drift)
    assert line.startswith("build: differs from dvc.lock") and line.endswith("run `dvc repro` and commit dvc.lock")

    # the frozen stage: `dvc status` does not look at its deps; lock_drift(frozen=True) does
    assert "champion" not in sh("dvc", "status", cwd=clone).split("WARNING")[0]
    assert dvc_deps.lock_drift(clone, frozen=True) == {"champion": ["src/code.py modified"]}


def test_frozen_stage_never_runs_in_repro(tiny: Path) -> None:
    (tiny / "src/code.py").write_text("print('v2')\n")
    sh("dvc", "repro", "-q", cwd=tiny)
    assert (tiny / "shipped/w.txt").read_text() == "weights\n"  # the shipped files stay as they are
    # `dvc repro -f` on a frozen stage does not run it (it only re-records the hashes); --reproduce runs it
    sh("dvc", "repro", "-q", "-f", "champion", cwd=tiny)
    assert (tiny / "shipped/w.txt").read_text() == "weights\n"
    (tiny / "src/code.py").write_text("print('v3')\n")
    out = sh(sys.executable, "-m", "productgen.pipeline.champion", "x", "--reproduce", "--stage", "champion", cwd=tiny)
    assert "champion: reproduced" in out
    assert (tiny / "shipped/w.txt").read_text() == "print('v3')\n"
    assert "frozen: true" in (tiny / "dvc.yaml").read_text()
    assert dvc_deps.lock_drift(tiny, frozen=True) == {}  # the champion is recorded as reproduced
