"""`python -m productgen.pipeline.dvc_pull` in a fresh clone: one line saying what it could not get and why, no
traceback, the workspace unchanged; and a real pull when the remote is there."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import BIN, tree_digest


def sh(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert not check or proc.returncode == 0, f"{' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc


def pull(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return sh(sys.executable, "-m", "productgen.pipeline.dvc_pull", *args, cwd=cwd, check=False)


def test_fresh_clone_pull_says_what_it_could_not_get(tmp_path: Path) -> None:
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    (repo / "data").mkdir(parents=True)
    (repo / "data/a.txt").write_text("a\n")
    (repo / "data/b.txt").write_text("b\n")
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "remote", "add", "-q", "-d", "local", str(remote), cwd=repo)
    sh("dvc", "add", "-q", "data", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "data", cwd=repo)
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)

    # 1. the remote folder does not exist on this machine (nothing was pushed from here)
    proc = pull(clone)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert f"the remote 'local' is the folder {remote}, which does not exist on this machine" in proc.stderr
    assert "dvc remote add -d --local" in proc.stderr and "champions/ need no remote" in proc.stderr
    assert not (clone / "data").exists()

    # 2. the remote exists but holds only part of the data: nothing checked out, one line
    sh("dvc", "push", "-q", cwd=repo)
    objects = sorted(p for p in remote.rglob("*") if p.is_file() and not p.name.endswith(".dir"))
    objects[0].unlink()
    proc = pull(clone)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert re.search(r"nothing checked out: \d+ files are not in the remote", proc.stderr)
    assert not (clone / "data/a.txt").exists() and not (clone / "data/b.txt").exists()

    # 3. complete: everything comes
    shutil.rmtree(remote)
    sh("dvc", "push", "-q", cwd=repo)
    proc = pull(clone)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("dvc pull: everything came from the remote 'local'")
    assert tree_digest(clone / "data") == tree_digest(repo / "data")


def test_a_clone_pointed_at_another_remote(tmp_path: Path) -> None:
    """`dvc remote add -d --local` in the clone wins over the committed default (docs: README, DVC)."""
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data/a.txt").write_text("a\n")
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "remote", "add", "-q", "-d", "local", str(tmp_path / "gone"), cwd=repo)
    sh("dvc", "remote", "add", "-q", "shared", str(tmp_path / "shared"), cwd=repo)
    sh("dvc", "add", "-q", "data", cwd=repo)
    sh("dvc", "push", "-q", "-r", "shared", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "data", cwd=repo)
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    assert pull(clone).returncode == 1
    sh("dvc", "remote", "default", "--local", "shared", cwd=clone)
    proc = pull(clone)
    assert proc.returncode == 0 and "'shared'" in proc.stdout, proc.stderr
    assert (clone / "data/a.txt").read_text() == "a\n"
