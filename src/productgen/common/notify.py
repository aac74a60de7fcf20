"""Webhook notifications of the retrain loop: a JSON POST, never fatal. Events: ``promoted``, ``retrain-failed``,
and ``approval-requested`` (a challenger waits for a person, with ``url``: the web page's Models page,
:func:`models_page`, and ``cli``: the command that answers).

Why a plain webhook: every chat and incident tool (Slack, Teams, Mattermost, PagerDuty, a shop's own endpoint)
accepts one, and it works the same with Prefect's ephemeral mode and a Prefect server. ``PRODUCTGEN_NOTIFY_URL``
wins over ``retrain.notify_url`` so an operator can point a checkout's runs elsewhere without editing params.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

ENV = "PRODUCTGEN_NOTIFY_URL"


def notify_url(configured: str | None) -> str | None:
    return os.environ.get(ENV) or configured


def models_page(review_url: str) -> str:
    """The web page's Models page, where a waiting challenger is approved or rejected (``registry.review_url``)."""
    return review_url.rstrip("/") + "/models"


def post(url: str | None, event: str, payload: dict[str, Any], timeout: float = 10.0) -> bool:
    """POST ``{"event": event, **payload}`` to ``url``; a failure is one line on stderr, never an exception."""
    if not url:
        return False
    if not url.startswith(("http://", "https://")):
        print(f"warning: notify_url {url!r} is not an http(s) URL; notification not sent", file=sys.stderr)
        return False
    body = json.dumps({"event": event, **payload}, default=str).encode()
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "productgen"}
    )
    try:
        # A fresh opener: the proxy settings of now (urlopen's global one keeps those of its first call).
        with urllib.request.build_opener().open(req, timeout=timeout) as resp:  # noqa: S310 (scheme checked above)
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError) as err:
        print(f"warning: notification to {url} failed ({err}); the run itself is unaffected", file=sys.stderr)
        return False
