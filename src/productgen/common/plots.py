"""Loss curves drawn with Pillow alone (matplotlib is not part of the core's dependencies)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from productgen.common.grids import save_png

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def loss_curve(log: Path, out: Path, keys: list[str] | None = None, size: tuple[int, int] = (720, 360)) -> Path | None:
    """Plot every numeric series of a ``metrics.jsonl`` (except throughput) against the step."""
    if not log.is_file():
        return None
    rows = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
    if not rows:
        return None
    keys = keys or [k for k in rows[0] if k not in ("step", "images_per_second")]
    steps = [r["step"] for r in rows]
    values = [v for r in rows for k in keys if isinstance(v := r.get(k), (int, float))]
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1.0
    w, h = size
    left, right, top, bottom = 60, 20, 20, 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    s0, s1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1

    def xy(step: float, v: float) -> tuple[float, float]:
        return (
            left + (step - s0) / (s1 - s0) * (w - left - right),
            h - bottom - (v - lo) / (hi - lo) * (h - top - bottom),
        )

    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        draw.text((4, xy(s0, v)[1] - 6), f"{v:.3g}", fill=(0, 0, 0))
    draw.text((left, h - bottom + 6), f"step {s0}", fill=(0, 0, 0))
    draw.text((w - right - 80, h - bottom + 6), f"step {s1}", fill=(0, 0, 0))
    for i, key in enumerate(keys):
        pts = [xy(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        colour = COLOURS[i % len(COLOURS)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        elif pts:
            draw.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=colour)
        draw.text((left + 10 + 110 * i, h - 18), key, fill=colour)
    return save_png(img, out)


def losses_csv(log: Path, out: Path) -> Path | None:
    """The per-step losses of a ``metrics.jsonl`` as CSV (``dvc plots`` reads CSV, not JSON lines).

    Throughput is left out: it changes from run to run, and this file is committed for ``dvc plots diff``.
    """
    if not log.is_file():
        return None
    rows = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
    if not rows:
        return None
    keys = ["step"] + [k for k in rows[0] if k not in ("step", "images_per_second")]
    from productgen.common import atomic

    return atomic.write_csv(out, keys, ({k: r.get(k, "") for k in keys} for r in rows))
