"""Kept for models already logged to MLflow, whose pyfunc code imports ``productgen.viz.to_nhwc``."""

from productgen.common.grids import to_nhwc

__all__ = ["to_nhwc"]
