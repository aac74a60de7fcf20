"""Every command answers --help, the CLI starts without importing the heavy stack, --dry-run resolves config."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from productgen.cli import app
from tests.conftest import ROOT, run_cli


def _commands(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for cmd in group.registered_commands:
        found.append((*prefix, cmd.name or cmd.callback.__name__))  # type: ignore[union-attr]
    for sub in group.registered_groups:
        found += _commands(sub.typer_instance, (*prefix, sub.name))  # type: ignore[arg-type]
    return found


@pytest.mark.parametrize("path", _commands(app), ids=lambda p: " ".join(p) or "productgen")
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
