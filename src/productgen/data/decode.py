"""Safe decoding of untrusted catalog images into clean RGB or L pixels.

Seller uploads are messy: empty files, truncated downloads, text saved as ``.jpg``, decompression bombs,
CMYK JPEGs, 16-bit PNGs, transparent PNGs. Every failure becomes a :class:`Rejected` with a one-line reason
for the quarantine list; nothing here raises anything else for bad bytes.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
WHITE = 255
# Declared pixels per byte of file above which a large image is refused as a decompression bomb. The pixel
# count of a file is right (a 7000x7000 PNG declares 49,000,000 pixels, under a 50 MP data.max_pixels), but a
# 47 KB file cannot hold a photo of that size: camera photos and product shots take well under 50 pixels per
# byte (JPEG about 1-10, PNG on white about 5-50), while a flat 7000x7000 PNG takes 300-3500. Images below
# RATIO_MIN_PIXELS are exempt (small flat graphics are harmless).
MAX_PIXELS_PER_BYTE = 250
RATIO_MIN_PIXELS = 4_000_000


class Rejected(Exception):
    """A source file that cannot become a training image; ``str(err)`` is the reason shown to the user."""


@dataclass(frozen=True)
class Decoded:
    """A decoded image normalised to the target mode, plus what the source file declared."""

    image: Image.Image
    width: int
    height: int
    mode: str
    format: str


def _to_8bit(im: Image.Image) -> Image.Image:
    """16- and 32-bit grayscale to 8 bits by scaling the full 16-bit range (not by clipping)."""
    arr = np.asarray(im)
    if im.mode == "F":
        arr8 = np.clip(arr, 0, 255)
    else:
        arr8 = np.clip(arr.astype(np.int64), 0, 65535) / 257.0
    return Image.fromarray(np.round(arr8).astype(np.uint8), mode="L")


def normalise_mode(im: Image.Image, target: str) -> Image.Image:
    """Convert any PIL mode to ``target`` ("RGB" or "L"), compositing transparency onto white."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        im = _to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (WHITE, WHITE, WHITE, 255))
        im = Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode != target:
        im = im.convert(target)
    return im


def decode(data: bytes, target_mode: str, max_pixels: int) -> Decoded:
    """Decode ``data`` (the whole file) or raise :class:`Rejected` with the reason."""
    if not data:
        raise Rejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = im.size
            if width * height > max_pixels:
                raise Rejected(
                    f"declares {width}x{height} pixels, over the data.max_pixels limit of {max_pixels:,} "
                    "(possible decompression bomb)"
                )
            if width * height > RATIO_MIN_PIXELS and width * height > MAX_PIXELS_PER_BYTE * len(data):
                raise Rejected(
                    f"declares {width}x{height} pixels in only {len(data):,} bytes ({width * height // len(data):,} "
                    f"pixels per byte; photos take under {MAX_PIXELS_PER_BYTE}): possible decompression bomb"
                )
            if width < 1 or height < 1:
                raise Rejected(f"declares an empty size {width}x{height}")
            mode, fmt = im.mode, im.format or "?"
            im.load()
            im = ImageOps.exif_transpose(im)
    except Rejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise Rejected(f"decompression bomb refused ({err})") from None
    except UnidentifiedImageError:
        raise Rejected("not a JPEG, PNG or WebP image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as err:
        msg = str(err) or type(err).__name__
        if "truncated" in msg:
            raise Rejected(f"truncated image data ({msg})") from None
        raise Rejected(f"corrupt image data ({msg})") from None
    except Exception as err:  # decoders raise oddities on hostile input; never crash the whole prepare
        raise Rejected(f"cannot decode ({type(err).__name__}: {err})") from None
    try:
        image = normalise_mode(im, target_mode)
    except Exception as err:
        raise Rejected(f"cannot convert mode {mode} to {target_mode} ({err})") from None
    return Decoded(image=image, width=width, height=height, mode=mode, format=fmt)


def resize_pad(im: Image.Image, resolution: int, fill: int = WHITE) -> Image.Image:
    """Scale so the longer side is ``resolution`` (antialiased) and centre on a square ``fill`` canvas.

    Products keep their aspect ratio and a consistent scale; the white margin matches catalog photos.
    """
    w, h = im.size
    if (w, h) != (resolution, resolution):
        scale = resolution / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        im = im.resize(size, Image.Resampling.LANCZOS)
    if im.size == (resolution, resolution):
        return im
    colour = fill if im.mode == "L" else (fill, fill, fill)
    canvas = Image.new(im.mode, (resolution, resolution), colour)
    canvas.paste(im, ((resolution - im.size[0]) // 2, (resolution - im.size[1]) // 2))
    return canvas
