"""Apply an image -> image model to a folder of any size: the one loop behind ``productgen enhance``,
``stylize`` and ``translate``, and :func:`predict_image`, the one function that runs a model on one image of
any size (the folder loop and the web page's enhance path both call it).

Users point it at a folder of catalog photos, so it must not stop at one bad file, must not touch the inputs
and must not lose work: unreadable files are reported and skipped, outputs keep the input's relative path and
stem (as PNG, so nothing is lost to re-compression), every output is written atomically, and an output folder
inside (or equal to) the input folder is refused so a second run never re-processes its own results.

Large photos run in bounded memory: an image whose forward pass would not fit ``memory_mb`` is processed in
overlapping tiles whose seams are blended. Restoration and translation networks normalise with statistics of
the whole feature map (GroupNorm, InstanceNorm), which a tile alone does not see, so tiled inference first
gathers those statistics over the whole image, tile by tile, and then applies them to every tile: the result
equals whole-image inference up to float rounding (see :func:`predict_image`).
"""

from __future__ import annotations

import io
import math
import os
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from productgen.common.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
DEFAULT_MEMORY_MB = 2048  # working memory for one forward pass; larger images are tiled to fit
TILE_MARGIN = 64  # px of context around each tile's core (input scale); covers the restorer's receptive field
TILE_BLEND = 32  # px band across each seam in which neighbouring tiles are cross-faded
_ALIGN = 16  # tile origins are multiples of this (and of the model's multiple), so down-sampling grids line up
_MB = 1024 * 1024


@dataclass
class ApplyReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (input, one-line reason)
    pairs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # a few (before, after) HWC uint8
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # not read at all (e.g. links leaving --in)
    tiled: list[Path] = field(default_factory=list)  # processed in tiles (too large for one pass)


def scan_images(in_dir: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files under ``in_dir`` (recursively, sorted, hidden files left out) and the ones skipped with why:
    symlinks that resolve outside the folder (never followed, so a link cannot smuggle in other files)."""
    root = in_dir.resolve()
    if not root.is_dir():
        raise UserError(f"{in_dir}: not a folder; pass --in a folder of images")
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in sorted(root.rglob("*")):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            if path.is_symlink() and not path.exists():
                skipped.append((path, "broken symlink (its target does not exist)"))
                continue
            if not path.is_file():
                continue
            target = path.resolve()
        except OSError as err:
            skipped.append((path, f"cannot access ({err.strerror or err})"))
            continue
        if not target.is_relative_to(root):
            skipped.append((path, f"symlink to {target}, outside the input folder (not followed)"))
            continue
        files.append(path)
    return files, skipped


def check_out_dir(in_dir: Path, out_dir: Path) -> Path:
    src, dst = in_dir.resolve(), out_dir.resolve()
    if dst == src or dst.is_relative_to(src):
        raise UserError(f"{out_dir}: the output folder must not be the input folder or inside it; choose another --out")
    if src.is_relative_to(dst):
        raise UserError(f"{out_dir}: the output folder contains the input folder; choose another --out")
    return dst


def read_image(path: Path, channels: int, max_pixels: int = 50_000_000, max_side: int | None = None) -> np.ndarray:
    """Decode ``path`` safely into uint8 HWC (C = ``channels``); raise ``ValueError`` with a one-line reason."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read ({err.strerror or err})") from None
    return read_image_bytes(data, channels, max_pixels, max_side)


def read_image_bytes(
    data: bytes, channels: int, max_pixels: int = 50_000_000, max_side: int | None = None
) -> np.ndarray:
    """Decode untrusted image bytes (JPEG/PNG/WebP) into uint8 HWC; ``ValueError`` with a one-line reason."""
    from productgen.data.decode import Rejected, decode

    try:
        decoded = decode(data, "L" if channels == 1 else "RGB", max_pixels)
    except Rejected as err:
        raise ValueError(str(err)) from None
    im = decoded.image
    if max_side is not None and max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    arr = np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy warns about read-only arrays)
    del im, decoded
    return arr[..., None] if arr.ndim == 2 else arr


PNG_FAST_PIXELS = 4_000_000  # outputs larger than this are compressed at zlib level 1: 3-4x faster, ~10% larger


def write_png(array: np.ndarray, path: Path) -> None:
    """Write ``array`` as ``path`` atomically; on failure (disk full, read-only) no partial file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    level = 1 if array.shape[0] * array.shape[1] > PNG_FAST_PIXELS else 6
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buf, format="PNG", compress_level=level)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(buf.getbuffer())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is None or str(err.filename) == str(tmp):  # name the output, not the temp file
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _batches(
    files: list[Path], read: Callable[[Path], np.ndarray], batch_size: int, report: ApplyReport
) -> Iterator[list[tuple[Path, np.ndarray]]]:
    """Readable images grouped into batches of equal size (mixed sizes form separate batches)."""
    pending: dict[tuple[int, ...], list[tuple[Path, np.ndarray]]] = {}
    for path in files:
        try:
            arr = read(path)
        except ValueError as err:
            report.failed.append((path, str(err)))
            continue
        group = pending.setdefault(arr.shape, [])
        group.append((path, arr))
        if len(group) == batch_size:
            yield pending.pop(arr.shape)
    yield from (g for g in pending.values() if g)


def _pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """Pad uint8 ``[N, C, H, W]`` at the bottom/right to multiples of ``m`` (reflection where possible)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x.float(), (0, pw, 0, ph), mode=mode).round().to(torch.uint8)


def run_batch(
    predictor: Any, arrays: list[np.ndarray], device: torch.device | str = "cpu", **options: Any
) -> list[np.ndarray]:
    """Pad a batch of equal-size HWC uint8 images to the model's multiple, run it, crop back; HWC uint8 out."""
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    h, w = x.shape[-2:]
    x = _pad_to_multiple(x, max(1, int(predictor.multiple)))
    y = predictor(x.to(device), **options).cpu()
    s = int(predictor.scale)
    y = y[..., : h * s, : w * s]
    return list(y.permute(0, 2, 3, 1).contiguous().numpy())


# ---- memory estimate --------------------------------------------------------------------------------------


def networks(predictor: Any) -> list[nn.Module]:
    """The networks a predictor holds (attributes that are modules, or dicts of them)."""
    nets: list[nn.Module] = []
    for value in vars(predictor).values():
        if isinstance(value, nn.Module):
            nets.append(value)
        elif isinstance(value, dict):
            nets.extend(v for v in value.values() if isinstance(v, nn.Module))
    return nets


_BPP_CACHE: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()  # per predictor object


def bytes_per_pixel(predictor: Any, **options: Any) -> float:
    """Working memory of one forward pass per input pixel (bytes), measured on a small probe image.

    The probe sums the outputs of every leaf module (an upper bound on what is alive at once: in inference mode
    most are freed straight away; on the default restorer the real peak is a third of the sum) and counts half
    of it, plus the float copies of input and output. Models without networks (stand-ins) count 64 bytes.
    """
    try:
        return _BPP_CACHE[predictor]
    except (KeyError, TypeError):
        pass
    nets = networks(predictor)
    c, s = int(predictor.channels), int(predictor.scale)
    side = max(64, int(predictor.multiple) * 2)
    total = [0]

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for n in nets for m in n.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            probe = torch.full((1, c, side, side), 128, dtype=torch.uint8)
            device = next((p.device for n in nets for p in n.parameters()), torch.device("cpu"))
            predictor(probe.to(device), **options)
    finally:
        for h in handles:
            h.remove()
    io_bytes = 4 * c * (1 + 2 * s * s)  # float input, float + uint8 output
    bpp = 0.5 * total[0] / (side * side) + io_bytes if nets else 64.0
    try:
        _BPP_CACHE[predictor] = bpp
    except TypeError:  # not weak-referenceable: measure again next time
        pass
    return bpp


class TileError(ValueError):
    """An image that cannot be processed within the memory budget; ``str(err)`` is the one-line reason."""


# ---- whole-image normalisation statistics for tiles ---------------------------------------------------------


def _instance_stat_norms(nets: list[nn.Module]) -> list[nn.Module]:
    """GroupNorm / InstanceNorm modules that normalise with statistics of the feature map itself."""
    out: list[nn.Module] = []
    for net in nets:
        for m in net.modules():
            if isinstance(m, nn.GroupNorm):
                out.append(m)
            elif isinstance(m, nn.modules.instancenorm._InstanceNorm):
                if not (m.track_running_stats and not m.training):
                    out.append(m)
    return out


class _StopForward(Exception):
    """Raised inside the network once the statistics a pass gathers are taken: the rest of the forward is moot."""


class _GlobalNorms:
    """Makes GroupNorm / InstanceNorm layers use statistics of the whole image while the network sees one tile.

    Norm calls are numbered in execution order within one forward. Pass k runs every tile up to call k: calls
    before k normalise with the whole-image statistics of earlier passes (``use``); call k adds the mean and
    variance of its input over the tile's *core* (the part of the tile no other tile owns) to running totals and
    stops the forward. After the pass, the totals are exactly call k's whole-image statistics, because its input
    depended only on calls already exact. A pass costs the network up to that call, so the statistics of all
    L calls cost about L/2 full passes, and a last full pass writes the output.
    """

    def __init__(self, predictor: Any) -> None:
        self.nets = networks(predictor)
        self.norms = _instance_stat_norms(self.nets)
        self.use: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.target: int | None = None  # the call whose statistics this pass gathers (None: apply only)
        self.calls = 0
        self.core: tuple[int, int, int, int] = (0, 0, 0, 0)  # y0, y1, x0, x1 in network-input pixels
        self.in_size: tuple[int, int] = (1, 1)
        self._parts: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._handles: list[Any] = []

    def __enter__(self) -> _GlobalNorms:
        for net in self.nets:
            self._handles.append(net.register_forward_pre_hook(self._record_size))
        for m in self.norms:
            m.forward = lambda x, m=m: self._forward(m, x)  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        for m in self.norms:
            del m.forward

    def _record_size(self, _m: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
            self.in_size = (int(args[0].shape[-2]), int(args[0].shape[-1]))

    def start_pass(self, target: int | None) -> None:
        self.target, self._parts = target, []

    def end_pass(self) -> None:
        """Combine the tiles' statistics of the target call (Chan et al.'s parallel variance) into ``use``."""
        n = torch.tensor([p[0] for p in self._parts], dtype=torch.float64)[:, None]
        means = torch.stack([p[1] for p in self._parts])
        m2 = torch.stack([p[2] for p in self._parts])
        mean = (n * means).sum(0) / n.sum()
        var = (m2 + n * (means - mean) ** 2).sum(0) / n.sum()
        self.use.append((mean, var))

    def _forward(self, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        j = self.calls
        self.calls += 1
        n, c = x.shape[:2]
        groups = m.num_groups if isinstance(m, nn.GroupNorm) else c
        if j == self.target:
            if n != 1:
                raise RuntimeError("tiled statistics need one image per pass")
            h, w = x.shape[-2:]
            ry, rx = h / self.in_size[0], w / self.in_size[1]
            y0, y1, x0, x1 = self.core
            region = x[..., round(y0 * ry) : round(y1 * ry), round(x0 * rx) : round(x1 * rx)]
            flat = region.reshape(groups, -1)
            var, mean = torch.var_mean(flat, dim=-1, correction=0)
            count = flat.shape[-1]
            self._parts.append((count, mean.double(), var.double() * count))
            raise _StopForward
        if j >= len(self.use):
            return type(m).forward(m, x)  # only while counting the calls
        mean, var = self.use[j]
        xg = x.reshape(n, groups, -1)
        y = (xg - mean.to(x.dtype)[None, :, None]) * torch.rsqrt(var.to(x.dtype)[None, :, None] + m.eps)
        y = y.reshape(x.shape)
        if m.affine:
            shape = (1, c) + (1,) * (x.ndim - 2)
            y = y * m.weight.view(shape) + m.bias.view(shape)
        return y


# ---- tiled inference -----------------------------------------------------------------------------------------


def _intervals(size: int, core: int, band: int) -> list[tuple[int, int]]:
    """Core intervals of ``core`` px covering ``size``; a last one shorter than ``band`` joins its neighbour
    (a cross-fade must fit inside the tiles on both sides of a seam)."""
    out = [(a, min(size, a + core)) for a in range(0, size, core)]
    if len(out) > 1 and out[-1][1] - out[-1][0] < band:
        out[-2:] = [(out[-2][0], size)]
    return out


def _ramp(lo: int, hi: int, lo_band: int, hi_band: int) -> np.ndarray:
    """Weights over [lo - lo_band/2, hi + hi_band/2): 1 inside, linear cross-fades of width *_band at the seams;
    neighbouring tiles' ramps sum to exactly 1."""
    a, b = lo - lo_band // 2, hi + hi_band // 2
    pos = np.arange(a, b, dtype=np.float64) + 0.5
    w = np.ones(b - a)
    if lo_band:
        w = np.minimum(w, np.clip((pos - (lo - lo_band / 2)) / lo_band, 0.0, 1.0))
    if hi_band:
        w = np.minimum(w, np.clip(((hi + hi_band / 2) - pos) / hi_band, 0.0, 1.0))
    return w.astype(np.float32)


def plan_tile(
    predictor: Any, height: int, width: int, memory_mb: float, bpp: float, margin: int = TILE_MARGIN
) -> int | None:
    """The tile core side (input px) that fits ``memory_mb``, or ``None`` when the whole image fits at once.
    Raises :class:`TileError` when not even the smallest tile fits."""
    budget = memory_mb * _MB
    if height * width * bpp <= budget:
        return None
    align = math.lcm(_ALIGN, max(1, int(predictor.multiple)))
    side = int(math.sqrt(budget / bpp))  # the tile with its margins
    core = (side - 2 * margin) // align * align
    # below 2 x margin the margins would cost over 4x the work of the cores: ask for more memory instead
    smallest = max(align, math.ceil(max(TILE_BLEND, 2 * margin) / align) * align)
    if core < smallest:
        need = (smallest + 2 * margin) ** 2 * bpp / _MB
        raise TileError(
            f"{width}x{height} px does not fit a memory budget of {memory_mb:g} MB even in tiles "
            f"(the smallest tile needs {need:.0f} MB); raise --memory-mb"
        )
    return core


def predict_image(
    predictor: Any,
    image: np.ndarray,
    device: torch.device | str = "cpu",
    memory_mb: float = DEFAULT_MEMORY_MB,
    tile: int | None = None,
    margin: int = TILE_MARGIN,
    blend: int = TILE_BLEND,
    exact: bool = True,
    **options: Any,
) -> np.ndarray:
    """Run ``predictor`` on one HWC uint8 image of any size within ``memory_mb``; HWC uint8 out.

    When the forward pass fits the budget (:func:`bytes_per_pixel`), this is :func:`run_batch` on the image.
    Otherwise the image (padded to the model's multiple) is cut into cores of ``tile`` px (chosen from the
    budget when not given) on a grid aligned to the model's down-sampling; each tile runs with ``margin`` px of
    context on every side (more than the restorer's receptive field), and neighbouring tiles are cross-faded
    over ``blend`` px across each seam. With ``exact`` (the default), GroupNorm / InstanceNorm layers use
    whole-image statistics gathered tile by tile first (:class:`_GlobalNorms`: about L/2 extra passes for L
    such layers), so the result equals whole-image inference up to float rounding
    (tests/faults/test_io_faults.py asserts it). ``exact=False`` normalises each tile by itself: one pass, but
    tile-dependent tones in models with such layers. Networks without them always take one pass.
    """
    if blend % 2 or margin < blend // 2:
        raise ValueError("blend must be even and margin at least blend / 2")
    h, w, c = image.shape
    s = int(predictor.scale)
    if tile is None:
        tile = plan_tile(predictor, h, w, memory_mb, bytes_per_pixel(predictor, **options), margin)
    if tile is None or (tile >= h and tile >= w):
        return run_batch(predictor, [image], device, **options)[0]
    align = math.lcm(_ALIGN, max(1, int(predictor.multiple)))
    if tile % align or margin % align or tile < blend:
        raise ValueError(f"tile and margin must be multiples of {align}, and tile at least blend")
    m = max(1, int(predictor.multiple))
    if h % m or w % m:  # the same padding as run_batch, on the HWC array (no CHW copy of the whole image)
        padded = _pad_to_multiple(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None], m)
        xp = padded[0].permute(1, 2, 0).numpy()
    else:
        xp = image
    hp, wp = xp.shape[:2]
    rows, cols = _intervals(hp, tile, blend), _intervals(wp, tile, blend)
    gn = _GlobalNorms(predictor) if exact else None

    def run_tile(r: tuple[int, int], q: tuple[int, int]) -> tuple[np.ndarray, int, int] | None:
        ty0, ty1 = max(0, r[0] - margin), min(hp, r[1] + margin)
        tx0, tx1 = max(0, q[0] - margin), min(wp, q[1] + margin)
        if gn is not None:  # the core in network-input pixels (sr models upscale before the network)
            gn.calls = 0
            gn.core = ((r[0] - ty0) * s, (r[1] - ty0) * s, (q[0] - tx0) * s, (q[1] - tx0) * s)
        try:
            piece = torch.from_numpy(np.ascontiguousarray(xp[ty0:ty1, tx0:tx1])).permute(2, 0, 1)[None].contiguous()
            out = predictor(piece.to(device), **options).cpu()
        except _StopForward:
            return None
        return out[0].permute(1, 2, 0).numpy(), ty0, tx0

    with torch.inference_mode():
        if gn is not None and gn.norms:
            with gn:
                gn.start_pass(None)
                gn.calls = 0  # count the norm calls of one forward, on a small corner (the count is size-free)
                corner = xp[: min(hp, 2 * align), : min(wp, 2 * align)]
                predictor(
                    torch.from_numpy(np.ascontiguousarray(corner)).permute(2, 0, 1)[None].contiguous().to(device),
                    **options,
                )
                n_calls = gn.calls
                for k in range(n_calls):
                    gn.start_pass(k)
                    for r in rows:
                        for q in cols:
                            run_tile(r, q)
                    gn.end_pass()
                gn.start_pass(None)
                return _blend_pass(rows, cols, hp, wp, h, w, c, s, blend, run_tile)  # type: ignore[arg-type]
        return _blend_pass(rows, cols, hp, wp, h, w, c, s, blend, run_tile)  # type: ignore[arg-type]


def _blend_pass(
    rows: list[tuple[int, int]],
    cols: list[tuple[int, int]],
    hp: int,
    wp: int,
    h: int,
    w: int,
    c: int,
    s: int,
    band: int,
    run: Callable[[tuple[int, int], tuple[int, int]], tuple[np.ndarray, int, int]],
) -> np.ndarray:
    """Run every tile once and cross-fade them into the output, one row of tiles at a time (the float
    accumulator covers one row of tiles, not the image)."""
    out = np.empty((hp * s, wp * s, c), dtype=np.uint8)
    carry: np.ndarray | None = None  # accumulated rows [prev_end - band, prev_end) of the previous tile row
    for i, r in enumerate(rows):
        top = band if i > 0 else 0
        bottom = band if i < len(rows) - 1 else 0
        wy = _ramp(r[0] * s, r[1] * s, top * s, bottom * s)
        a0 = r[0] * s - top * s // 2
        acc = np.zeros((len(wy), wp * s, c), dtype=np.float32)
        if carry is not None:
            acc[: len(carry)] += carry
        for j, q in enumerate(cols):
            left = band if j > 0 else 0
            right = band if j < len(cols) - 1 else 0
            wx = _ramp(q[0] * s, q[1] * s, left * s, right * s)
            b0 = q[0] * s - left * s // 2
            tile_out, ty0, tx0 = run(r, q)
            sub = tile_out[a0 - ty0 * s : a0 - ty0 * s + len(wy), b0 - tx0 * s : b0 - tx0 * s + len(wx)]
            acc[:, b0 : b0 + len(wx)] += sub.astype(np.float32) * (wy[:, None, None] * wx[None, :, None])
        keep = len(wy) - (bottom * s if i < len(rows) - 1 else 0)
        out[a0 : a0 + keep] = np.clip(np.rint(acc[:keep]), 0, 255).astype(np.uint8)
        carry = acc[keep:].copy() if keep < len(wy) else None
    return out[: h * s, : w * s]


def _thumbnail(a: np.ndarray, side: int = 256) -> np.ndarray:
    if max(a.shape[:2]) <= side:
        return a
    im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
    im.thumbnail((side, side), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or (
        isinstance(err, RuntimeError) and ("can't allocate memory" in str(err) or "out of memory" in str(err))
    )


def apply_to_folder(
    predictor: Any,
    in_dir: Path,
    out_dir: Path,
    batch_size: int = 16,
    max_side: int | None = None,
    device: torch.device | str = "cpu",
    show_progress: bool = True,
    keep_pairs: int = 8,
    memory_mb: float = DEFAULT_MEMORY_MB,
    max_pixels: int = 50_000_000,
    exact_tiles: bool = True,
    **options: Any,
) -> ApplyReport:
    """Run ``predictor`` over every image under ``in_dir``; outputs ``out_dir/<relative path>/<stem>.png``.

    Batches are cut to fit ``memory_mb``; an image too large for one pass goes through :func:`predict_image`
    in tiles (``exact_tiles``: its ``exact``); an image that cannot be processed even so (or runs out of memory) is reported in ``failed`` and
    the folder goes on. A failed write (disk full, read-only) stops the run with the ``OSError``: every later
    write would fail too.
    """
    from productgen.common.progress import progress

    if batch_size < 1:
        raise UserError(f"--batch-size: {batch_size} must be at least 1")
    if memory_mb <= 0:
        raise UserError(f"--memory-mb: {memory_mb:g} must be positive")
    files, skipped = scan_images(in_dir)
    dst = check_out_dir(in_dir, out_dir)
    if not files:
        raise UserError(
            f"{in_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) found"
            + (f" ({len(skipped)} skipped: {skipped[0][0]}: {skipped[0][1]})" if skipped else "")
        )
    root = in_dir.resolve()
    report = ApplyReport(skipped=skipped)
    channels = int(predictor.channels)
    bar = progress(range(len(files)), desc="images", unit="img", enabled=show_progress, total=len(files))
    bar_iter = iter(bar)
    read = lambda p: read_image(p, channels, max_pixels=max_pixels, max_side=max_side)  # noqa: E731
    n_done = 0

    def finish(path: Path, before: np.ndarray, after: np.ndarray) -> None:
        target = dst / path.relative_to(root).with_suffix(".png")
        write_png(after, target)
        report.written.append(target)
        if len(report.pairs) < keep_pairs:  # thumbnails: a grid never needs more, and photos can be huge
            report.pairs.append((_thumbnail(before), _thumbnail(after)))

    with torch.inference_mode():
        for batch in _batches(files, read, batch_size, report):
            hh, ww = batch[0][1].shape[:2]
            per_image = hh * ww * bytes_per_pixel(predictor, **options)
            fit = max(1, int(memory_mb * _MB // per_image))
            for start in range(0, len(batch), fit):
                group = batch[start : start + fit]
                try:
                    if per_image <= memory_mb * _MB:
                        outputs = run_batch(predictor, [a for _, a in group], device, **options)
                    else:
                        ((path, arr),) = group
                        outputs = [
                            predict_image(predictor, arr, device, memory_mb=memory_mb, exact=exact_tiles, **options)
                        ]
                        report.tiled.append(path)
                except TileError as err:
                    report.failed.extend((p, str(err)) for p, _ in group)
                    continue
                except (MemoryError, RuntimeError) as err:
                    if not _is_out_of_memory(err):
                        raise
                    report.failed.extend(
                        (p, f"out of memory ({hh}x{ww} px); lower --memory-mb or --batch-size") for p, _ in group
                    )
                    continue
                for (path, before), after in zip(group, outputs, strict=True):
                    finish(path, before, after)
            del batch
            while n_done < len(report.written) + len(report.failed):
                next(bar_iter, None)
                n_done += 1
    while n_done < len(files):
        next(bar_iter, None)
        n_done += 1
    return report


def before_after_grid(pairs: list[tuple[np.ndarray, np.ndarray]], path: Path, size: int = 128) -> Path | None:
    """A two-row grid (inputs above, outputs below), each image fitted into ``size`` px, written atomically."""
    if not pairs:
        return None
    from productgen.common.grids import save_png

    def fit(a: np.ndarray) -> Image.Image:
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB")
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
        return canvas

    grid = Image.new("RGB", (size * len(pairs) + 2 * (len(pairs) - 1), size * 2 + 2), (200, 200, 200))
    for i, (before, after) in enumerate(pairs):
        grid.paste(fit(before), (i * (size + 2), 0))
        grid.paste(fit(after), (i * (size + 2), size + 2))
    return save_png(grid, path)
