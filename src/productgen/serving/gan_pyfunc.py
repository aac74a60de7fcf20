"""The GAN as an MLflow pyfunc model, logged from code (this file), so no pickled Python object is stored.

Input: a table with one row per request, columns ``category`` (name), ``count`` and ``seed``.
Output: one row per image, columns ``category``, ``seed``, ``index`` and ``image`` (base64-encoded PNG).
The weights travel as the ``model_dir`` artifact (safetensors + config.json).
"""

import base64
import io
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

MAX_COUNT = 64  # images per row
MAX_TOTAL = 256  # images per request


class ProductGenerator(PythonModel):
    def load_context(self, context: Any) -> None:
        from pathlib import Path

        from productgen.models.io import load_generator

        self.net, self.cfg = load_generator(Path(context.artifacts["model_dir"]), "cpu")
        self.classes = list(self.cfg["classes"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import torch
        from PIL import Image

        from productgen.errors import UserError
        from productgen.generate import resolve_categories, sample
        from productgen.viz import to_nhwc

        frame = pd.DataFrame(model_input)
        missing = {"category", "count", "seed"} - set(frame.columns)
        if missing:
            raise MlflowException(f"input needs columns category, count, seed (missing {sorted(missing)})",
                                  INVALID_PARAMETER_VALUE)  # fmt: skip
        if int(frame["count"].clip(lower=0).sum()) > MAX_TOTAL or (frame["count"] > MAX_COUNT).any() or (frame["count"] < 1).any():
            raise MlflowException(f"count must be 1..{MAX_COUNT} per row and at most {MAX_TOTAL} in all",
                                  INVALID_PARAMETER_VALUE)  # fmt: skip
        rows = []
        for rec in frame.to_dict(orient="records"):
            try:
                (label,) = resolve_categories([str(rec["category"])], self.classes)
            except UserError as err:
                raise MlflowException(str(err), INVALID_PARAMETER_VALUE) from None
            labels = torch.full((int(rec["count"]),), label, dtype=torch.long)
            images = to_nhwc(sample(self.net, self.cfg["gan"]["z_dim"], labels, int(rec["seed"])))
            for i, img in enumerate(images):
                buf = io.BytesIO()
                Image.fromarray(img[..., 0] if self.cfg["channels"] == 1 else img).save(buf, format="PNG")
                rows.append({"category": self.classes[label], "seed": int(rec["seed"]), "index": i,
                             "image": base64.b64encode(buf.getvalue()).decode("ascii")})  # fmt: skip
        return pd.DataFrame(rows, columns=["category", "seed", "index", "image"])


mlflow.models.set_model(ProductGenerator())
