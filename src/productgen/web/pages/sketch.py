"""Sketch to product: drawings (or catalog photos, edges drawn first) through the champions of the ``sketch`` page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from productgen.web import auth, work
from productgen.web.champions import no_champion_message
from productgen.web.forms import Form
from productgen.web.shared import State, pick, state_of, suggested_task

PAGE = "sketch"
router = APIRouter()


def sketch_page(state: State, request: Request, status: int = 200, **ctx: Any) -> HTMLResponse:
    return state.render(
        request,
        "sketch.html",
        status,
        champions=state.champions_on(PAGE),
        missing=no_champion_message(suggested_task(PAGE)),
        **ctx,
    )


@router.get("/sketch", response_class=HTMLResponse)
def sketch_get(request: Request) -> Response:
    return sketch_page(state_of(request), request)


@router.post("/sketch", response_class=HTMLResponse)
async def sketch_post(request: Request) -> Response:
    state = state_of(request)

    async def page(form: Form, s: auth.Session, tmp: Path) -> Response:
        champs = await run_in_threadpool(state.champions_on, PAGE)
        champ = pick(champs, form.get("model"), suggested_task(PAGE))
        uploads, bad = state.uploads_of(form, "photos", "sketch")
        decoded, bad2 = await state.gate.run(
            work.decode_uploads,
            uploads,
            int(champ.model.channels),
            state.params.data.max_pixels,
            state.web.sketch_size,
        )
        from_photo = form.get("edges") == "on"
        if from_photo and decoded:
            edged = await state.gate.run(work.edges_of, [d.array for d in decoded], state.params.views.edge_threshold)
            decoded = [work.Decoded(d.name, e) for d, e in zip(decoded, edged, strict=True)]
        items, bad3 = (
            await state.gate.run(work.image_items, champ.model, decoded, direction="ab") if decoded else ([], [])
        )
        label = champ.label + (" (edges drawn from the photo first)" if from_photo else "")
        result = state.results.add(s.sid, "sketch", label, items, bad + bad2 + bad3)
        return await run_in_threadpool(
            lambda: sketch_page(state, request, 200 if items else 400, result=result, chosen={"edges": from_photo})
        )

    return await state.model_work(request, page)
