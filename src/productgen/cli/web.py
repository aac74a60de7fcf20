"""``productgen web``: the shop's page (FastAPI + uvicorn, imported only when the command runs).

``productgen web`` serves it on 127.0.0.1:8000 (``--host``, ``--port``; params.yaml ``web:``);
``productgen web add-user NAME`` writes a hashed password to the users file for promote / rollback.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from productgen.cli.common import Params, load_cli_params, user_errors
from productgen.common.errors import UserError

web_app = typer.Typer(
    help="The shop's web page: generate, enhance, restyle, translate (sketch to product, one category into another), models.",
    invoke_without_command=True,
)


@web_app.callback()
@user_errors
def serve(
    ctx: typer.Context,
    host: Annotated[
        Optional[str],
        typer.Option(help="Address to bind (default web.host: 127.0.0.1; 0.0.0.0 only behind a TLS proxy)."),
    ] = None,
    port: Annotated[Optional[int], typer.Option(help="TCP port (default web.port: 8000).")] = None,
    params: Params = None,
    users_file: Annotated[
        Optional[Path], typer.Option("--users-file", help="Users who may promote / roll back (default web.users_file).")
    ] = None,
    auth: Annotated[
        Optional[str],
        typer.Option(
            help="Who may promote / roll back: users-file (hashed passwords) or "
            "mlflow (the tracking server's users; default web.auth)."
        ),
    ] = None,
    cache_dir: Annotated[
        Optional[Path],
        typer.Option("--cache-dir", help="Where champion weights are downloaded (default: a temporary folder)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level: warning, info, debug.")] = "info",
) -> None:
    """Serve the page over the registry's champions ($MLFLOW_TRACKING_URI, default ./mlflow.db).

    Examples:

      productgen web                                  # http://127.0.0.1:8000

      productgen web --host 127.0.0.1 --port 8080

      productgen web add-user alice                   # then sign in to promote / roll back
    """
    if ctx.invoked_subcommand is not None:
        return
    p = load_cli_params(
        params,
        {
            "web.host": host,
            "web.port": port,
            "web.auth": auth,
            "web.users_file": str(users_file) if users_file else None,
        },
    )
    import uvicorn

    from productgen.tracking.runs import tracking_uri
    from productgen.web.app import create_app

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in the server log
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(p, cache_dir=cache_dir)
    shown = "127.0.0.1" if p.web.host in ("0.0.0.0", "::") else p.web.host
    typer.echo(f"productgen web: http://{shown}:{p.web.port}  (models from {tracking_uri()}; Ctrl-C stops)")
    # One process: the model cache, sessions and the concurrency gate live in it (web.workers threads compute).
    uvicorn.run(
        app,
        host=p.web.host,
        port=p.web.port,
        log_level=log_level,
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
        timeout_graceful_shutdown=5,
    )


@web_app.command("add-user")
@user_errors
def add_user(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, '_', '.', '@', '-').")],
    params: Params = None,
    users_file: Annotated[Optional[Path], typer.Option("--users-file", help="Default web.users_file.")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin (for scripts) instead of prompting.")
    ] = False,
) -> None:
    """Add (or change) a user who may promote and roll back models; only a scrypt hash is stored.

    Example: productgen web add-user alice
    """
    from productgen.web.auth import add_user as do_add

    p = load_cli_params(params, {})
    path = users_file or Path(p.web.users_file)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise UserError("the passwords differ; nothing was written")
    replaced = do_add(path, name, password)
    typer.echo(f"{'changed' if replaced else 'added'} {name} in {path}")
