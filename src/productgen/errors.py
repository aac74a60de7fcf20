"""Kept for models already logged to MLflow, whose pyfunc code imports ``productgen.errors.UserError``."""

from productgen.common.errors import UserError, ValidationFailed

__all__ = ["UserError", "ValidationFailed"]
