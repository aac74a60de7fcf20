"""What every page shares: the application's state (champions, settings, templates, sessions, the gate) and the
helpers the page routers are written with (rendering with the security headers, the CSRF-checked form, admission
of model work, the champions a page offers, reading upload and number fields).

Each page router (:mod:`productgen.web.pages`) reaches the state through :func:`state_of`; nothing here knows a
page's task by name: a page asks :func:`productgen.tasks.on_page` which tasks it offers.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from productgen.common.errors import UserError
from productgen.config import Params
from productgen.web import auth, work
from productgen.web.champions import Champion, Champions, no_champion_message
from productgen.web.forms import Form, Gate, mib, read_form
from productgen.web.results import Results

if TYPE_CHECKING:
    from productgen.tasks import TaskSpec

HERE = Path(__file__).parent
COOKIE = "productgen_session"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
PAGES = [
    ("generate", "Generate"),
    ("enhance", "Enhance"),
    ("restyle", "Restyle"),
    ("sketch", "Translate"),
    ("models", "Models"),
]
_CREDENTIALS_LOCK = threading.Lock()


class CsrfFailed(Exception):
    """A POST without this session's CSRF token (HTTP 403)."""


class Forbidden(UserError):
    """A signed-in user who may not do this (HTTP 403); nothing was changed."""


@dataclass
class State:
    """The application's state, one per :func:`productgen.web.app.create_app`; shared by every page router."""

    params: Params
    users_file: Path
    champions: Champions
    sessions: auth.Sessions
    results: Results
    gate: Gate
    templates: Jinja2Templates
    tmp_root: Path
    limiter: auth.SignInLimiter
    reviews: dict[tuple[str, str, str], Any] = field(default_factory=dict)  # (name, champion, challenger) -> images
    samples: dict[tuple[str, str], bytes | None] = field(default_factory=dict)
    thumbs: dict[str, bytes] = field(default_factory=dict)

    @property
    def web(self) -> Any:
        return self.params.web

    # -- sessions and rendering -------------------------------------------------------------------------------
    def session_of(self, request: Request) -> tuple[auth.Session, bool]:
        s = self.sessions.get(request.cookies.get(COOKIE))
        return (s, False) if s is not None else (self.sessions.new(), True)

    def set_cookie(self, response: Response, request: Request, s: auth.Session) -> None:
        secure = request.url.scheme == "https"
        response.set_cookie(
            COOKIE,
            s.sid,
            max_age=int(self.web.session_hours * 3600),
            httponly=True,
            samesite="lax",
            secure=secure,
            path="/",
        )

    def render(
        self, request: Request, template: str, status: int = 200, session: auth.Session | None = None, **ctx: Any
    ) -> HTMLResponse:
        s, new = (session, True) if session is not None else self.session_of(request)
        flash, s.flash = s.flash, None
        context = {"pages": PAGES, "user": s.user, "csrf": s.csrf, "flash": flash, "web": self.web, "mib": mib, **ctx}
        response = self.templates.TemplateResponse(request, template, context, status_code=status)
        for k, v in SECURITY_HEADERS.items():
            response.headers[k] = v
        if new:
            self.set_cookie(response, request, s)
        return response

    def error_page(
        self,
        request: Request,
        status: int,
        message: str,
        title: str = "Something is wrong",
        headers: dict[str, str] | None = None,
    ) -> HTMLResponse:
        response = self.render(request, "error.html", status=status, title=title, message=message)
        for k, v in (headers or {}).items():
            response.headers[k] = v
        return response

    # -- forms ------------------------------------------------------------------------------------------------
    async def posted(self, request: Request, tmpdir: Path) -> tuple[Form, auth.Session]:
        """The POSTed form, after the CSRF check (every POST, uploads included)."""
        web = self.web
        form = await read_form(request, tmpdir, web.max_file_bytes, web.max_request_bytes, web.max_files)
        s = self.sessions.get(request.cookies.get(COOKIE))
        if not auth.csrf_ok(s, form.get("csrf_token")):
            raise CsrfFailed()
        assert s is not None
        return form, s

    async def posted_small(self, request: Request) -> tuple[Form, auth.Session]:
        """A POSTed form without model work (sign-in, registry changes): read in a request folder, CSRF-checked."""
        with tempfile.TemporaryDirectory(prefix="req-", dir=self.tmp_root / "uploads") as tmp:
            return await self.posted(request, Path(tmp))

    async def model_work(
        self, request: Request, page: Callable[[Form, auth.Session, Path], Awaitable[Response]]
    ) -> Response:
        """Admit (or 503), read the form into a temporary folder for this request, run ``page``, clean up."""
        self.gate.enter()
        try:
            with tempfile.TemporaryDirectory(prefix="req-", dir=self.tmp_root / "uploads") as tmp:
                form, s = await self.posted(request, Path(tmp))
                return await page(form, s, Path(tmp))
        finally:
            self.gate.leave()

    def uploads_of(self, form: Form, field_name: str, what: str) -> tuple[list[work.Upload], list[tuple[str, str]]]:
        files = form.files_of(field_name)
        if not files:
            raise UserError(f"{what}: choose at least one image file to upload")
        good, bad = [], []
        for i, f in enumerate(files):
            name = work.safe_name(f.name, i)
            if f.too_big:
                bad.append(
                    (
                        name,
                        f"{mib(f.size)} is over the {mib(self.web.max_file_bytes)} limit per file "
                        "(web.max_file_bytes); send a smaller file",
                    )
                )
            elif f.size == 0:
                bad.append((name, "empty file (0 bytes)"))
            else:
                good.append(work.Upload(name, f.read()))
        return good, bad

    # -- champions --------------------------------------------------------------------------------------------
    def champions_on(self, page: str) -> list[Champion]:
        """The loaded champions of every task the page offers (:func:`productgen.tasks.on_page`)."""
        out = []
        for name in self.champions.names(page=page):
            c = self.champions.get(name)
            if c is not None:
                out.append(c)
        return out

    # -- registry changes -------------------------------------------------------------------------------------
    def registry_change(self, s: auth.Session, fn: Callable[[], Any]) -> Any:
        """Run a registry change as the signed-in user: with mlflow auth, under their own credentials."""
        if self.web.auth != "mlflow" or s.credentials is None:
            return fn()
        with _CREDENTIALS_LOCK:
            old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
            os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = s.credentials
            try:
                return fn()
            finally:
                for k, v in old.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


def state_of(request: Request) -> State:
    state: State = request.app.state.productgen
    return state


def int_field(form: Form, name: str, default: int, low: int, high: int) -> int:
    raw = (form.get(name) or "").strip() or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"{name}: {raw[:40]!r} is not a whole number") from None
    if not low <= value <= high:
        raise UserError(f"{name}: {value} is outside {low}..{high}")
    return value


def pick(champs: list[Champion], name: str | None, task: str) -> Champion:
    if not champs:
        raise UserError(no_champion_message(task))
    if name:
        for c in champs:
            if c.name == name:
                return c
        raise UserError(f"model: {name!r} has no champion now (it may have just been rolled back); reload the page")
    return champs[0]


def suggested_task(page: str, prefer: Callable[[TaskSpec], bool] | None = None) -> str:
    """The task a page without a champion suggests training: of the tasks it offers, the first that ``prefer``
    picks (default: the retrain flow's default task), else the first it offers."""
    from productgen import tasks

    offered = tasks.on_page(page)
    chosen = next((t for t in offered if (prefer or (lambda t: t.default))(t)), offered[0] if offered else None)
    return (chosen or tasks.default()).name


def gate_settings(promote: Callable[..., Any], params: Params) -> dict[str, Any]:
    """The ``registry:`` settings for the gate, for a ``registry.promote`` that takes them (``cfg``)."""
    return {"cfg": params.registry} if "cfg" in inspect.signature(promote).parameters else {}


def header_safe(name: str) -> str:
    return "".join(ch for ch in name if ch.isprintable() and ch not in '"\\')[:150] or "image.png"
