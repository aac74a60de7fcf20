"""Shared CLI plumbing: one-line errors instead of tracebacks for user mistakes, params loading, dry runs."""

from __future__ import annotations

import errno
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from productgen.common.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])

ParamsOption = Annotated[Path, typer.Option("--params", help="params.yaml to read (CLI options override its values).")]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print the resolved configuration as JSON and exit without running.")
]


Params = Annotated[
    Optional[Path],
    typer.Option("--params", help="params.yaml to read; default ./params.yaml if present. Options override it."),
]


Profile = Annotated[
    Optional[str],
    typer.Option(
        "--profile", help="Partial params file merged over params.yaml (a name in flows/profiles/ or a path)."
    ),
]


def load_cli_params(params: Path | None, overrides: dict[str, Any], profile: str | None = None) -> Any:
    """params.yaml (./params.yaml when present and none is named) with a profile and the options merged over it."""
    from productgen.config import load_params

    if params is None:
        params = Path("params.yaml") if Path("params.yaml").is_file() else None
    return load_params(params, overrides, profile)


OS_ERROR_EXIT = 1  # the machine refused (disk full, read-only, permissions), as opposed to a usage mistake (2)

# errno -> what the user can do about it
_OS_HINTS: dict[int, str] = {
    errno.ENOSPC: "no space left on the device; free some space or write to another disk",
    errno.EDQUOT: "disk quota exceeded; free some space or write to another disk",
    errno.EROFS: "read-only file system; write to a folder on a writable disk",
    errno.EACCES: "permission denied; fix the permissions or choose a folder you can write to",
    errno.EPERM: "operation not permitted; fix the permissions or choose another folder",
    errno.ENOTDIR: "a file is in the way where a folder is expected; move it or choose another path",
    errno.EISDIR: "a folder is in the way where a file is expected; move it or choose another path",
    errno.EEXIST: "something is already in the way at this path; move it or choose another path",
    errno.ENAMETOOLONG: "file name too long; choose a shorter name or path",
    errno.ENOENT: "no such file or folder; check the path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) or process fewer files at once",
    errno.EIO: "input/output error from the device; check the disk",
}


def os_error_line(err: OSError) -> str:
    """One line for an ``OSError``: the path(s) involved, what happened, and what to do."""
    where = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
    hint = _OS_HINTS.get(err.errno or -1, err.strerror or str(err) or type(err).__name__)
    return f"{where}: {hint}" if where else hint


def _storage_error_line(err: Exception) -> str | None:
    """Writers in Rust/C (safetensors) report a full disk as their own exception type: recognise the text."""
    text = str(err)
    for needle, code in (
        ("No space left", errno.ENOSPC),
        ("StorageFull", errno.ENOSPC),
        ("Read-only file system", errno.EROFS),
        ("ReadOnlyFilesystem", errno.EROFS),
        ("Permission denied", errno.EACCES),
        ("PermissionDenied", errno.EACCES),
    ):
        if needle in text:
            return f"{_OS_HINTS[code]} ({type(err).__name__}: {text.splitlines()[0][:200]})"
    return None


def user_errors(func: F) -> F:
    """Turn :class:`UserError` into ``error: <message>`` on stderr and its exit code, without a traceback.

    An ``OSError`` that reaches a command (an output on a full or read-only disk, a file where a folder should
    be, no permission) is one line too, naming the path and what to do, exit 1: these are the machine's
    answers, not bugs, and every command writes through this wrapper.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None
        except OSError as err:
            typer.echo(f"error: {os_error_line(err)}", err=True)
            raise typer.Exit(OS_ERROR_EXIT) from None
        except Exception as err:
            line = _storage_error_line(err)
            if line is None:
                raise
            typer.echo(f"error: {line}", err=True)
            raise typer.Exit(OS_ERROR_EXIT) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def print_config(obj: Any) -> None:
    from productgen.config import to_dict

    data = {k: to_dict(v) for k, v in obj.items()} if isinstance(obj, dict) else to_dict(obj)
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
