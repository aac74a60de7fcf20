"""Image -> image models (restoration, translation, style transfer) as an MLflow pyfunc, logged from code (this
file), so no pickled Python object is stored; the weights travel as the ``model_dir`` artifact.

Input: a table with one row per image, column ``image`` (base64-encoded PNG, JPEG or WebP) and, for arbitrary
style transfer, ``style`` (base64 style image; one per row, or only in the first row to use it for all).
Output: one row per input image, column ``image`` (base64 PNG) plus ``width`` and ``height``.
Limits: at most MAX_ROWS images per request, each at most MAX_SIDE px on its longer side and MAX_BYTES bytes;
anything else is ``MlflowException(INVALID_PARAMETER_VALUE)`` before any work, so ``mlflow models serve``
answers 400 with the reason.
"""

import base64
import binascii
import io
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

MAX_ROWS = 32
MAX_SIDE = 1024
MAX_BYTES = 8 * 1024 * 1024
MAX_MESSAGE = 300  # characters of an error message: never echo a request's megabytes back
STYLE_COLUMN = "style"  # the style image's column, for models that take the user's style (TaskSpec.style_input)


class ImageModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from pathlib import Path

        from productgen.models.predict import load_predictor
        from productgen.tasks import for_model

        self.predictor = load_predictor(Path(context.artifacts["model_dir"]), "cpu")
        spec = for_model(str(self.predictor.config.get("model")))
        self.needs_style = spec is not None and spec.style_input

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import torch

        from productgen.apply.folders import run_batch

        frame = pd.DataFrame(model_input)
        images, styles = self._validate(frame)
        rows = []
        with torch.inference_mode():
            for i, arr in enumerate(images):
                options: dict[str, Any] = {}
                if self.needs_style:
                    style = styles[i] if styles[i] is not None else styles[0]
                    options["style"] = torch.from_numpy(style).permute(2, 0, 1)[None].contiguous()
                (out,) = run_batch(self.predictor, [arr], "cpu", **options)
                buf = io.BytesIO()
                from PIL import Image

                Image.fromarray(out[..., 0] if out.shape[-1] == 1 else out).save(buf, format="PNG")
                rows.append(
                    {
                        "image": base64.b64encode(buf.getvalue()).decode("ascii"),
                        "width": int(out.shape[1]),
                        "height": int(out.shape[0]),
                    }
                )
        return pd.DataFrame(rows, columns=["image", "width", "height"])

    def _decode(self, value: Any, what: str, channels: int) -> np.ndarray:
        from productgen.apply.folders import read_image_bytes

        if not isinstance(value, str) or not value:
            raise _invalid(f"{what}: expected a base64-encoded image string")
        if len(value) > MAX_BYTES * 4 // 3 + 4:
            raise _invalid(f"{what}: image larger than {MAX_BYTES // (1024 * 1024)} MiB")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _invalid(f"{what}: not valid base64") from None
        try:
            arr = read_image_bytes(data, channels)
        except ValueError as err:
            raise _invalid(f"{what}: {err}") from None
        if max(arr.shape[:2]) > MAX_SIDE:
            raise _invalid(f"{what}: {arr.shape[1]}x{arr.shape[0]} px is over the {MAX_SIDE} px limit; resize it first")
        return arr

    def _validate(self, frame: pd.DataFrame) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        if "image" not in frame.columns:
            raise _invalid("input needs a column 'image' (base64-encoded PNG/JPEG/WebP), one row per image")
        if len(frame) == 0:
            raise _invalid("input has no rows: send one row per image")
        if len(frame) > MAX_ROWS:
            raise _invalid(f"too many images: {len(frame)} (at most {MAX_ROWS} per request)")
        channels = int(self.predictor.channels)
        images = [self._decode(v, f"row {i}: image", channels) for i, v in enumerate(frame["image"])]
        styles: list[np.ndarray | None] = [None] * len(images)
        if self.needs_style:
            if STYLE_COLUMN not in frame.columns or not isinstance(frame[STYLE_COLUMN].iloc[0], str):
                raise _invalid("this style-transfer model needs a column 'style' (base64 style image) in the first row")
            for i, v in enumerate(frame[STYLE_COLUMN]):
                if isinstance(v, str) and v:
                    styles[i] = self._decode(v, f"row {i}: style", 3)
        return images, styles


def _invalid(message: str) -> MlflowException:
    """HTTP 400 with ``message`` cut to :data:`MAX_MESSAGE` characters."""
    if len(message) > MAX_MESSAGE:
        message = f"{message[: MAX_MESSAGE - 40]}... ({len(message) - MAX_MESSAGE + 40:,} more characters)"
    return MlflowException(message, INVALID_PARAMETER_VALUE)


mlflow.models.set_model(ImageModel())
