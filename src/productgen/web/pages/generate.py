"""Generate: new product images per category from a generator champion (the tasks on the ``generate`` page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from productgen.web import auth, work
from productgen.web.champions import no_champion_message
from productgen.web.forms import Form
from productgen.web.shared import State, int_field, pick, state_of, suggested_task

PAGE = "generate"
router = APIRouter()


def generate_page(state: State, request: Request, status: int = 200, **ctx: Any) -> HTMLResponse:
    return state.render(
        request,
        "generate.html",
        status,
        champions=state.champions_on(PAGE),
        missing=no_champion_message(suggested_task(PAGE)),
        max_count=work.MAX_GENERATE,
        **ctx,
    )


@router.get("/generate", response_class=HTMLResponse)
def generate_get(request: Request) -> Response:
    return generate_page(state_of(request), request)


@router.post("/generate", response_class=HTMLResponse)
async def generate_post(request: Request) -> Response:
    state = state_of(request)

    async def page(form: Form, s: auth.Session, tmp: Path) -> Response:
        champs = await run_in_threadpool(state.champions_on, PAGE)
        champ = pick(champs, form.get("model"), suggested_task(PAGE))
        category = form.get("category") or ""
        count = int_field(form, "count", 16, 1, work.MAX_GENERATE)
        seed = int_field(form, "seed", 0, 0, 2**31 - 1)
        items = await state.gate.run(work.generate_items, champ, category, count, seed)
        result = state.results.add(s.sid, "generate", f"{count} x {category} from {champ.label}, seed {seed}", items)
        chosen = {"model": champ.name, "category": category, "count": count, "seed": seed}
        return await run_in_threadpool(lambda: generate_page(state, request, result=result, chosen=chosen))

    return await state.model_work(request, page)
