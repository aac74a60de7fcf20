"""The ``productgen`` command: thin Typer shells over functions in the package.

Heavy imports (torch, Great Expectations, DVC, MLflow, Prefect) happen inside each command, so that
``productgen --help`` answers at once.
"""

from __future__ import annotations

import typer

from productgen.cli.data import data_app
from productgen.cli.enhance import enhance_command
from productgen.cli.evaluate import evaluate_cmd
from productgen.cli.metrics import metrics_app
from productgen.cli.registry import registry_app
from productgen.cli.stylize import stylize_cmd
from productgen.cli.train import generate_cmd, train_app
from productgen.cli.translate import translate_cmd
from productgen.cli.tune import tune_app
from productgen.cli.web import web_app

app = typer.Typer(
    name="productgen",
    help="Train, evaluate, version and ship models for e-commerce product images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.add_typer(metrics_app, name="metrics")
app.add_typer(train_app, name="train")
app.add_typer(tune_app, name="tune")
app.add_typer(registry_app, name="registry")
app.add_typer(web_app, name="web")
app.command("generate")(generate_cmd)
app.command("evaluate")(evaluate_cmd)
app.command("enhance")(enhance_command)
app.command("stylize")(stylize_cmd)
app.command("translate")(translate_cmd)


@app.callback()
def _root() -> None:
    """productgen: product-image generation, style transfer and enhancement, as an MLOps pipeline."""
