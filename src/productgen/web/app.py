"""The FastAPI application: routes are thin shells over :mod:`productgen.web.work` (what each page computes),
:mod:`productgen.web.champions` (which models), :mod:`productgen.registry.promotion` (promote / rollback) and the safety
pieces (:mod:`productgen.web.auth`, :mod:`productgen.web.forms`).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from productgen.common.errors import UserError
from productgen.config import Params
from productgen.web import auth, work
from productgen.web.champions import Champion, Champions, no_champion_message
from productgen.web.forms import Busy, Form, Gate, TooLarge, mib, read_form
from productgen.web.results import Results

log = logging.getLogger("productgen.web")
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
    ("sketch", "Sketch to product"),
    ("models", "Models"),
]
ENHANCE_LABELS = {
    "denoise": "Denoise",
    "deblur": "Deblur",
    "jpeg": "JPEG clean-up",
    "sr2": "Upscale 2x",
    "sr4": "Upscale 4x",
}
_CREDENTIALS_LOCK = threading.Lock()


@dataclass
class State:
    params: Params
    users_file: Path
    champions: Champions
    sessions: auth.Sessions
    results: Results
    gate: Gate
    templates: Jinja2Templates
    tmp_root: Path
    samples: dict[tuple[str, str], bytes | None] = field(default_factory=dict)
    thumbs: dict[str, bytes] = field(default_factory=dict)

    @property
    def web(self) -> Any:
        return self.params.web


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
    )
    (tmp_root / "uploads").mkdir()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
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

    # -- plumbing ------------------------------------------------------------------------------------------
    def session_of(request: Request) -> tuple[auth.Session, bool]:
        s = state.sessions.get(request.cookies.get(COOKIE))
        return (s, False) if s is not None else (state.sessions.new(), True)

    def set_cookie(response: Response, request: Request, s: auth.Session) -> None:
        secure = request.url.scheme == "https"
        response.set_cookie(
            COOKIE, s.sid, max_age=int(web.session_hours * 3600), httponly=True, samesite="lax", secure=secure, path="/"
        )

    def render(
        request: Request, template: str, status: int = 200, session: auth.Session | None = None, **ctx: Any
    ) -> HTMLResponse:
        s, new = (session, True) if session is not None else session_of(request)
        flash, s.flash = s.flash, None
        context = {"pages": PAGES, "user": s.user, "csrf": s.csrf, "flash": flash, "web": web, "mib": mib, **ctx}
        response = state.templates.TemplateResponse(request, template, context, status_code=status)
        for k, v in SECURITY_HEADERS.items():
            response.headers[k] = v
        if new:
            set_cookie(response, request, s)
        return response

    def error_page(
        request: Request,
        status: int,
        message: str,
        title: str = "Something is wrong",
        headers: dict[str, str] | None = None,
    ) -> HTMLResponse:
        response = render(request, "error.html", status=status, title=title, message=message)
        for k, v in (headers or {}).items():
            response.headers[k] = v
        return response

    async def posted(request: Request, tmpdir: Path) -> tuple[Form, auth.Session]:
        """The POSTed form, after the CSRF check (every POST, uploads included)."""
        form = await read_form(request, tmpdir, web.max_file_bytes, web.max_request_bytes, web.max_files)
        s = state.sessions.get(request.cookies.get(COOKIE))
        if not auth.csrf_ok(s, form.get("csrf_token")):
            raise CsrfFailed()
        assert s is not None
        return form, s

    async def model_work(request: Request, page: Callable[[Form, auth.Session, Path], Any]) -> Response:
        """Admit (or 503), read the form into a temporary folder for this request, run ``page``, clean up."""
        state.gate.enter()
        try:
            with tempfile.TemporaryDirectory(prefix="req-", dir=tmp_root / "uploads") as tmp:
                form, s = await posted(request, Path(tmp))
                return await page(form, s, Path(tmp))
        finally:
            state.gate.leave()

    def champions_of(family: str) -> list[Champion]:
        out = []
        for name in state.champions.names(family=family):
            c = state.champions.get(name)
            if c is not None:
                out.append(c)
        return out

    def uploads_of(form: Form, field_name: str, what: str) -> tuple[list[work.Upload], list[tuple[str, str]]]:
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
                        f"{mib(f.size)} is over the {mib(web.max_file_bytes)} limit per file "
                        "(web.max_file_bytes); send a smaller file",
                    )
                )
            elif f.size == 0:
                bad.append((name, "empty file (0 bytes)"))
            else:
                good.append(work.Upload(name, f.read()))
        return good, bad

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

    # -- errors ----------------------------------------------------------------------------------------------
    @app.exception_handler(UserError)
    async def _user_error(request: Request, err: UserError) -> Response:
        status = 413 if isinstance(err, TooLarge) else 400
        return error_page(request, status, str(err), "That did not work")

    @app.exception_handler(CsrfFailed)
    async def _csrf(request: Request, err: Exception) -> Response:
        return error_page(
            request,
            403,
            "The form was not sent from this page, or it expired (missing or wrong CSRF "
            "token). Reload the page and try again.",
            "Refused",
        )

    @app.exception_handler(Busy)
    async def _busy(request: Request, err: Exception) -> Response:
        return error_page(
            request,
            503,
            f"The server is busy with {state.gate.max_pending} requests; try again in {web.retry_after} s.",
            "Busy",
            {"Retry-After": str(web.retry_after)},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> Response:
        message = {404: "No such page.", 405: "This page does not take that kind of request."}.get(
            err.status_code, str(err.detail)
        )
        return error_page(request, err.status_code, message, "Not here")

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception) -> Response:
        eid = secrets.token_hex(4)
        log.exception("error %s on %s %s", eid, request.method, request.url.path)
        return error_page(
            request,
            500,
            f"Something went wrong on the server (error id {eid}, in its log). "
            "Try again; if it persists, tell the team the error id.",
            "Server error",
        )

    # -- pages -----------------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse("/generate", status_code=303)

    @app.get("/health")
    def health() -> Response:
        index = state.champions.index()
        return JSONResponse(
            {"status": "ok", "champions": {k: v[1] for k, v in index.items()}, "pending": state.gate.pending}
        )

    def generate_page(request: Request, status: int = 200, **ctx: Any) -> HTMLResponse:
        champs = champions_of("generation")
        return render(
            request,
            "generate.html",
            status,
            champions=champs,
            missing=no_champion_message("gan"),
            max_count=work.MAX_GENERATE,
            **ctx,
        )

    @app.get("/generate", response_class=HTMLResponse)
    def generate_get(request: Request) -> Response:
        return generate_page(request)

    @app.post("/generate", response_class=HTMLResponse)
    async def generate_post(request: Request) -> Response:
        async def page(form: Form, s: auth.Session, tmp: Path) -> Response:
            champs = await run_in_threadpool(champions_of, "generation")
            champ = pick(champs, form.get("model"), "gan")
            category = form.get("category") or ""
            count = int_field(form, "count", 16, 1, work.MAX_GENERATE)
            seed = int_field(form, "seed", 0, 0, 2**31 - 1)
            items = await state.gate.run(work.generate_items, champ, category, count, seed)
            result = state.results.add(
                s.sid, "generate", f"{count} x {category} from {champ.label}, seed {seed}", items
            )
            return await run_in_threadpool(
                lambda: generate_page(
                    request,
                    result=result,
                    chosen={"model": champ.name, "category": category, "count": count, "seed": seed},
                )
            )

        return await model_work(request, page)

    def enhance_options() -> list[tuple[str, str, Champion]]:
        from productgen.apply.enhance import ENHANCEMENTS as TASK_VIEWS
        from productgen.apply.enhance import enhancement_matches as task_matches

        out = []
        for c in champions_of("restoration"):
            view = c.view or ""
            for task in TASK_VIEWS:
                if task_matches(task, view):
                    out.append((task, f"{ENHANCE_LABELS[task]}: {c.label} ({view})", c))
        return out

    def enhance_page(request: Request, status: int = 200, **ctx: Any) -> HTMLResponse:
        return render(
            request, "enhance.html", status, options=enhance_options(), missing=no_champion_message("restore"), **ctx
        )

    @app.get("/enhance", response_class=HTMLResponse)
    def enhance_get(request: Request) -> Response:
        return enhance_page(request)

    @app.post("/enhance", response_class=HTMLResponse)
    async def enhance_post(request: Request) -> Response:
        async def page(form: Form, s: auth.Session, tmp: Path) -> Response:
            options = await run_in_threadpool(enhance_options)
            if not options:
                raise UserError(no_champion_message("restore"))
            wanted = form.get("model") or f"{options[0][0]}|{options[0][2].name}"
            chosen = next((o for o in options if f"{o[0]}|{o[2].name}" == wanted), None)
            if chosen is None:
                raise UserError(f"model: {wanted!r} is not one of the champions now; reload the page")
            task, label, champ = chosen
            uploads, bad = uploads_of(form, "photos", "photos")
            decoded, bad2 = await state.gate.run(
                work.decode_uploads,
                uploads,
                int(champ.model.channels),
                state.params.data.max_pixels,
                None,
                web.max_side,
            )
            items, bad3 = await state.gate.run(work.image_items, champ.model, decoded) if decoded else ([], [])
            result = state.results.add(s.sid, "enhance", label, items, bad + bad2 + bad3)
            return await run_in_threadpool(
                lambda: enhance_page(request, 200 if items else 400, result=result, chosen=wanted)
            )

        return await model_work(request, page)

    def restyle_page(request: Request, status: int = 200, **ctx: Any) -> HTMLResponse:
        from productgen.models.styles import style_names

        champs = champions_of("style")
        return render(
            request,
            "restyle.html",
            status,
            champions=champs,
            styles=style_names(),
            missing=no_champion_message("adain"),
            **ctx,
        )

    @app.get("/restyle", response_class=HTMLResponse)
    def restyle_get(request: Request) -> Response:
        return restyle_page(request)

    @app.post("/restyle", response_class=HTMLResponse)
    async def restyle_post(request: Request) -> Response:
        async def page(form: Form, s: auth.Session, tmp: Path) -> Response:
            import torch

            champs = await run_in_threadpool(champions_of, "style")
            champ = pick(champs, form.get("model"), "adain")
            uploads, bad = uploads_of(form, "photos", "photos")
            options: dict[str, Any] = {"preserve_product": form.get("preserve_product") == "on"}
            label = champ.label
            if champ.config.get("model") == "adain":
                style_files = form.files_of("style_file")
                style_up = None
                if style_files:
                    f = style_files[0]
                    if f.too_big:
                        raise UserError(
                            f"style image {work.safe_name(f.name, 0)}: {mib(f.size)} is over the "
                            f"{mib(web.max_file_bytes)} limit per file (web.max_file_bytes)"
                        )
                    style_up = work.Upload(work.safe_name(f.name, 0), f.read())
                style = form.get("style")
                arr = await state.gate.run(work.style_array, style, style_up, state.params.data.max_pixels)
                options["style"] = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].contiguous()
                alpha_raw = form.get("alpha") or "1"
                try:
                    alpha = float(alpha_raw)
                except ValueError:
                    raise UserError(f"alpha: {alpha_raw[:20]!r} is not a number from 0 to 1") from None
                if not 0.0 <= alpha <= 1.0:
                    raise UserError(f"alpha: {alpha} is outside 0..1")
                options["alpha"] = alpha
                label += f", style {style_up.name if style_up else style}, alpha {alpha:g}"
            decoded, bad2 = await state.gate.run(
                work.decode_uploads, uploads, int(champ.model.channels), state.params.data.max_pixels, web.restyle_size
            )
            items, bad3 = (
                await state.gate.run(work.image_items, champ.model, decoded, **options) if decoded else ([], [])
            )
            if options["preserve_product"]:
                label += ", product preserved"
            result = state.results.add(s.sid, "restyle", label, items, bad + bad2 + bad3)
            return await run_in_threadpool(
                lambda: restyle_page(
                    request,
                    200 if items else 400,
                    result=result,
                    chosen={
                        "model": champ.name,
                        "style": form.get("style"),
                        "preserve_product": options["preserve_product"],
                        "alpha": options.get("alpha", 1.0),
                    },
                )
            )

        return await model_work(request, page)

    def sketch_page(request: Request, status: int = 200, **ctx: Any) -> HTMLResponse:
        champs = [c for c in champions_of("translation") if c.task == "pix2pix"]
        return render(request, "sketch.html", status, champions=champs, missing=no_champion_message("pix2pix"), **ctx)

    @app.get("/sketch", response_class=HTMLResponse)
    def sketch_get(request: Request) -> Response:
        return sketch_page(request)

    @app.post("/sketch", response_class=HTMLResponse)
    async def sketch_post(request: Request) -> Response:
        async def page(form: Form, s: auth.Session, tmp: Path) -> Response:
            champs = await run_in_threadpool(lambda: [c for c in champions_of("translation") if c.task == "pix2pix"])
            champ = pick(champs, form.get("model"), "pix2pix")
            uploads, bad = uploads_of(form, "photos", "sketch")
            decoded, bad2 = await state.gate.run(
                work.decode_uploads, uploads, int(champ.model.channels), state.params.data.max_pixels, web.sketch_size
            )
            from_photo = form.get("edges") == "on"
            if from_photo and decoded:
                edged = await state.gate.run(
                    work.edges_of, [d.array for d in decoded], state.params.views.edge_threshold
                )
                decoded = [work.Decoded(d.name, e) for d, e in zip(decoded, edged, strict=True)]
            items, bad3 = (
                await state.gate.run(work.image_items, champ.model, decoded, direction="ab") if decoded else ([], [])
            )
            label = champ.label + (" (edges drawn from the photo first)" if from_photo else "")
            result = state.results.add(s.sid, "sketch", label, items, bad + bad2 + bad3)
            return await run_in_threadpool(
                lambda: sketch_page(request, 200 if items else 400, result=result, chosen={"edges": from_photo})
            )

        return await model_work(request, page)

    # -- models ----------------------------------------------------------------------------------------------
    def models_page(
        request: Request, status: int = 200, session: auth.Session | None = None, **ctx: Any
    ) -> HTMLResponse:
        from productgen.tasks import TASKS
        from productgen.web.registry_view import models_by_task

        return render(
            request,
            "models.html",
            status,
            session=session,
            tasks=TASKS,
            models=models_by_task(),
            missing=no_champion_message,
            auth_mode=web.auth,
            **ctx,
        )

    @app.get("/models", response_class=HTMLResponse)
    def models_get(request: Request) -> Response:
        return models_page(request)

    @app.get("/models/sample/{name}/{version}.png")
    def model_sample(name: str, version: str) -> Response:
        from productgen.web.registry_view import sample_png

        if not version.isdigit():
            raise StarletteHTTPException(404)
        try:
            data = sample_png(name, version, state.samples)
        except Exception:
            data = None
        if data is None:
            raise StarletteHTTPException(404)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def registry_change(s: auth.Session, fn: Callable[[], Any]) -> Any:
        """Run a registry change as the signed-in user: with mlflow auth, under their own credentials."""
        if web.auth != "mlflow" or s.credentials is None:
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

    async def registry_post(request: Request, action: str) -> Response:
        from productgen.registry import promotion as registry

        with tempfile.TemporaryDirectory(prefix="req-", dir=tmp_root / "uploads") as tmp:
            form, s = await posted(request, Path(tmp))
        if s.user is None:
            return await run_in_threadpool(
                lambda: models_page(
                    request, 401, message=f"Sign in to {action}: changing the registry needs a configured user."
                )
            )
        name = form.get("name") or ""
        task = form.get("task") or ""
        from productgen.tasks import TASKS

        if task not in TASKS:
            raise UserError(f"task: {task[:40]!r} is not a task ({', '.join(TASKS)})")
        registered = registry.registered_name(task, name or None)

        def change() -> str:
            if action == "promote":
                version = form.get("version") or None
                # exactly what `productgen registry promote TASK --name NAME` runs: the same margin and gate settings
                d = registry.promote(
                    task,
                    version,
                    registry.margin_for(task, state.params.registry),
                    False,
                    registered,
                    **_gate_settings(registry.promote, state.params),
                )
                verdict = "promoted" if d.promoted else "not promoted"
                return f"{d.model} v{d.version}: {verdict} ({d.reason}); champion is now v{d.champion_after}"
            d = registry.rollback(task, form.get("version") or None, registered)
            return f"{d.model}: champion v{d.champion_before} -> v{d.champion_after} (rollback)"

        def guarded() -> str:
            from mlflow.exceptions import MlflowException

            try:
                return str(registry_change(s, change))
            except MlflowException as err:  # the team server's permissions: a message, not a server error
                if err.error_code in ("PERMISSION_DENIED", "UNAUTHENTICATED") or "403" in str(err):
                    raise UserError(
                        f"the tracking server refused to let {s.user} {action} {registered} "
                        f"({str(err).splitlines()[0][:200]}); ask an MLflow admin for EDIT on it"
                    ) from None
                raise

        message = await run_in_threadpool(guarded)
        log.info("%s by %s: %s", action, s.user, message)
        await run_in_threadpool(state.champions.index, True)  # the pages follow at once, not after the TTL
        s.flash = message
        return RedirectResponse("/models", status_code=303)

    @app.post("/models/promote")
    async def promote_post(request: Request) -> Response:
        return await registry_post(request, "promote")

    @app.post("/models/rollback")
    async def rollback_post(request: Request) -> Response:
        return await registry_post(request, "rollback")

    # -- sign-in ---------------------------------------------------------------------------------------------
    @app.get("/signin", response_class=HTMLResponse)
    def signin_get(request: Request) -> Response:
        return render(request, "signin.html", auth_mode=web.auth)

    @app.post("/signin", response_class=HTMLResponse)
    async def signin_post(request: Request) -> Response:
        with tempfile.TemporaryDirectory(prefix="req-", dir=tmp_root / "uploads") as tmp:
            form, s = await posted(request, Path(tmp))
        name = (form.get("username") or "").strip()
        password = form.get("password") or ""

        def check() -> tuple[str, str] | None:
            if web.auth == "mlflow":
                from productgen.tracking.runs import tracking_uri

                return (name, password) if auth.check_mlflow_user(tracking_uri(), name, password) else None
            users = auth.load_users(state.users_file)
            if not users:
                raise UserError(
                    f"no users are configured: add one with 'productgen web add-user NAME' "
                    f"(writes {state.users_file}) or set ${auth.USERS_ENV}"
                )
            stored = users.get(name)
            ok = auth.verify_password(password, stored) if stored else auth.verify_password(password, _DUMMY)
            return (name, "") if ok and stored else None

        state.gate.enter()  # a password check costs tens of ms of CPU (scrypt): bounded like model work
        try:
            creds = await state.gate.run(check)
        finally:
            state.gate.leave()
        if creds is None:
            return render(request, "signin.html", 401, auth_mode=web.auth, message="Wrong user name or password.")
        state.sessions.drop(s.sid)  # a new session id at sign-in: a planted cookie cannot be promoted to a user
        new = state.sessions.new(name, creds if web.auth == "mlflow" else None)
        new.flash = f"Signed in as {name}."
        response = RedirectResponse("/models", status_code=303)
        set_cookie(response, request, new)
        return response

    @app.post("/signout")
    async def signout_post(request: Request) -> Response:
        with tempfile.TemporaryDirectory(prefix="req-", dir=tmp_root / "uploads") as tmp:
            _, s = await posted(request, Path(tmp))
        state.sessions.drop(s.sid)
        response = RedirectResponse("/generate", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- results ---------------------------------------------------------------------------------------------
    def result_of(request: Request, rid: str) -> Any:
        s = state.sessions.get(request.cookies.get(COOKIE))
        r = state.results.get(rid, s.sid) if s is not None else None
        if r is None:
            raise StarletteHTTPException(404, "That result is gone (results are kept for a while only); run it again.")
        return r

    @app.get("/results/{rid}/{index}.png")
    def result_image(request: Request, rid: str, index: int, before: int = 0) -> Response:
        r = result_of(request, rid)
        if not 0 <= index < len(r.items):
            raise StarletteHTTPException(404)
        item = r.items[index]
        data = item.before if before else item.png
        if data is None:
            raise StarletteHTTPException(404)
        filename = os.path.basename(item.name) if not before else "input-" + os.path.basename(item.name)
        return Response(
            data,
            media_type="image/png",
            headers={"Content-Disposition": f'inline; filename="{_header_safe(filename)}"', "Cache-Control": "private"},
        )

    @app.get("/results/{rid}.zip")
    def result_zip(request: Request, rid: str) -> Response:
        r = result_of(request, rid)
        return Response(
            r.zip_bytes(),
            media_type="application/zip",
            headers={
                "Content-Disposition": f'attachment; filename="productgen-{r.kind}.zip"',
                "Cache-Control": "private",
            },
        )

    @app.get("/styles/{name}.jpg")
    def style_thumb(name: str) -> Response:
        from productgen.models.styles import BUILTIN_STYLES, load_style

        if name not in BUILTIN_STYLES:
            raise StarletteHTTPException(404)
        if name not in state.thumbs:
            import io

            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(load_style(name, max_side=160)).save(buf, format="JPEG", quality=85)
            state.thumbs[name] = buf.getvalue()
        return Response(state.thumbs[name], media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    return app


class CsrfFailed(Exception):
    """A POST without this session's CSRF token (HTTP 403)."""


# Checked against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY = auth.hash_password("not-a-user-" + secrets.token_hex(8))


def _gate_settings(promote: Callable[..., Any], params: Params) -> dict[str, Any]:
    """The ``registry:`` settings for the gate, for a ``registry.promote`` that takes them (``cfg``)."""
    import inspect

    return {"cfg": params.registry} if "cfg" in inspect.signature(promote).parameters else {}


def _header_safe(name: str) -> str:
    return "".join(ch for ch in name if ch.isprintable() and ch not in '"\\')[:150] or "image.png"
