"""Enhance: seller photos through the image -> image champions of the ``enhance`` page (denoise, deblur, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from productgen.common.errors import UserError
from productgen.web import auth, work
from productgen.web.champions import Champion, no_champion_message
from productgen.web.forms import Form
from productgen.web.shared import State, state_of, suggested_task

PAGE = "enhance"
ENHANCE_LABELS = {
    "denoise": "Denoise",
    "deblur": "Deblur",
    "jpeg": "JPEG clean-up",
    "sr2": "Upscale 2x",
    "sr4": "Upscale 4x",
}
router = APIRouter()


def enhance_options(state: State) -> list[tuple[str, str, Champion]]:
    """(enhancement, label, champion) for every champion of the page and each enhancement its view does."""
    from productgen.apply.enhance import ENHANCEMENTS, enhancement_matches

    out = []
    for c in state.champions_on(PAGE):
        view = c.view or ""
        for enhancement in ENHANCEMENTS:
            if enhancement_matches(enhancement, view):
                out.append((enhancement, f"{ENHANCE_LABELS[enhancement]}: {c.label} ({view})", c))
    return out


def enhance_page(state: State, request: Request, status: int = 200, **ctx: Any) -> HTMLResponse:
    return state.render(
        request,
        "enhance.html",
        status,
        options=enhance_options(state),
        missing=no_champion_message(suggested_task(PAGE)),
        **ctx,
    )


@router.get("/enhance", response_class=HTMLResponse)
def enhance_get(request: Request) -> Response:
    return enhance_page(state_of(request), request)


@router.post("/enhance", response_class=HTMLResponse)
async def enhance_post(request: Request) -> Response:
    state = state_of(request)
    web = state.web

    async def page(form: Form, s: auth.Session, tmp: Path) -> Response:
        options = await run_in_threadpool(enhance_options, state)
        if not options:
            raise UserError(no_champion_message(suggested_task(PAGE)))
        wanted = form.get("model") or f"{options[0][0]}|{options[0][2].name}"
        chosen = next((o for o in options if f"{o[0]}|{o[2].name}" == wanted), None)
        if chosen is None:
            raise UserError(f"model: {wanted!r} is not one of the champions now; reload the page")
        _, label, champ = chosen
        uploads, bad = state.uploads_of(form, "photos", "photos")
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
            lambda: enhance_page(state, request, 200 if items else 400, result=result, chosen=wanted)
        )

    return await state.model_work(request, page)
