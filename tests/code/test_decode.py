"""Decoding every supported format and mode, and refusing every kind of bad bytes with a reason."""

import numpy as np
import pytest
from PIL import Image

from productgen.data.decode import Rejected, decode, resize_pad
from tests.conftest import encode, png_with_size, product_image


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [
        ("PNG", "RGB"),
        ("JPEG", "RGB"),
        ("WEBP", "RGB"),
        ("PNG", "RGBA"),
        ("PNG", "L"),
        ("PNG", "LA"),
        ("PNG", "P"),
        ("JPEG", "CMYK"),
        ("JPEG", "L"),
        ("WEBP", "RGBA"),
        ("PNG", "1"),
    ],
)
@pytest.mark.parametrize("target", ["RGB", "L"])
def test_supported_modes_normalise_to_target(fmt: str, mode: str, target: str) -> None:
    im = product_image(3, (20, 16)).convert(mode)
    dec = decode(encode(im, fmt), target, max_pixels=10_000)
    assert dec.image.mode == target
    assert (dec.width, dec.height) == (20, 16)
    assert dec.mode == mode or (fmt == "WEBP")  # WebP may store RGB as RGBA and vice versa


def test_transparency_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = np.asarray(decode(encode(rgba, "PNG"), "RGB", 1000).image)
    assert tuple(out[4, 4]) == (255, 255, 255)
    assert tuple(out[0, 0]) == (0, 0, 255)


def test_palette_with_transparency_is_composited_on_white() -> None:
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    p.putpixel((1, 1), 1)
    data = encode(p, "PNG", transparency=0)
    out = np.asarray(decode(data, "RGB", 1000).image)
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (200, 10, 10)


def test_16_bit_png_scales_full_range() -> None:
    arr = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(__import__("io").BytesIO(data)).mode.startswith("I")
    out = np.asarray(decode(data, "L", 100).image)
    assert out.tolist() == [[0, 255], [128, 1]]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty file"),
        (b"hello, I am text\n", "not a JPEG, PNG or WebP"),
        (encode(product_image(1), "GIF"), "not a JPEG, PNG or WebP"),
        (encode(product_image(1), "BMP"), "not a JPEG, PNG or WebP"),
        (png_with_size(100_000, 100_000), "decompression bomb"),
        (png_with_size(3000, 3000), "over the data.max_pixels limit"),
    ],
)
def test_bad_bytes_are_rejected_with_reason(data: bytes, fragment: str) -> None:
    with pytest.raises(Rejected) as err:
        decode(data, "RGB", max_pixels=1_000_000)
    assert fragment in str(err.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_files_are_rejected(fmt: str) -> None:
    data = encode(product_image(2, (64, 48)), fmt, **({"quality": 90} if fmt != "PNG" else {}))
    with pytest.raises(Rejected):
        decode(data[: len(data) // 2], "RGB", max_pixels=1_000_000)


def test_resize_pad_keeps_aspect_and_pads_white() -> None:
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    out = np.asarray(resize_pad(im, 28))
    assert out.shape == (28, 28, 3)
    assert (out[0] == 255).all() and (out[-1] == 255).all()  # top/bottom margins are white
    assert (out[14] == 0).all()  # the product fills the full width
