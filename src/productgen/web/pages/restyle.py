"""Restyle: product photos through the style champions of the ``restyle`` page; a task that takes the user's style
image (:attr:`~productgen.tasks.TaskSpec.style_input`, AdaIN) gets a bundled or uploaded style and a strength."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from productgen.common.errors import UserError
from productgen.web import auth, work
from productgen.web.champions import Champion, no_champion_message
from productgen.web.forms import Form, mib
from productgen.web.shared import State, pick, state_of, suggested_task

PAGE = "restyle"
router = APIRouter()


def suggested() -> str:
    """Without a champion, suggest the task that restyles with any style image."""
    return suggested_task(PAGE, lambda t: t.style_input)


def restyle_page(state: State, request: Request, status: int = 200, **ctx: Any) -> HTMLResponse:
    from productgen.models.styles import style_names

    return state.render(
        request,
        "restyle.html",
        status,
        champions=state.champions_on(PAGE),
        styles=style_names(),
        missing=no_champion_message(suggested()),
        **ctx,
    )


@router.get("/restyle", response_class=HTMLResponse)
def restyle_get(request: Request) -> Response:
    return restyle_page(state_of(request), request)


def alpha_of(form: Form) -> float:
    raw = form.get("alpha") or "1"
    try:
        alpha = float(raw)
    except ValueError:
        raise UserError(f"alpha: {raw[:20]!r} is not a number from 0 to 1") from None
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha: {alpha} is outside 0..1")
    return alpha


async def style_options(state: State, form: Form, champ: Champion, options: dict[str, Any]) -> str:
    """Put the style image and strength into ``options`` for a model that takes one; the label's addition."""
    import torch

    if not champ.spec.style_input:
        return ""
    style_files = form.files_of("style_file")
    style_up = None
    if style_files:
        f = style_files[0]
        if f.too_big:
            raise UserError(
                f"style image {work.safe_name(f.name, 0)}: {mib(f.size)} is over the "
                f"{mib(state.web.max_file_bytes)} limit per file (web.max_file_bytes)"
            )
        style_up = work.Upload(work.safe_name(f.name, 0), f.read())
    style = form.get("style")
    arr = await state.gate.run(work.style_array, style, style_up, state.params.data.max_pixels)
    options["style"] = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].contiguous()
    alpha = alpha_of(form)
    options["alpha"] = alpha
    return f", style {style_up.name if style_up else style}, alpha {alpha:g}"


@router.post("/restyle", response_class=HTMLResponse)
async def restyle_post(request: Request) -> Response:
    state = state_of(request)

    async def page(form: Form, s: auth.Session, tmp: Path) -> Response:
        champs = await run_in_threadpool(state.champions_on, PAGE)
        champ = pick(champs, form.get("model"), suggested())
        uploads, bad = state.uploads_of(form, "photos", "photos")
        options: dict[str, Any] = {"preserve_product": form.get("preserve_product") == "on"}
        label = champ.label + await style_options(state, form, champ, options)
        decoded, bad2 = await state.gate.run(
            work.decode_uploads,
            uploads,
            int(champ.model.channels),
            state.params.data.max_pixels,
            state.web.restyle_size,
        )
        items, bad3 = await state.gate.run(work.image_items, champ.model, decoded, **options) if decoded else ([], [])
        if options["preserve_product"]:
            label += ", product preserved"
        result = state.results.add(s.sid, "restyle", label, items, bad + bad2 + bad3)
        chosen = {
            "model": champ.name,
            "style": form.get("style"),
            "preserve_product": options["preserve_product"],
            "alpha": options.get("alpha", 1.0),
        }
        return await run_in_threadpool(
            lambda: restyle_page(state, request, 200 if items else 400, result=result, chosen=chosen)
        )

    return await state.model_work(request, page)
