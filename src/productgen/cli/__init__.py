"""The ``productgen`` command: thin Typer shells over functions in the package.

Each subcommand lives in its own module and is imported only when it runs (``_LazyGroup``), so ``productgen train
vae`` imports ``cli/train.py`` and nothing of ``cli/registry.py`` or ``cli/web.py``. That keeps start-up quick and
keeps each DVC stage's derived code dependencies to the CLI module it actually runs: an edit to ``productgen web``
does not invalidate the training stages (``python -m productgen.pipeline.dvc_deps``). Heavy imports (torch, Great
Expectations, DVC, MLflow, Prefect) happen inside each command, so ``productgen --help`` answers at once.
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
import typer.main
from typer.core import TyperGroup

# name -> (module, attribute): a Typer sub-app (a group of commands) or a command function, in --help order.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("productgen.cli.data", "data_app"),
    "metrics": ("productgen.cli.metrics", "metrics_app"),
    "train": ("productgen.cli.train", "train_app"),
    "tune": ("productgen.cli.tune", "tune_app"),
    "registry": ("productgen.cli.registry", "registry_app"),
    "web": ("productgen.cli.web", "web_app"),
    "generate": ("productgen.cli.generate", "generate_cmd"),
    "evaluate": ("productgen.cli.evaluate", "evaluate_cmd"),
    "enhance": ("productgen.cli.enhance", "enhance_command"),
    "stylize": ("productgen.cli.stylize", "stylize_cmd"),
    "translate": ("productgen.cli.translate", "translate_cmd"),
}


def load_command(name: str) -> Any:
    """The click command (or group) behind ``productgen <name>``, importing its module now."""
    module, attr = COMMANDS[name]
    obj = getattr(importlib.import_module(module), attr)
    if isinstance(obj, typer.Typer):
        group = typer.main.get_group(obj)
        group.name = name
        return group
    single = typer.Typer()
    single.command(name)(obj)
    return typer.main.get_command(single)


class _LazyGroup(TyperGroup):
    """The root group: lists every command from ``COMMANDS`` and imports one only when it is asked for."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            self.add_command(load_command(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    name="productgen",
    cls=_LazyGroup,
    help="Train, evaluate, version and ship models for e-commerce product images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """productgen: product-image generation, style transfer and enhancement, as an MLOps pipeline."""
