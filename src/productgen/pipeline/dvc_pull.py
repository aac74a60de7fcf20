"""``dvc pull`` for a fresh clone that says in one line what it could not get and why, and changes nothing then.

    python -m productgen.pipeline.dvc_pull                 # everything the pipeline and data.dvc track
    python -m productgen.pipeline.dvc_pull data.dvc        # only the raw dataset
    python -m productgen.pipeline.dvc_pull -r team train   # another remote, some targets

Before anything is fetched it checks the remote: a local folder (the committed default, ``~/.cache/productgen/
dvc-remote``, is a folder on the machine that pushed) must exist here; an S3 remote needs ``dvc-s3`` (``pip
install -e ".[team]"``). Then ``dvc fetch`` brings the objects into the cache and only when every one came does
``dvc checkout`` place them: a partial fetch leaves the workspace as it was. Exit 0 when everything came, 1 with
one line otherwise. The shipped champions (``champions/``) are in git: they need no remote.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

HINT = (
    "point this clone at a shared remote: dvc remote add -d --local team s3://dvc/productgen "
    "(docs/team.md; keys with dvc remote modify --local); the shipped champions in champions/ need no remote"
)


class PullError(Exception):
    """What could not be pulled and why, in one line."""


def remote_of(root: Path, name: str | None) -> tuple[str, str]:
    """The remote's name and URL as DVC resolves them (config, config.local, the default)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        config = repo.config
        name = name or config["core"].get("remote")
        if not name:
            raise PullError(f"dvc pull: nothing pulled: this clone has no default DVC remote; {HINT}")
        remotes = config.get("remote", {})
        if name not in remotes:
            raise PullError(f"dvc pull: nothing pulled: no DVC remote named {name!r} (have: {', '.join(remotes)})")
        return name, str(remotes[name]["url"])


def check_remote(root: Path, name: str, url: str) -> None:
    scheme = re.match(r"^([a-z][a-z0-9+.-]*)://", url)
    if scheme is None or scheme.group(1) == "file":
        path = Path(url.removeprefix("file://")).expanduser()
        if not path.is_absolute():
            path = (root / ".dvc" / path).resolve()
        if not path.is_dir():
            raise PullError(
                f"dvc pull: nothing pulled: the remote {name!r} is the folder {url}, which does not exist on this "
                f"machine (it is the cache of the machine that pushed); {HINT}"
            )
        return
    if scheme.group(1) == "s3":
        try:
            import dvc_s3  # noqa: F401
        except ImportError:
            raise PullError(
                f"dvc pull: nothing pulled: the remote {name!r} is S3 ({url}) and dvc-s3 is not installed "
                '(pip install -e ".[team]")'
            ) from None


def _summary(output: str) -> str:
    """DVC's reason, in one line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    missing = [ln for ln in lines if "missing" in ln.lower() or "not found" in ln.lower()]
    pick = (errors or missing or lines or ["no output"])[0]
    return re.sub(r"^ERROR:\s*", "", pick)


def pull(root: Path, targets: list[str], remote: str | None = None, jobs: int | None = None) -> str:
    """Fetch then check out ``targets`` (all when empty); the line to print on success; :class:`PullError`."""
    name, url = remote_of(root, remote)
    check_remote(root, name, url)
    dvc = [sys.executable, "-m", "dvc"]
    common = ["-r", name] + (["-j", str(jobs)] if jobs else [])
    fetch = subprocess.run([*dvc, "fetch", *common, *targets], cwd=root, capture_output=True, text=True)
    if fetch.returncode != 0:
        missing = re.search(r"(\d+) files? failed to download", fetch.stdout + fetch.stderr)
        what = f"{missing.group(1)} files are not in the remote" if missing else _summary(fetch.stderr + fetch.stdout)
        raise PullError(
            f"dvc pull: nothing checked out: {what} (remote {name!r}, {url}); the workspace is unchanged; push them "
            "from the machine that produced them (dvc push), or run `dvc repro` to produce them here"
        )
    checkout = subprocess.run([*dvc, "checkout", *targets], cwd=root, capture_output=True, text=True)
    if checkout.returncode != 0:
        raise PullError(f"dvc pull: checkout failed: {_summary(checkout.stderr + checkout.stdout)}")
    return f"dvc pull: everything came from the remote {name!r} ({url})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help=".dvc files or stages (default: everything)")
    ap.add_argument("-r", "--remote", help="remote name (default: the configured default)")
    ap.add_argument("-j", "--jobs", type=int, help="parallel downloads")
    ap.add_argument("--root", type=Path, default=Path("."))
    args = ap.parse_args(argv)
    try:
        print(pull(args.root.resolve(), args.targets, args.remote, args.jobs))
    except PullError as err:
        print(err, file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - a DVC error of any kind: one line, no traceback
        print(f"dvc pull: nothing checked out: {type(err).__name__}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
