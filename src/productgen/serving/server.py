"""MLflow's scoring server behind a guard: ``python -m productgen.serving MODEL_URI`` serves a productgen model
like ``mlflow models serve --env-manager local`` (same routes, same request and response formats), with three
limits the bare scoring server lacks:

- a request body over ``max_body`` bytes is 413 before it is parsed (the scoring server reads any size);
- JSON nested deeper than ``max_depth`` is 400: the scoring server's ``json.loads`` raises ``RecursionError``
  on deep nesting, which it does not catch (a 500 with a traceback in its log); the depth is counted here
  without recursion, before MLflow parses anything;
- an error response's ``message`` is cut to ``max_message`` characters: the scoring server echoes the whole
  request back in some errors (``Input: ...`` of a body that is not JSON), so a 50 MB bad request would get a
  50 MB answer.

The pyfunc models themselves (gan_pyfunc.py, image_pyfunc.py) also cut their own messages, so plain
``mlflow models serve`` keeps those short too; the depth and size limits need this server.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY = 16 * 1024 * 1024  # bytes of one request
MAX_DEPTH = 32  # nesting of JSON arrays / objects (a dataframe_split request needs 3)
MAX_MESSAGE = 300  # characters of an error message


def json_depth(data: bytes, limit: int) -> int:
    """Deepest nesting of arrays/objects in ``data`` (brackets inside strings do not count), counting stops
    once past ``limit``. Linear, no recursion: safe on any input, valid JSON or not."""
    depth = worst = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > worst:
                worst = depth
                if worst > limit:
                    return worst
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return worst


def shorten(text: str, limit: int = MAX_MESSAGE) -> str:
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}... ({len(text) - limit + 40:,} more characters)"


def _error_body(status: int, message: str) -> bytes:
    code = {400: "BAD_REQUEST", 413: "REQUEST_TOO_LARGE"}.get(status, "INTERNAL_ERROR")
    return json.dumps({"error_code": code, "message": message}).encode()


def _shorten_error(body: bytes, limit: int) -> bytes:
    """An error body with its message (and any stack trace) cut to ``limit`` characters."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return body if len(body) <= limit else shorten(body.decode("utf-8", "replace"), limit).encode()
    if not isinstance(obj, dict):
        return body[:limit]
    for key in ("message", "stack_trace"):
        if isinstance(obj.get(key), str):
            obj[key] = shorten(obj[key], limit)
    return json.dumps(obj).encode()


class Guard:
    """ASGI middleware in front of the scoring server: body size, JSON depth, short error messages."""

    def __init__(
        self, app: ASGIApp, max_body: int = MAX_BODY, max_depth: int = MAX_DEPTH, max_message: int = MAX_MESSAGE
    ) -> None:
        self.app, self.max_body, self.max_depth, self.max_message = app, max_body, max_depth, max_message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self._answer(send, 413, f"request body over {self.max_body:,} bytes; send fewer rows per request")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
        if "json" in content_type and json_depth(body, self.max_depth) > self.max_depth:
            await self._answer(
                send,
                400,
                f"JSON nested deeper than {self.max_depth} levels; send a flat "
                "dataframe_split or dataframe_records request",
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        start: Message | None = None
        error_parts: list[bytes] = []

        async def guarded_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    await send(message)
                else:
                    start = message  # hold it: the body may need cutting, which changes its length
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            error_parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                short = _shorten_error(b"".join(error_parts), self.max_message)
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(short)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": short, "more_body": False})

        try:
            await self.app(scope, replay, guarded_send)
        except Exception as err:  # a bug below: still a short answer, never a traceback to the client
            if start is None:
                await self._answer(send, 500, shorten(f"{type(err).__name__}: {err}", self.max_message))
            else:
                raise

    @staticmethod
    async def _answer(send: Send, status: int, message: str) -> None:
        body = _error_body(status, message)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


def build_app(model_uri: str, **limits: Any) -> Guard:
    """The scoring server of ``model_uri`` (a ``models:/`` URI, ``runs:/`` URI or a local model folder), guarded."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.pyfunc import load_model, scoring_server

    return Guard(scoring_server.init(load_model(model_uri)), **limits)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m productgen.serving",
        description="Serve a productgen model over REST (MLflow's scoring protocol), "
        "with request size, JSON depth and error length limits.",
    )
    parser.add_argument("model_uri", help="models:/productgen-gan@champion, models:/NAME/VERSION or a model folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--max-body", type=int, default=MAX_BODY, help="largest request body in bytes")
    parser.add_argument("--max-depth", type=int, default=MAX_DEPTH, help="deepest JSON nesting accepted")
    args = parser.parse_args(argv)
    import uvicorn

    try:
        app = build_app(args.model_uri, max_body=args.max_body, max_depth=args.max_depth)
    except Exception as err:  # a missing model, a registry that does not answer: one line, not a traceback
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SystemExit(f"error: {args.model_uri}: cannot load the model ({shorten(first)})") from None
    uvicorn.run(app, host=args.host, port=args.port, log_level=os.environ.get("UVICORN_LOG_LEVEL", "warning"))
