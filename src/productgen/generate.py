"""Kept for models already logged to MLflow, whose pyfunc code imports ``productgen.generate.sample`` and
``resolve_categories``."""

from productgen.apply.generation import resolve_categories, sample

__all__ = ["resolve_categories", "sample"]
