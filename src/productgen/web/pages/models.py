"""Models: each task's champion, challenger, evidence and history; promote and roll back for a signed-in user."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from productgen.common.errors import UserError
from productgen.web import auth
from productgen.web.champions import no_champion_message
from productgen.web.forms import Form
from productgen.web.shared import State, gate_settings, state_of

log = logging.getLogger("productgen.web")
router = APIRouter()


def models_page(
    state: State, request: Request, status: int = 200, session: auth.Session | None = None, **ctx: Any
) -> HTMLResponse:
    from productgen.tasks import TASKS
    from productgen.web.registry_view import models_by_task

    return state.render(
        request,
        "models.html",
        status,
        session=session,
        tasks=TASKS,
        models=models_by_task(),
        missing=no_champion_message,
        auth_mode=state.web.auth,
        **ctx,
    )


@router.get("/models", response_class=HTMLResponse)
def models_get(request: Request) -> Response:
    return models_page(state_of(request), request)


@router.get("/models/sample/{name}/{version}.png")
def model_sample(request: Request, name: str, version: str) -> Response:
    from productgen.web.registry_view import sample_png

    if not version.isdigit():
        raise StarletteHTTPException(404)
    try:
        data = sample_png(name, version, state_of(request).samples)
    except Exception:
        data = None
    if data is None:
        raise StarletteHTTPException(404)
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


def task_of_form(form: Form) -> str:
    from productgen.tasks import TASKS

    task = form.get("task") or ""
    if task not in TASKS:
        raise UserError(f"task: {task[:40]!r} is not a task ({', '.join(TASKS)})")
    return task


def guarded(state: State, s: auth.Session, action: str, registered: str, change: Any) -> str:
    """Run ``change`` as the signed-in user; the team server's refusal becomes a message, not a server error."""
    from mlflow.exceptions import MlflowException

    try:
        return str(state.registry_change(s, change))
    except MlflowException as err:
        if err.error_code in ("PERMISSION_DENIED", "UNAUTHENTICATED") or "403" in str(err):
            raise UserError(
                f"the tracking server refused to let {s.user} {action} {registered} "
                f"({str(err).splitlines()[0][:200]}); ask an MLflow admin for EDIT on it"
            ) from None
        raise


async def registry_post(request: Request, action: str) -> Response:
    from productgen.registry import promotion as registry

    state = state_of(request)
    form, s = await state.posted_small(request)
    if s.user is None:
        return await run_in_threadpool(
            lambda: models_page(
                state, request, 401, message=f"Sign in to {action}: changing the registry needs a configured user."
            )
        )
    task = task_of_form(form)
    registered = registry.registered_name(task, form.get("name") or None)

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
                **gate_settings(registry.promote, state.params),
            )
            verdict = "promoted" if d.promoted else "not promoted"
            return f"{d.model} v{d.version}: {verdict} ({d.reason}); champion is now v{d.champion_after}"
        d = registry.rollback(task, form.get("version") or None, registered)
        return f"{d.model}: champion v{d.champion_before} -> v{d.champion_after} (rollback)"

    message = await run_in_threadpool(guarded, state, s, action, registered, change)
    log.info("%s by %s: %s", action, s.user, message)
    await run_in_threadpool(state.champions.index, True)  # the pages follow at once, not after the TTL
    s.flash = message
    return RedirectResponse("/models", status_code=303)


@router.post("/models/promote")
async def promote_post(request: Request) -> Response:
    return await registry_post(request, "promote")


@router.post("/models/rollback")
async def rollback_post(request: Request) -> Response:
    return await registry_post(request, "rollback")
