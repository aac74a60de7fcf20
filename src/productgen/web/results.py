"""Results the page shows and lets the user download (each image, or a zip of all), kept in memory.

Why in memory and bounded: a result is needed only for the minutes the user looks at it; nothing of an upload
or its result is written to disk by the server, and ``web.result_bytes`` caps the memory (oldest dropped first).
A result belongs to the session that made it: another browser cannot fetch it by guessing its id.
"""

from __future__ import annotations

import io
import secrets
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class Item:
    """One output image (PNG bytes) under the file name it downloads as, and optionally its input."""

    name: str
    png: bytes
    before: bytes | None = None
    width: int = 0
    height: int = 0


@dataclass
class Result:
    rid: str
    owner: str  # session id
    kind: str
    title: str
    items: list[Item]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    created: float = field(default_factory=time.time)

    @property
    def nbytes(self) -> int:
        return sum(len(i.png) + len(i.before or b"") for i in self.items)

    def zip_bytes(self) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:  # PNGs are compressed already
            for item in self.items:
                zf.writestr(item.name, item.png)
        return buf.getvalue()


class Results:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Result] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(
        self, owner: str, kind: str, title: str, items: list[Item], failed: list[tuple[str, str]] | None = None
    ) -> Result:
        r = Result(secrets.token_urlsafe(16), owner, kind, title, items, failed or [])
        with self._lock:
            self._items[r.rid] = r
            self._bytes += r.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        return r

    def get(self, rid: str, owner: str) -> Result | None:
        with self._lock:
            r = self._items.get(rid)
        return r if r is not None and secrets.compare_digest(r.owner, owner) else None
