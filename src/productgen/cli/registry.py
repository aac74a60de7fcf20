"""``productgen registry promote|rollback|history|lineage <task>``: the champion / challenger aliases in MLflow,
the promotion gate, and the data and code each version was made from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from productgen.cli.common import Params, load_cli_params, user_errors
from productgen.common.errors import UserError

registry_app = typer.Typer(
    help="Promote, roll back and inspect registered models (aliases champion/challenger).", no_args_is_help=True
)

Task = Annotated[
    str,
    typer.Argument(
        help="Model task (the task registry's): gan, vae, restore, vae-restore, pix2pix, cyclegan, style, adain."
    ),
]
Name = Annotated[
    Optional[str],
    typer.Option(
        "--name", help="Registered model (default productgen-TASK), e.g. productgen-restore-sr2 for a second restorer."
    ),
]


@registry_app.command("promote")
@user_errors
def promote(
    task: Task,
    params: Params = None,
    version: Annotated[Optional[str], typer.Option(help="Version to promote (default: the challenger).")] = None,
    margin: Annotated[Optional[float], typer.Option(help="Required gain on the primary metric.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Promote without comparing (recorded as forced).")] = False,
    rescore: Annotated[
        bool,
        typer.Option(
            "--rescore", help="Score the version and the champion again on the current data (data.out) before deciding."
        ),
    ] = False,
    name: Name = None,
) -> None:
    """Make the challenger champion if the gate lets it through: better than the champion on the same evaluation
    set by the margin, no category worse by more than its margin, the task's absolute bar cleared.

    Without --rescore the gate uses the verdict the retrain flow recorded against the current champion (or both
    versions' evaluations on the very same set); with it, both are scored now on data.out's evaluate.split.

    Examples: productgen registry promote gan ; productgen registry promote restore --version 3 --rescore
    """
    from productgen.registry import promotion as registry

    p = load_cli_params(params, {})
    m = registry.margin_for(task, p.registry) if margin is None else margin
    verdict = None
    if rescore and not force:
        from productgen.registry import gate
        from productgen.registry.rescore import score_pair
        from productgen.tracking.runs import model_dir_from_uri

        model = registry.registered_name(task, name)
        version = registry.resolve_version(task, version, name)
        out = Path(p.evaluate.out.replace("{task}", task)) / f"rescore-v{version}"
        challenger, champion = score_pair(
            p, task, model_dir_from_uri(f"models:/{model}/{version}"), None, version, Path(p.data.out), out, name
        )
        verdict = gate.decide(task, challenger, champion, p.registry, m)
        registry.record_verdict(task, version, verdict, name)
    d = registry.promote(task, version, m, force, name, verdict=verdict, cfg=p.registry)
    verdict_text = "PROMOTED" if d.promoted else "kept champion"
    typer.echo(f"{d.model} v{d.version}: {verdict_text} ({d.reason}); champion is now v{d.champion_after}")


@registry_app.command("lineage")
@user_errors
def lineage(
    task: Task,
    version: Annotated[Optional[str], typer.Option(help="Version (default: the champion).")] = None,
    restore: Annotated[
        Optional[Path],
        typer.Option(
            "--restore",
            help="Bring that version's training data back into this new folder (inside the DVC repository).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the lineage as JSON.")] = False,
    name: Name = None,
) -> None:
    """What a version was trained on and with: the DVC md5 of its data, the code's commit, the params hash, the
    manifest hash; and the commands that restore that data (from the DVC cache or remote).

    Examples: productgen registry lineage restore ; productgen registry lineage restore --version 1 --restore week1
    """
    from productgen.registry import promotion as registry
    from productgen.tracking import lineage as lin

    info = registry.lineage_of(task, version, name)
    md5 = str(info.get("data_md5", ""))
    if restore is not None:
        if not md5.endswith(".dir"):
            raise UserError(
                f"{info['model']} v{info['version']}: no DVC snapshot recorded (data_md5 {md5 or '-'}); "
                "only versions trained by the retrain flow with retrain.snapshot: true can be restored"
            )
        remote = info.get("dvc_remote")
        out = lin.restore_snapshot(
            md5,
            restore,
            None if remote in (None, "(default)") else remote,
            Path(info["dvc_repo"]) if info.get("dvc_repo") and Path(info["dvc_repo"]).is_dir() else None,
        )
        typer.echo(f"restored the training data of {info['model']} v{info['version']} ({md5}) into {out}")
        return
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"{info['model']} v{info['version']}")
    for key in (
        "data_md5",
        "content_hash",
        "manifest_sha256",
        "categories",
        "git_commit",
        "git_dirty",
        "params_hash",
        "key",
        "dvc_repo",
        "dvc_pointer",
        "dvc_remote",
        "git_tag",
        "eval_set",
        "run_id",
    ):
        if info.get(key) not in (None, ""):
            typer.echo(f"  {key:<16} {info[key]}")
    if md5.endswith(".dir"):
        remote = info.get("dvc_remote")
        typer.echo("restore that data (in the DVC repository):")
        for cmd in lin.restore_commands(
            md5,
            f"restored-v{info['version']}",
            None if remote in (None, "(default)") else remote,
            info.get("git_tag"),
            info.get("dvc_pointer"),
        ):
            typer.echo(f"  {cmd.replace('TASK', task).replace('--version N', '--version ' + info['version'])}")


@registry_app.command("rollback")
@user_errors
def rollback(
    task: Task,
    to: Annotated[
        Optional[str], typer.Option("--to", help="Version to make champion (default: the previous one).")
    ] = None,
    name: Name = None,
) -> None:
    """Point champion back at the previous champion (or --to VERSION).

    Example: productgen registry rollback gan
    """
    from productgen.registry.promotion import rollback as do_rollback

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
    from productgen.registry.promotion import history as do_history

    events = do_history(task, name)
    if as_json:
        typer.echo(json.dumps(events, indent=2))
        return
    if not events:
        typer.echo("no promotions yet")
    for e in events:
        typer.echo(
            f"{e['time']}  {e['action']:<8} v{e['version']:<4} champion v{e['champion_before']} -> "
            f"v{e['champion_after']}  {e['reason']}"
        )


@registry_app.command("ship")
@user_errors
def ship(
    tasks: Annotated[
        Optional[list[str]], typer.Argument(help="Tasks to ship (default: every one in champions/).")
    ] = None,
    params: Params = None,
    table: Annotated[
        bool,
        typer.Option("--table", help="Print the shipped champions' quality table (markdown) and register nothing."),
    ] = False,
) -> None:
    """Register the shipped champions (champions/<task>, committed with the code) in the MLflow store; each becomes
    champion where its task has none yet, else challenger.

    Examples: productgen registry ship ; productgen registry ship gan restore ; productgen registry ship --table
    """
    from productgen.registry import shipped

    if table:
        typer.echo(shipped.table())
        return
    from productgen.registry.promotion import ship as do_ship

    p = load_cli_params(params, {})
    found = shipped.cards()
    for task in tasks or list(found):
        if task not in found:
            raise UserError(f"{task}: no shipped champion in {shipped.root()} (shipped: {', '.join(found) or 'none'})")
        d = do_ship(task, p.registry)
        assert d is not None
        state = "champion" if d.promoted else d.reason
        typer.echo(f"{d.model} v{d.version}: {state} ({found[task].get('figure', '?')})")


Version = Annotated[str, typer.Option("--version", help="The version that waits (productgen registry waiting TASK).")]
UsersFile = Annotated[
    Optional[Path],
    typer.Option(
        "--users-file",
        help="Who may answer: the web page's users file (default web.users_file; none there: anyone, as the OS user).",
    ),
]


def _users_file(params: Path | None, users_file: Path | None) -> str:
    return str(users_file) if users_file is not None else load_cli_params(params, {}).web.users_file


@registry_app.command("waiting")
@user_errors
def waiting(
    task: Task,
    as_json: Annotated[bool, typer.Option("--json", help="Print the entries as JSON.")] = False,
    name: Name = None,
) -> None:
    """List the challengers that wait for approval (registry.approval: required), with both scores on the same set.

    Example: productgen registry waiting restore
    """
    from productgen.registry import approval

    entries = approval.waiting(task, name)
    if as_json:
        typer.echo(json.dumps(entries, indent=2, default=str))
        return
    if not entries:
        typer.echo("nothing waits for approval")
    for e in entries:
        metric = e.get("metric") or "?"
        mine = e["metrics"].get(metric)
        theirs = (e.get("champion_metrics") or {}).get(metric)
        vs = f" vs champion v{e['champion']} {theirs:.4g}" if e.get("champion") and theirs is not None else ""
        typer.echo(
            f"{e['model']} v{e['version']}: {metric} {mine:.4g}{vs}; requested {e['requested_at']}, "
            f"deadline {e['deadline']}"
            if isinstance(mine, (int, float))
            else f"{e['model']} v{e['version']}: requested {e['requested_at']}, deadline {e['deadline']}"
        )


@registry_app.command("approve")
@user_errors
def approve(
    task: Task,
    version: Version,
    user: Annotated[
        Optional[str], typer.Option("--user", help="Who approves (default: the OS user); must be allowed to.")
    ] = None,
    reason: Annotated[Optional[str], typer.Option("--reason", help="Why (optional, recorded).")] = None,
    params: Params = None,
    users_file: UsersFile = None,
    name: Name = None,
) -> None:
    """Approve a challenger that waits for approval: it is promoted through the gate (its verdict against the
    current champion), and the answer (who, when, why) is recorded with the decision.

    Example: productgen registry approve restore --version 4
    """
    from productgen.registry import approval

    p = load_cli_params(params, {})
    who = user or approval.current_user()
    r = approval.approve(task, version, who, reason, name, cfg=p.registry, users_file=_users_file(params, users_file))
    verdict = "PROMOTED" if r["promoted"] else "not promoted"
    typer.echo(
        f"{r['model']} v{r['version']}: approved by {who}; {verdict} ({r['promotion_reason']}); "
        f"champion is now v{r['decision']['champion_after']}"
    )


@registry_app.command("reject")
@user_errors
def reject(
    task: Task,
    version: Version,
    reason: Annotated[str, typer.Option("--reason", help="Why it is rejected (required, recorded in the history).")],
    user: Annotated[
        Optional[str], typer.Option("--user", help="Who rejects (default: the OS user); must be allowed to.")
    ] = None,
    params: Params = None,
    users_file: UsersFile = None,
    name: Name = None,
) -> None:
    """Reject a challenger that waits for approval: not promoted; who, when and why go to its promotion record and
    the model's history (productgen registry history TASK).

    Example: productgen registry reject restore --version 4 --reason "shoes look blurry"
    """
    from productgen.registry import approval

    who = user or approval.current_user()
    r = approval.reject(task, version, who, reason, name, users_file=_users_file(params, users_file))
    typer.echo(f"{r['model']} v{r['version']}: rejected by {who} ({reason}); champion stays v{r['champion_after']}")
