"""Applying trained models: folders of any size (tiled), generation, enhancement choices, and what served models use.

``run_batch`` and ``read_image_bytes`` stay importable from ``productgen.apply`` because image models already
logged to MLflow import them from here (their pyfunc code is frozen in the model artifact). They are resolved on
first use, so importing a light module of this package (``productgen.apply.enhance``) does not import PyTorch.
"""

from typing import Any

__all__ = ["read_image_bytes", "run_batch"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from productgen.apply import folders

        return getattr(folders, name)
    raise AttributeError(f"module 'productgen.apply' has no attribute {name!r}")
