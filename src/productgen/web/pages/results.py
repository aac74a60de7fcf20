"""Results (each image and the zip, only to the session that made them), the bundled style thumbnails, the
health check and the home redirect."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from productgen.web.shared import COOKIE, header_safe, state_of

router = APIRouter()


@router.get("/", include_in_schema=False)
def home() -> Response:
    return RedirectResponse("/generate", status_code=303)


@router.get("/health")
def health(request: Request) -> Response:
    state = state_of(request)
    index = state.champions.index()
    return JSONResponse(
        {"status": "ok", "champions": {k: v[1] for k, v in index.items()}, "pending": state.gate.pending}
    )


def result_of(request: Request, rid: str) -> Any:
    state = state_of(request)
    s = state.sessions.get(request.cookies.get(COOKIE))
    r = state.results.get(rid, s.sid) if s is not None else None
    if r is None:
        raise StarletteHTTPException(404, "That result is gone (results are kept for a while only); run it again.")
    return r


@router.get("/results/{rid}/{index}.png")
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
        headers={"Content-Disposition": f'inline; filename="{header_safe(filename)}"', "Cache-Control": "private"},
    )


@router.get("/results/{rid}.zip")
def result_zip(request: Request, rid: str) -> Response:
    r = result_of(request, rid)
    return Response(
        r.zip_bytes(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="productgen-{r.kind}.zip"', "Cache-Control": "private"},
    )


@router.get("/styles/{name}.jpg")
def style_thumb(request: Request, name: str) -> Response:
    from productgen.models.styles import BUILTIN_STYLES, load_style

    thumbs = state_of(request).thumbs
    if name not in BUILTIN_STYLES:
        raise StarletteHTTPException(404)
    if name not in thumbs:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(load_style(name, max_side=160)).save(buf, format="JPEG", quality=85)
        thumbs[name] = buf.getvalue()
    return Response(thumbs[name], media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})
