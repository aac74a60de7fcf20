"""Reading POSTed forms with limits, and the concurrency gate.

Uploads are streamed into a temporary folder made for the request (removed when it ends), each file capped at
``web.max_file_bytes`` while it arrives (the rest of an oversize file is counted, not kept, so the page can name
it), the whole body capped at ``web.max_request_bytes`` (a ``Content-Length`` over it is refused before
reading), the number of files at ``web.max_files``. Nothing is trusted from the file name or its content type:
the pages decode the bytes.

The gate: at most ``web.workers`` model requests compute at once, at most ``web.max_pending`` are admitted
(computing or waiting); the next one is answered 503 with ``Retry-After`` at once instead of queueing without
end, so a burst cannot pile up memory and latency for everyone.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from productgen.common.errors import UserError

T = TypeVar("T")
MAX_FIELDS = 64
MAX_FIELD_BYTES = 64 * 1024


class TooLarge(UserError):
    """The request body is over ``web.max_request_bytes`` (HTTP 413)."""


class Busy(Exception):
    """Every admission slot is taken (HTTP 503 with Retry-After)."""


@dataclass
class UploadedFile:
    field: str
    name: str  # as the browser sent it (a folder upload includes relative folders)
    path: Path | None  # None when nothing was kept (over the per-file limit)
    size: int
    too_big: bool = False

    def read(self) -> bytes:
        return self.path.read_bytes() if self.path is not None else b""


@dataclass
class Form:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else default

    def files_of(self, name: str) -> list[UploadedFile]:
        return [f for f in self.files if f.field == name and (f.name or f.size)]


def mib(n: int) -> str:
    return f"{n / (1024 * 1024):.3g} MiB" if n >= 1024 * 1024 else f"{n / 1024:.3g} KiB"


async def read_form(request: Any, tmpdir: Path, max_file_bytes: int, max_request_bytes: int, max_files: int) -> Form:
    """Parse an urlencoded or multipart body under the limits; files go to ``tmpdir``."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_request_bytes:
        raise TooLarge(
            f"the upload is {mib(int(length))}, over the {mib(max_request_bytes)} limit per request "
            "(web.max_request_bytes); send fewer or smaller files"
        )
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    form = Form()
    total = 0

    async def chunks() -> Any:
        nonlocal total
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_request_bytes:
                raise TooLarge(
                    f"the upload is over the {mib(max_request_bytes)} limit per request "
                    "(web.max_request_bytes); send fewer or smaller files"
                )
            yield chunk

    if ctype == b"application/x-www-form-urlencoded":
        body = b"".join([c async for c in chunks()])
        for k, v in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=MAX_FIELDS):
            form.fields.setdefault(k, []).append(v)
        return form
    if ctype != b"multipart/form-data" or b"boundary" not in options:
        raise UserError("the form was not sent as multipart/form-data or urlencoded; submit it from the page")

    state: dict[str, Any] = {}

    def on_part_begin() -> None:
        state.update(headers={}, hname=b"", hvalue=b"", fh=None, buf=bytearray(), size=0, file=None)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hvalue"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["hname"].lower()] = state["hvalue"]
        state["hname"], state["hvalue"] = b"", b""

    def on_headers_finished() -> None:
        disp, params = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        state["field"] = name
        if b"filename" in params:
            if len(form.files) >= max_files:
                raise UserError(f"more than {max_files} files in one request (web.max_files); send fewer at a time")
            fname = params[b"filename"].decode("utf-8", "replace")
            path = tmpdir / f"upload-{len(form.files):04d}"
            up = UploadedFile(name, fname, path, 0)
            form.files.append(up)
            state["file"] = up
            state["fh"] = open(path, "wb")  # noqa: SIM115 (closed in on_part_end)
        elif sum(len(v) for v in form.fields.values()) >= MAX_FIELDS:
            raise UserError(f"more than {MAX_FIELDS} form fields; submit the form from the page")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        n = end - start
        up: UploadedFile | None = state["file"]
        if up is None:
            if len(state["buf"]) + n > MAX_FIELD_BYTES:
                raise UserError(f"form field {state['field']!r} is over {MAX_FIELD_BYTES // 1024} KiB")
            state["buf"] += data[start:end]
            return
        up.size += n
        if up.too_big:
            return
        if up.size > max_file_bytes:
            up.too_big = True
            state["fh"].close()
            state["fh"] = None
            up.path.unlink(missing_ok=True)
            up.path = None
            return
        state["fh"].write(data[start:end])

    def on_part_end() -> None:
        if state.get("fh") is not None:
            state["fh"].close()
            state["fh"] = None
        if state.get("file") is None and "field" in state:
            form.fields.setdefault(state["field"], []).append(bytes(state["buf"]).decode("utf-8", "replace"))

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    parser = MultipartParser(options[b"boundary"], callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in chunks():
            parser.write(chunk)
        parser.finalize()
    except (UserError, TooLarge):
        raise
    except Exception as err:  # a malformed body from a hand-made request: say so, never a traceback
        raise UserError(f"the upload could not be read ({type(err).__name__}); submit the form from the page") from None
    finally:
        if state.get("fh") is not None:
            state["fh"].close()
    return form


class Gate:
    """Bounded admission + a fixed pool of compute threads (torch releases the GIL while it computes)."""

    def __init__(self, workers: int, max_pending: int) -> None:
        self.max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="productgen-web")

    @property
    def pending(self) -> int:
        return self._pending

    def enter(self) -> None:
        with self._lock:
            if self._pending >= self.max_pending:
                raise Busy()
            self._pending += 1

    def leave(self) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
