"""What a model version was made from, and how to get it back: data snapshots with DVC, the run key, restore.

Every retrain versions the prepared dataset it trains on: a copy goes to ``<retrain.snapshot_dir>/<model>/data``,
``dvc add`` puts it in the DVC cache and writes ``data.dvc`` beside it, ``dvc push`` sends it to the remote (the
local default remote, or S3 on the team servers). The DVC md5 of that folder (``<hex>.dir``) is the data's
identity: it goes on the MLflow run and the model version with the code's commit, a hash of the resolved
params and the manifest's hash.

Where the ``.dvc`` pointer is kept. A pointer holds nothing but the md5 and the path, so the md5 in the registry
is enough to restore the data from the remote anywhere (:func:`restore_snapshot` writes a pointer for it and runs
``dvc pull``); nothing needs to be committed. When the worker runs in a git checkout, the flow also tags
``productgen/<model>/v<N>``: a commit whose parent is HEAD and whose tree is HEAD's plus the pointer, made with a
temporary index, so the work tree, the index and every branch stay as they were, and ``git checkout <tag> &&
dvc pull`` brings back the code and the data together.

The run key (task, model, data md5, code commit, params hash) decides whether a scheduled run has anything to do:
equal to the champion's, nothing changed since it was trained.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from productgen.common.errors import UserError


@dataclass(frozen=True)
class Snapshot:
    md5: str  # DVC md5 of the prepared dataset folder ("<hex>.dir")
    path: Path  # the workspace copy (tracked by pointer)
    pointer: Path  # its .dvc file
    remote: str | None  # the remote it was pushed to (None: the default one)
    pushed: bool


def _dvc(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        detail = next((ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if "ERROR" in ln), "")
        raise UserError(f"{what} failed: {detail or (proc.stderr or proc.stdout).strip()[-300:]}")


def dvc_root(start: Path | None = None) -> Path:
    """The DVC repository the worker runs in (the folder holding ``.dvc/``, searched upwards)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    raise UserError(
        f"{here}: not inside a DVC repository; run the flow from the project checkout "
        "(or 'dvc init' here), or set retrain.snapshot: false"
    )


def snapshot_dataset(
    prepared: Path, model: str, snapshot_dir: str, remote: str | None = None, repo: Path | None = None
) -> Snapshot:
    """Version ``prepared`` with DVC (copy, ``dvc add``, ``dvc push``) and return its md5.

    The copy is swapped in as a whole (a crash leaves the previous snapshot), and the user's prepared folder is
    only read. An unchanged dataset gives the same md5 and pushes nothing new.
    """
    root = dvc_root(repo)
    dest = (root / snapshot_dir / model / "data").resolve()
    if not dest.is_relative_to(root):
        raise UserError(f"retrain.snapshot_dir: {snapshot_dir} must be inside the DVC repository {root}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(f".data.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(prepared, staging)
    old = dest.with_name(f".data.old-{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
    rel = dest.relative_to(root).as_posix()
    pointer = dest.with_name("data.dvc")
    staged_before = _staged(root)
    _check(_dvc("add", rel, cwd=root), f"dvc add {rel}")
    # With core.autostage DVC `git add`s the pointer and its .gitignore: the user's index is not ours to change.
    added = sorted(_staged(root) - staged_before)
    if added:
        _git("reset", "-q", "--", *added, cwd=root)
    md5 = pointer_md5(pointer)
    args = ["push", pointer.relative_to(root).as_posix()] + (["-r", remote] if remote else [])
    push = _dvc(*args, cwd=root)
    if push.returncode != 0 and "no remote" not in (push.stderr + push.stdout).lower():
        _check(push, f"dvc push {rel}")
    return Snapshot(md5, dest, pointer, remote, push.returncode == 0)


def pointer_md5(pointer: Path) -> str:
    try:
        return str(yaml.safe_load(pointer.read_text())["outs"][0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError) as err:
        raise UserError(f"{pointer}: not a DVC pointer with an md5 ({err})") from None


def pointer_text(md5: str, path: str) -> str:
    """A ``.dvc`` pointer for folder ``path`` with content ``md5``: all DVC needs to bring the data back."""
    return yaml.safe_dump({"outs": [{"md5": md5, "hash": "md5", "path": path}]}, sort_keys=False)


def restore_snapshot(md5: str, out: Path, remote: str | None = None, repo: Path | None = None) -> Path:
    """Bring the dataset with DVC md5 ``md5`` back into ``out`` (from the local cache, else the remote).

    ``out`` must not exist yet (nothing of the user's is overwritten) and must lie inside the DVC repository. The
    temporary pointer sits at the repository's top (a pointer in a git-ignored folder is refused by DVC) and is
    removed afterwards; the data stays.
    """
    root = dvc_root(repo)
    out = out.resolve()
    if out.exists():
        raise UserError(f"{out}: exists; restore into a new folder")
    if not out.is_relative_to(root):
        raise UserError(f"{out}: must be inside the DVC repository {root} (DVC restores workspace paths)")
    out.parent.mkdir(parents=True, exist_ok=True)
    pointer = root / f".productgen-restore-{os.getpid()}.dvc"
    pointer.write_text(pointer_text(md5, out.relative_to(root).as_posix()))
    try:
        args = ["pull", pointer.name] + (["-r", remote] if remote else [])
        _check(_dvc(*args, cwd=root), f"dvc pull of data {md5}")
    finally:
        pointer.unlink(missing_ok=True)
    return out


def restore_commands(
    md5: str, out: str, remote: str | None = None, tag: str | None = None, pointer: str | None = None
) -> list[str]:
    """The shell commands that bring the data back by hand (what ``registry lineage`` prints)."""
    r = f" -r {remote}" if remote else ""
    cmds = [
        f"productgen registry lineage TASK --version N --restore {out}    # does the two lines below",
        f"printf 'outs:\\n- md5: {md5}\\n  hash: md5\\n  path: {Path(out).name}\\n' > {out}.dvc",
        f"dvc pull{r} {out}.dvc && rm {out}.dvc",
    ]
    if tag and pointer:
        cmds.append(f"git checkout {tag} && dvc pull{r} {pointer}    # code and data of that version together")
    return cmds


def _git(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})}
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _staged(root: Path) -> set[str]:
    """Paths staged in the git index of ``root`` (empty outside a git checkout)."""
    out = _git("diff", "--cached", "--name-only", "--relative", cwd=root)
    return set(out.splitlines()) if out else set()


def code_version(package_dir: Path | None = None) -> dict[str, str]:
    """The code's git commit, whether the code is dirty (the package and ``flows/``: data pointers, lock files and
    params changing in the checkout are not code), and a hash of its uncommitted diff (so a dirty tree still gives
    a key that changes with the code)."""
    import productgen

    where = package_dir or Path(productgen.__file__).resolve().parent
    commit = _git("rev-parse", "HEAD", cwd=where)
    if commit is None:
        return {
            "git_commit": f"unknown (productgen {getattr(productgen, '__version__', '?')}, not a git checkout)",
            "git_dirty": "unknown",
            "code_diff_sha": "",
        }
    top = Path(_git("rev-parse", "--show-toplevel", cwd=where) or where)
    paths = [str(where)] + [str(top / "flows")] * (top / "flows").is_dir()
    status = _git("status", "--porcelain", "--untracked-files=no", "--", *paths, cwd=where) or ""
    diff = (_git("diff", "HEAD", "--", *paths, cwd=where) or "") if status else ""
    return {
        "git_commit": commit,
        "git_dirty": str(bool(status)).lower(),
        "code_diff_sha": hashlib.sha256(diff.encode()).hexdigest()[:16] if status else "",
    }


def params_hash(resolved: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_key(task: str, model: str, data_md5: str, code: dict[str, str], params_sha: str) -> str:
    """What a retrain's result depends on; a run whose key equals the champion's has nothing new to learn."""
    ident = [task, model, data_md5, code["git_commit"], code.get("code_diff_sha", ""), params_sha]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:24]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tag_snapshot(model: str, version: str, pointer: Path, md5: str, repo: Path | None = None) -> str | None:
    """In a git checkout, tag ``productgen/<model>/v<version>``: HEAD's tree plus the snapshot's pointer.

    Made with a temporary index (``GIT_INDEX_FILE``), so the user's index, work tree and branches are untouched.
    Returns the tag, or None outside a git checkout (the md5 alone restores the data).
    """
    root = dvc_root(repo)
    if _git("rev-parse", "--git-dir", cwd=root) is None:
        return None
    tag = f"productgen/{model}/v{version}"
    rel = pointer.resolve().relative_to(Path(_git("rev-parse", "--show-toplevel", cwd=root) or root)).as_posix()
    blob = _git("hash-object", "-w", str(pointer), cwd=root)
    head = _git("rev-parse", "--verify", "-q", "HEAD", cwd=root)
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if head:
            _git("read-tree", head, cwd=root, env=env)
        if (
            blob is None
            or _git("update-index", "--add", "--cacheinfo", f"100644,{blob},{rel}", cwd=root, env=env) is None
        ):
            return None
        tree = _git("write-tree", cwd=root, env=env)
    if tree is None:
        return None
    message = f"productgen: data of {model} v{version} (DVC md5 {md5})"
    commit = _git("commit-tree", tree, *(["-p", head] if head else []), "-m", message, cwd=root)
    if commit is None or _git("tag", "-f", tag, commit, cwd=root) is None:
        return None
    return tag
