"""Shared CLI plumbing: one-line errors instead of tracebacks for user mistakes, params loading, dry runs."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from productgen.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])

ParamsOption = Annotated[
    Path, typer.Option("--params", help="params.yaml to read (CLI options override its values).")
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print the resolved configuration as JSON and exit without running.")
]


def user_errors(func: F) -> F:
    """Turn :class:`UserError` into ``error: <message>`` on stderr and its exit code, without a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def print_config(obj: Any) -> None:
    from productgen.config import to_dict

    data = {k: to_dict(v) for k, v in obj.items()} if isinstance(obj, dict) else to_dict(obj)
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
