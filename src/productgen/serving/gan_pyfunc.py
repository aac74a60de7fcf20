"""The GAN as an MLflow pyfunc model, logged from code (this file), so no pickled Python object is stored.

Input: a table with one row per request, columns ``category`` (name), ``count`` and ``seed``.
Output: one row per image, columns ``category``, ``seed``, ``index`` and ``image`` (base64-encoded PNG).
Bad input (unknown category, count outside 1..64, over 256 images or rows in all) raises
``MlflowException(INVALID_PARAMETER_VALUE)`` before anything is generated: ``mlflow models serve`` answers 400.
The weights travel as the ``model_dir`` artifact (safetensors + config.json).
"""

import base64
import io
import math
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

MAX_COUNT = 64  # images per row
MAX_TOTAL = 256  # images (and rows) per request
MAX_SEED = 2**63 - 1  # seeds are 0..2**63-1 (torch.Generator.manual_seed); anything else is refused, not wrapped
MAX_MESSAGE = 300  # characters of an error message: never echo a request's megabytes back
COLUMNS = ("category", "count", "seed")


class ProductGenerator(PythonModel):
    def load_context(self, context: Any) -> None:
        from pathlib import Path

        from productgen.models.io import load_generator

        self.net, self.cfg = load_generator(Path(context.artifacts["model_dir"]), "cpu")
        self.classes = list(self.cfg["classes"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import torch
        from PIL import Image

        from productgen.apply.generation import sample
        from productgen.common.grids import to_nhwc

        requests = self._validate(pd.DataFrame(model_input))  # every row is checked before any image is made
        rows = []
        for label, count, seed in requests:
            labels = torch.full((count,), label, dtype=torch.long)
            images = to_nhwc(sample(self.net, self.cfg["gan"]["z_dim"], labels, seed))
            for i, img in enumerate(images):
                buf = io.BytesIO()
                Image.fromarray(img[..., 0] if self.cfg["channels"] == 1 else img).save(buf, format="PNG")
                rows.append(
                    {
                        "category": self.classes[label],
                        "seed": seed,
                        "index": i,
                        "image": base64.b64encode(buf.getvalue()).decode("ascii"),
                    }
                )
        return pd.DataFrame(rows, columns=["category", "seed", "index", "image"])

    def _validate(self, frame: pd.DataFrame) -> list[tuple[int, int, int]]:
        """``(label, count, seed)`` per row, or MlflowException(INVALID_PARAMETER_VALUE): HTTP 400 when served."""
        from productgen.apply.generation import resolve_categories
        from productgen.common.errors import UserError

        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise _invalid(f"input needs columns category, count, seed (missing: {', '.join(missing)})")
        if len(frame) == 0:
            raise _invalid("input has no rows: send one row per request with category, count, seed")
        if len(frame) > MAX_TOTAL:
            raise _invalid(f"too many rows: {len(frame)} (at most {MAX_TOTAL} per request)")
        out, total = [], 0
        for row, (category, count, seed) in enumerate(frame[list(COLUMNS)].itertuples(index=False, name=None)):
            count, seed = _integer(count, "count", row), _integer(seed, "seed", row)
            if not 0 <= seed <= MAX_SEED:
                raise _invalid(f"row {row}: seed must be between 0 and 2**63-1, got {seed}")
            if not 1 <= count <= MAX_COUNT:
                raise _invalid(f"row {row}: count must be between 1 and {MAX_COUNT} images per row, got {count}")
            if category is None or (isinstance(category, float) and math.isnan(category)):
                raise _invalid(f"row {row}: category is missing; this model knows: {', '.join(self.classes)}")
            try:
                (label,) = resolve_categories([str(category)], self.classes)
            except UserError as err:
                raise _invalid(f"row {row}: {err}") from None
            total += count
            out.append((label, count, seed))
        if total > MAX_TOTAL:
            raise _invalid(f"too many images: {total} requested, at most {MAX_TOTAL} per request")
        return out


def _invalid(message: str) -> MlflowException:
    """HTTP 400 with ``message`` cut to :data:`MAX_MESSAGE` characters (a 50 MB category is not echoed back)."""
    return MlflowException(shorten(message), INVALID_PARAMETER_VALUE)


def shorten(text: str, limit: int = MAX_MESSAGE) -> str:
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}... ({len(text) - limit + 40:,} more characters)"


def _integer(value: Any, name: str, row: int) -> int:
    """``value`` as an int64, refusing bools, fractions, NaN and text. (Served, MLflow has already cast the
    column to the signature's long, so a JSON ``2.5`` arrives here as ``2``.)"""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise _invalid(f"row {row}: {name} must be an integer, got {shorten(repr(value), 80)}")
    if isinstance(value, (float, np.floating)) and not (math.isfinite(value) and float(value).is_integer()):
        raise _invalid(f"row {row}: {name} must be an integer, got {value!r}")
    if not -(2**63) <= int(value) < 2**63:
        raise _invalid(f"row {row}: {name} is out of the 64-bit integer range")
    return int(value)


mlflow.models.set_model(ProductGenerator())
