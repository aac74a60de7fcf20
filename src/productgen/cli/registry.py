"""``productgen registry promote|rollback|history <task>``: the champion / challenger aliases in MLflow."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from productgen.cli.common import user_errors
from productgen.cli.data import Params, _load

registry_app = typer.Typer(help="Promote, roll back and inspect registered models (aliases champion/challenger).",
                           no_args_is_help=True)  # fmt: skip

Task = Annotated[str, typer.Argument(help="Model task: gan, vae, restore, vae-restore, pix2pix, cyclegan, style, adain.")]
Name = Annotated[Optional[str], typer.Option(
    "--name", help="Registered model (default productgen-TASK), e.g. productgen-restore-sr2 for a second restorer.")]


@registry_app.command("promote")
@user_errors
def promote(
    task: Task,
    params: Params = None,
    version: Annotated[Optional[str], typer.Option(help="Version to promote (default: the challenger).")] = None,
    margin: Annotated[Optional[float], typer.Option(help="Required gain on the primary metric.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Promote without comparing (recorded as forced).")] = False,
    name: Name = None,
) -> None:
    """Make the challenger champion if it beats the champion on the same evaluation set.

    Example: productgen registry promote gan
    """
    from productgen.registry import margin_for
    from productgen.registry import promote as do_promote

    p = _load(params, {})
    d = do_promote(task, version, margin_for(task, p.registry) if margin is None else margin, force, name)
    verdict = "PROMOTED" if d.promoted else "kept champion"
    typer.echo(f"{d.model} v{d.version}: {verdict} ({d.reason}); champion is now v{d.champion_after}")


@registry_app.command("rollback")
@user_errors
def rollback(
    task: Task,
    to: Annotated[Optional[str], typer.Option("--to", help="Version to make champion (default: the previous one).")] = None,
    name: Name = None,
) -> None:
    """Point champion back at the previous champion (or --to VERSION).

    Example: productgen registry rollback gan
    """
    from productgen.registry import rollback as do_rollback

    d = do_rollback(task, to, name)
    typer.echo(f"{d.model}: champion v{d.champion_before} -> v{d.champion_after} (rollback)")


@registry_app.command("history")
@user_errors
def history(
    task: Task,
    as_json: Annotated[bool, typer.Option("--json", help="Print the events as JSON.")] = False,
    name: Name = None,
) -> None:
    """List promotions, rejections and rollbacks with their evidence, oldest first.

    Example: productgen registry history gan
    """
    from productgen.registry import history as do_history

    events = do_history(task, name)
    if as_json:
        typer.echo(json.dumps(events, indent=2))
        return
    if not events:
        typer.echo("no promotions yet")
    for e in events:
        typer.echo(f"{e['time']}  {e['action']:<8} v{e['version']:<4} champion v{e['champion_before']} -> "
                   f"v{e['champion_after']}  {e['reason']}")  # fmt: skip
