"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (a wrong path, a missing column, a bad value in
``params.yaml``). The CLI prints its message as one line and exits with status 2 instead of showing a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or setup, stated in one line with what to do about it."""

    exit_code: int = 2


class ValidationFailed(UserError):
    """The dataset was checked and failed a threshold; the report says which files and why."""

    exit_code = 1
