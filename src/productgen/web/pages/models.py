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
from productgen.web.shared import COOKIE, Forbidden, State, gate_settings, state_of

log = logging.getLogger("productgen.web")
router = APIRouter()


def models_page(
    state: State, request: Request, status: int = 200, session: auth.Session | None = None, **ctx: Any
) -> HTMLResponse:
    from productgen.tasks import TASKS
    from productgen.web.registry_view import models_by_task

    models = models_by_task()
    s = session or state.sessions.get(request.cookies.get(COOKIE))
    return state.render(
        request,
        "models.html",
        status,
        session=session,
        tasks=TASKS,
        models=models,
        reviews=waiting_reviews(state, models),
        may_answer=may_answer(state, s.user if s else None),
        missing=no_champion_message,
        auth_mode=state.web.auth,
        **ctx,
    )


def may_answer(state: State, user: str | None) -> bool:
    from productgen.registry import approval

    return user is not None and approval.can_answer(user, state.users_file)


def waiting_reviews(state: State, models: dict[str, list[Any]]) -> dict[str, list[dict[str, Any]]]:
    """Registered name -> its versions that wait for approval, each with the side-by-side review."""
    from productgen.registry import approval
    from productgen.web import review

    out: dict[str, list[dict[str, Any]]] = {}
    for task, views in models.items():
        for m in views:
            try:
                entries = approval.waiting(task, m.name)
            except Exception as err:  # one broken model must not take the page down
                log.warning("could not read what waits for approval on %s: %s", m.name, err)
                continue
            for entry in entries:
                item = {"task": task, "entry": entry, "per_category": review.per_category_rows(entry)}
                item["comparison"], item["error"] = comparison_of(state, task, m, entry)
                out.setdefault(m.name, []).append(item)
    return out


def comparison_of(state: State, task: str, m: Any, entry: dict[str, Any]) -> tuple[Any, str | None]:
    """The same inputs through the champion and the waiting version (computed once per pair of versions)."""
    from productgen.web import review

    if m.champion is None:
        return None, "no champion to compare with: approving makes it the first champion"
    key = (m.name, m.champion.version, str(entry["version"]))
    if key not in state.reviews:
        try:
            champion = state.champions.version(m.name, task, m.champion.version)
            challenger = state.champions.version(m.name, task, str(entry["version"]))
            state.reviews[key] = review.comparison(champion, challenger, state.params)
        except Exception as err:
            log.exception("could not compare %s v%s with its champion", m.name, entry["version"])
            return None, f"could not compare the models here ({type(err).__name__}: {str(err)[:200]})"
        while len(state.reviews) > 16:
            state.reviews.pop(next(iter(state.reviews)))
    return state.reviews[key], None


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


def guarded(
    state: State, s: auth.Session, action: str, registered: str, change: Any, refused: type[UserError] = UserError
) -> str:
    """Run ``change`` as the signed-in user; the team server's refusal becomes a message (``refused``), not a
    server error."""
    from mlflow.exceptions import MlflowException

    try:
        return str(state.registry_change(s, change))
    except MlflowException as err:
        if err.error_code in ("PERMISSION_DENIED", "UNAUTHENTICATED") or "403" in str(err):
            raise refused(
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


def version_of_form(form: Form) -> str:
    version = (form.get("version") or "").strip()
    if not version.isdigit():
        raise UserError(f"version: {version[:20]!r} is not a version number")
    return version


async def approval_post(request: Request, action: str) -> Response:
    """Approve (promotes through the gate) or reject (a reason is required) a version that waits for approval:
    only a signed-in user who may promote (:func:`productgen.registry.approval.can_answer`); others get 401/403
    and nothing changes."""
    from productgen.registry import approval
    from productgen.registry import promotion as registry

    state = state_of(request)
    form, s = await state.posted_small(request)
    if s.user is None:
        return await run_in_threadpool(
            lambda: models_page(state, request, 401, message=f"Sign in to {action}: answering needs a configured user.")
        )
    task = task_of_form(form)
    version = version_of_form(form)
    registered = registry.registered_name(task, form.get("name") or None)
    if not await run_in_threadpool(may_answer, state, s.user):
        log.warning("%s of %s v%s refused: %s may not answer", action, registered, version, s.user)
        raise Forbidden(f"{s.user} may not {action} {registered} v{version}: only the users who may promote answer")
    reason = (form.get("reason") or "").strip()
    if action == "reject" and not reason:
        raise UserError("reason: say why the challenger is rejected (whoever reads the history must learn why)")

    def change() -> str:
        if action == "approve":
            a = approval.approve(
                task, version, s.user, reason or None, registered, state.params.registry, state.users_file
            )
            verdict = "promoted" if a["promoted"] else "not promoted"
            after = (a.get("decision") or {}).get("champion_after")
            return (
                f"{registered} v{version}: approved by {s.user}; {verdict} ({a['promotion_reason']}); "
                f"champion is now v{after}"
            )
        approval.reject(task, version, s.user, reason, registered, state.users_file)
        return f"{registered} v{version}: rejected by {s.user} ({reason}); the champion stays"

    message = await run_in_threadpool(guarded, state, s, action, registered, change, Forbidden)
    log.info("%s by %s: %s", action, s.user, message)
    await run_in_threadpool(state.champions.index, True)
    s.flash = message
    return RedirectResponse("/models", status_code=303)


@router.post("/models/approve")
async def approve_post(request: Request) -> Response:
    return await approval_post(request, "approve")


@router.post("/models/reject")
async def reject_post(request: Request) -> Response:
    return await approval_post(request, "reject")
