"""Models logged to MLflow before the lifecycle layout (issue 19) keep loading. A model logged from code carries
a frozen copy of the pyfunc file of the commit that logged it; those of commit 0bd1032 (the last before the
move, kept in ``fixtures/pre_layout``) import ``productgen.models.io.load_generator``,
``productgen.models.predict.load_predictor``, ``productgen.apply.run_batch`` / ``read_image_bytes``,
``productgen.generate``, ``productgen.viz`` and ``productgen.errors``. A tiny GAN and a tiny restorer are
trained, logged with the old files into a real MLflow SQLite store in the test's folder (the way
``productgen.tracking.runs`` logs them), loaded back with today's package and asked for images."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import run_cli

PRE_LAYOUT = Path(__file__).parent / "fixtures" / "pre_layout"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[str]:
    """An MLflow SQLite store and artifact folder in ``tmp_path``; the session's store is restored afterwards."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        exp = mlflow.create_experiment("pre-layout", artifact_location=(tmp_path / "artifacts").as_uri())
        yield exp
    finally:
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])


def _train(params: Path, task: str, root: Path) -> Path:
    p = run_cli(
        "train", task, "--params", str(params), "--max-steps", "2", "--out", str(root / task), "-q", "--no-track"
    )
    assert p.returncode == 0, p.stderr
    model_dir = root / task / "model"
    assert (model_dir / "config.json").is_file()
    return model_dir


def _png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _decode(value: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(value)))
    im.load()
    return im


def _log(experiment: str, code: Path, model_dir: Path, signature: object, example: pd.DataFrame) -> str:
    """``mlflow.pyfunc.log_model`` from code as ``productgen.tracking`` did at 0bd1032; the model's URI."""
    import mlflow

    from productgen.tracking.runs import PIP_REQUIREMENTS

    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code),
            artifacts={"model_dir": str(model_dir)},
            signature=signature,
            input_example=example,
            pip_requirements=PIP_REQUIREMENTS,
        )
    stored = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    assert code.read_text() in {f.read_text() for f in stored.rglob("*.py")}  # the old file is what the model runs
    return str(info.model_uri)


def test_gan_logged_before_the_layout_generates(params: Path, tmp_path: Path, store: str) -> None:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    model_dir = _train(params, "gan", tmp_path)
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "category"), ColSpec("long", "count"), ColSpec("long", "seed")]),
        outputs=Schema(
            [
                ColSpec("string", "category"),
                ColSpec("long", "seed"),
                ColSpec("long", "index"),
                ColSpec("string", "image"),
            ]
        ),
    )
    example = pd.DataFrame({"category": ["bags"], "count": [2], "seed": [0]})
    uri = _log(store, PRE_LAYOUT / "gan_pyfunc.py", model_dir, signature, example)

    model = mlflow.pyfunc.load_model(uri)
    out = model.predict(pd.DataFrame({"category": ["shoes", "bags"], "count": [3, 2], "seed": [7, 8]}))
    assert out["category"].tolist() == ["shoes"] * 3 + ["bags"] * 2
    assert out["index"].tolist() == [0, 1, 2, 0, 1]
    images = [_decode(s) for s in out["image"]]
    assert {(im.size, im.mode) for im in images} == {((28, 28), "L")}
    again = model.predict(pd.DataFrame({"category": ["shoes"], "count": [3], "seed": [7]}))
    assert again["image"].tolist() == out["image"].tolist()[:3]  # the seed alone decides the images
    with pytest.raises(Exception, match="unknown category"):  # productgen.errors.UserError, caught by the old file
        model.predict(pd.DataFrame({"category": ["hats"], "count": [1], "seed": [0]}))


def test_restorer_logged_before_the_layout_restores(params: Path, tmp_path: Path, store: str) -> None:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    model_dir = _train(params, "restore", tmp_path)
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema([ColSpec("string", "image"), ColSpec("long", "width"), ColSpec("long", "height")]),
    )
    example = pd.DataFrame({"image": [_png(np.full((32, 32, 3), 255, dtype=np.uint8))]})
    uri = _log(store, PRE_LAYOUT / "image_pyfunc.py", model_dir, signature, example)

    model = mlflow.pyfunc.load_model(uri)
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    wide = rng.integers(0, 256, (20, 36, 3), dtype=np.uint8)
    out = model.predict(pd.DataFrame({"image": [_png(gray), _png(wide)]}))
    assert len(out) == 2
    assert [_decode(s).size for s in out["image"]] == [(28, 28), (36, 20)]
    assert [(w, h) for w, h in zip(out["width"], out["height"])] == [(28, 28), (36, 20)]
    with pytest.raises(Exception, match="not valid base64"):
        model.predict(pd.DataFrame({"image": ["***"]}))
