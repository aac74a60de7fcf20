"""Every command answers --help, the CLI starts without importing the heavy stack, --dry-run resolves config."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from productgen.cli import app
from tests.conftest import ROOT, run_cli


def _commands() -> list[tuple[str, ...]]:
    """Every command path, walked through click (the root imports its subcommands only when asked)."""
    found: list[tuple[str, ...]] = []

    def walk(cmd: Any, prefix: tuple[str, ...]) -> None:
        found.append(prefix)
        if hasattr(cmd, "list_commands"):
            ctx = cmd.context_class(cmd)
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), (*prefix, name))

    walk(typer.main.get_command(app), ())
    return found


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "productgen")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; from productgen.cli import app; "
        "heavy = [m for m in ('torch', 'great_expectations', 'dvc', 'mlflow', 'prefect', 'pandas') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_every_listed_command_is_reachable() -> None:
    paths = _commands()
    from productgen import tasks
    from productgen.cli import COMMANDS

    assert {p[0] for p in paths if len(p) == 1} == set(COMMANDS)
    assert {("train", t) for t in tasks.TASKS} <= set(paths) and ("registry", "approve") in paths


def _cli_modules_after(code: str) -> list[str]:
    run = f"import sys; {code}; print(' '.join(sorted(m for m in sys.modules if m.startswith('productgen.cli'))))"
    proc = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1].split()


def test_a_command_imports_only_its_own_cli_module() -> None:
    """Start-up imports no command module, and `productgen train vae` imports cli/train.py alone: so a DVC stage
    depends on the CLI module it runs, not on every command (an edit to `productgen web` re-runs no training)."""
    assert _cli_modules_after("import productgen.cli") == ["productgen.cli"]
    ran = _cli_modules_after(
        "from productgen.cli import app; app(['train', 'vae', '--dry-run', '--max-steps', '1'], standalone_mode=False)"
    )
    assert ran == ["productgen.cli", "productgen.cli.common", "productgen.cli.train"]


def test_dry_run_prints_resolved_config() -> None:
    p = run_cli("data", "prepare", "--dry-run", "--resolution", "64", "--mode", "RGB", cwd=ROOT)
    assert p.returncode == 0, p.stderr
    cfg = json.loads(p.stdout)
    assert cfg["resolution"] == 64 and cfg["mode"] == "RGB" and cfg["source"] == "builtin"


def test_train_dry_run_prints_train_and_model_sections() -> None:
    p = run_cli("train", "gan", "--dry-run", "--profile", "quick-cpu", "--max-steps", "7", cwd=ROOT)
    assert p.returncode == 0, p.stderr
    cfg = json.loads(p.stdout)
    assert cfg["train"]["max_steps"] == 7 and cfg["gan"]["g_channels"] == 32
