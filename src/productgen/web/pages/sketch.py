"""Translate: the champions of the ``sketch`` page map one kind of image to another.

pix2pix turns drawings (or catalog photos, edges drawn first) into products; CycleGAN turns photos of one
category into the other (sneaker -> ankle boot) and back. What differs between them is read from the task
registry (``paired``, ``reversible``) and the model's own config (its source view, its two domains), never from
a task name, so a new translation model appears here by being registered with ``page="sketch"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from productgen.common.errors import UserError
from productgen.web import auth, work
from productgen.web.champions import no_champion_message
from productgen.web.forms import Form
from productgen.web.shared import State, pick, state_of, suggested_task

PAGE = "sketch"
DIRECTIONS = ("ab", "ba")
router = APIRouter()


def what_it_does(champ: Any, direction: str = "ab") -> str:
    """``edges -> product`` for pix2pix, ``sneaker -> ankle_boot`` (or back) for CycleGAN."""
    domains = champ.config.get("domains") or {}
    if champ.spec.paired is False and "a" in domains:
        src, dst = (domains["a"], domains["b"]) if direction == "ab" else (domains["b"], domains["a"])
        return f"{Path(str(src)).name} -> {Path(str(dst)).name}"
    return f"{champ.config.get('source_view', 'sketch')} -> product"


def choices(champs: list[Any]) -> list[dict[str, Any]]:
    """What the form offers per champion: its label and the directions it translates."""
    return [
        {
            "name": c.name,
            "label": f"{c.label} ({what_it_does(c)}" + (", and back)" if c.spec.reversible else ")"),
            "reversible": c.spec.reversible,
        }
        for c in champs
    ]


def direction_of(champ: Any, value: str | None) -> str:
    """The direction field, refused with a one-line reason when the model cannot go that way."""
    direction = value or "ab"
    if direction not in DIRECTIONS:
        raise UserError(f"direction: {direction!r} is not a direction (use ab or ba)")
    if direction == "ba" and not champ.spec.reversible:
        raise UserError(f"direction: {champ.label} translates one way only ({what_it_does(champ)}); choose forward")
    return direction


def sketch_page(state: State, request: Request, status: int = 200, **ctx: Any) -> HTMLResponse:
    return state.render(
        request,
        "sketch.html",
        status,
        champions=choices(state.champions_on(PAGE)),
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
        direction = direction_of(champ, form.get("direction"))
        from_photo = form.get("edges") == "on"
        if from_photo and champ.config.get("source_view") != "edges":
            raise UserError(
                f"edges: {champ.label} takes photos as they are ({what_it_does(champ, direction)}); "
                "untick 'draw their edges first'"
            )
        uploads, bad = state.uploads_of(form, "photos", "sketch")
        decoded, bad2 = await state.gate.run(
            work.decode_uploads,
            uploads,
            int(champ.model.channels),
            state.params.data.max_pixels,
            state.web.sketch_size,
        )
        if from_photo and decoded:
            edged = await state.gate.run(work.edges_of, [d.array for d in decoded], state.params.views.edge_threshold)
            decoded = [work.Decoded(d.name, e) for d, e in zip(decoded, edged, strict=True)]
        items, bad3 = (
            await state.gate.run(work.image_items, champ.model, decoded, direction=direction) if decoded else ([], [])
        )
        label = f"{champ.label}, {what_it_does(champ, direction)}" + (
            " (edges drawn from the photo first)" if from_photo else ""
        )
        result = state.results.add(s.sid, "sketch", label, items, bad + bad2 + bad3)
        return await run_in_threadpool(
            lambda: sketch_page(
                state,
                request,
                200 if items else 400,
                result=result,
                chosen={"edges": from_photo, "model": champ.name, "direction": direction},
            )
        )

    return await state.model_work(request, page)
