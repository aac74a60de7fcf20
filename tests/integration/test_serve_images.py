"""Real REST serving of an image -> image model: a restorer trained and registered through the CLI, aliased
``champion``, served with ``mlflow models serve --env-manager local`` on loopback and sent real images. Bad input
(not base64, not an image, too large, too many rows, a missing column) must come back as HTTP 400 naming the
problem. The conditional VAE, logged with the generator pyfunc, generates per category from the registry too."""

from __future__ import annotations

import base64
import io
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.integration.test_serve import decode, invoke, serving


def _png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _register(params: Path, task: str, root: Path) -> str:
    import mlflow
    from mlflow import MlflowClient

    name = f"productgen-{task}-serve-{uuid.uuid4().hex[:8]}"
    p = run_cli(
        "train", task, "--params", str(params), "--max-steps", "2", "--out", str(root / task), "-q", "--register", name
    )
    assert p.returncode == 0, p.stderr
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    (version,) = client.search_model_versions(f"name='{name}'")
    client.set_registered_model_alias(name, "champion", version.version)
    return name


def test_served_restorer_answers_with_images(params: Path, tmp_path: Path) -> None:
    name = _register(params, "restore", tmp_path)
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    wide = rng.integers(0, 256, (20, 36, 3), dtype=np.uint8)  # colour and odd sizes are fine: padded, converted
    with serving(f"models:/{name}@champion", tmp_path / "srv") as base:
        status, body = invoke(base, {"dataframe_records": [{"image": _png(gray)}, {"image": _png(wide)}]})
        assert status == 200, body
        images = decode(body["predictions"])
        assert [im.size for im in images] == [(28, 28), (36, 20)]
        assert [(p["width"], p["height"]) for p in body["predictions"]] == [(28, 28), (36, 20)]

        bad = {
            "not base64": ({"image": "***"}, "not valid base64"),
            "not an image": ({"image": base64.b64encode(b"hello").decode()}, "row 0: image"),
            "too large": ({"image": _png(np.zeros((1100, 20), np.uint8))}, "1024 px limit"),
        }
        for what, (row, message) in bad.items():
            status, err = invoke(base, {"dataframe_records": [row]})
            assert status == 400, (what, err)
            assert message in err["message"], (what, err)
        status, err = invoke(base, {"dataframe_records": [{"image": _png(gray)}] * 33})
        assert status == 400 and "too many images" in err["message"]
        status, err = invoke(base, {"dataframe_records": [{"picture": _png(gray)}]})
        assert status == 400


def test_registered_vae_generates_per_category(params: Path, tmp_path: Path) -> None:
    import mlflow
    import pandas as pd

    name = _register(params, "vae", tmp_path)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    out = model.predict(pd.DataFrame({"category": ["bags"], "count": [3], "seed": [5]}))
    assert out["category"].tolist() == ["bags"] * 3
    assert {Image.open(io.BytesIO(base64.b64decode(s))).size for s in out["image"]} == {(28, 28)}
    with pytest.raises(Exception, match="unknown category"):
        model.predict(pd.DataFrame({"category": ["hats"], "count": [1], "seed": [0]}))
