"""The FastAPI application: one router per page (:mod:`productgen.web.pages`) over the shared state and helpers of
:mod:`productgen.web.shared`; the pages are thin shells over :mod:`productgen.web.work` (what each page computes),
:mod:`productgen.web.champions` (which models), :mod:`productgen.registry.promotion` (promote / rollback) and the
safety pieces (:mod:`productgen.web.auth`, :mod:`productgen.web.forms`).

Pages are rendered on the server (Jinja2, autoescaped); the CSS ships in the package and the page needs no
JavaScript, so nothing is fetched at run time and there is no build step. Every failure is a page: a user
mistake is a message naming the file or field (status 400/413), a busy server is 503 with ``Retry-After``, and
a bug is a page with an error id (the traceback goes to the server log, never to the browser).
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from productgen.common.errors import UserError
from productgen.config import Params
from productgen.web import auth
from productgen.web.champions import Champions
from productgen.web.forms import Busy, Gate, TooLarge
from productgen.web.pages import account, enhance, generate, models, restyle, results, sketch
from productgen.web.results import Results
from productgen.web.shared import HERE, CsrfFailed, Forbidden, State, gate_settings, state_of

log = logging.getLogger("productgen.web")
ROUTERS = (results, generate, enhance, restyle, sketch, models, account)
_gate_settings = gate_settings  # the name the tests' fixtures promote with

__all__ = ["create_app", "CsrfFailed", "State", "_gate_settings"]


def create_app(
    params: Params, users_file: Path | None = None, cache_dir: Path | None = None, warm: bool = True
) -> FastAPI:
    """The page over the registry's champions (``$MLFLOW_TRACKING_URI`` or the embedded ``./mlflow.db``).

    ``cache_dir`` holds the downloaded champion weights (default: a temporary folder removed at shutdown);
    ``warm`` keeps every champion loaded from a background thread (re-reading the aliases every
    ``web.alias_check_seconds``); without it, champions load on first use.
    """
    web = params.web
    owned_tmp = tempfile.TemporaryDirectory(prefix="productgen-web-")
    tmp_root = Path(owned_tmp.name)
    state = State(
        params=params,
        users_file=Path(users_file or web.users_file),
        champions=Champions(cache_dir or tmp_root / "models", web.alias_check_seconds),
        sessions=auth.Sessions(web.session_hours * 3600),
        results=Results(web.result_bytes),
        gate=Gate(web.workers, web.max_pending),
        templates=Jinja2Templates(directory=str(HERE / "templates")),
        tmp_root=tmp_root,
        limiter=auth.SignInLimiter(
            web.signin_window_seconds,
            web.signin_max_failures,
            web.signin_base_delay_seconds,
            web.signin_max_delay_seconds,
        ),
    )
    (tmp_root / "uploads").mkdir()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        import torch

        # web.workers requests compute side by side; each gets its share of the cores (small convolutions on an
        # oversubscribed CPU run several times slower with more threads than cores)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // web.workers))
        if warm:
            threading.Thread(
                target=state.champions.keep_warm, args=(stop,), name="productgen-web-warm", daemon=True
            ).start()
        yield
        stop.set()
        state.gate.shutdown()
        owned_tmp.cleanup()

    app = FastAPI(title="productgen", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.productgen = state
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    install_error_pages(app)
    for page in ROUTERS:
        app.include_router(page.router)
    return app


def install_error_pages(app: FastAPI) -> None:
    """Every failure is a page: 400/413 for the user's mistakes, 403 CSRF, 503 busy, 404/405, 500 with an error id."""

    @app.exception_handler(UserError)
    async def _user_error(request: Request, err: UserError) -> Response:
        status = 413 if isinstance(err, TooLarge) else 403 if isinstance(err, Forbidden) else 400
        title = "Not allowed" if isinstance(err, Forbidden) else "That did not work"
        return state_of(request).error_page(request, status, str(err), title)

    @app.exception_handler(CsrfFailed)
    async def _csrf(request: Request, err: Exception) -> Response:
        return state_of(request).error_page(
            request,
            403,
            "The form was not sent from this page, or it expired (missing or wrong CSRF "
            "token). Reload the page and try again.",
            "Refused",
        )

    @app.exception_handler(Busy)
    async def _busy(request: Request, err: Exception) -> Response:
        state = state_of(request)
        return state.error_page(
            request,
            503,
            f"The server is busy with {state.gate.max_pending} requests; try again in {state.web.retry_after} s.",
            "Busy",
            {"Retry-After": str(state.web.retry_after)},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> Response:
        message = {404: "No such page.", 405: "This page does not take that kind of request."}.get(
            err.status_code, str(err.detail)
        )
        return state_of(request).error_page(request, err.status_code, message, "Not here")

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception) -> Response:
        eid = secrets.token_hex(4)
        log.exception("error %s on %s %s", eid, request.method, request.url.path)
        return state_of(request).error_page(
            request,
            500,
            f"Something went wrong on the server (error id {eid}, in its log). "
            "Try again; if it persists, tell the team the error id.",
            "Server error",
        )
