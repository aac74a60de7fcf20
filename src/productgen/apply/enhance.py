"""What "enhance" means to a person, in the restorer's terms: each enhancement is done by a model trained on one
degradation view (``productgen enhance --task`` and the web page's Enhance choices share this table)."""

from __future__ import annotations

ENHANCEMENTS = {"denoise": "noise<sigma>", "deblur": "blur", "jpeg": "jpeg", "sr2": "sr2", "sr4": "sr4"}


def enhancement_matches(enhancement: str, view: str) -> bool:
    """Whether a model trained on ``view`` does ``enhancement`` (denoise = any noise level)."""
    if enhancement == "denoise":
        return view.startswith("noise")
    return enhancement == view
