"""Small images for tests and benchmarks, and a decoder for what the bot sends back."""

from __future__ import annotations

import io
import random

from PIL import Image


def png(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (30, 140, 220)) -> bytes:
    """A small solid PNG: the suite's (and the benchmarks') ordinary input image."""
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def noise_png(size: tuple[int, int], seed: int = 1) -> bytes:
    """A PNG of random pixels (hardly compressible): results far over upload limits."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    """The image in ``data``, fully loaded (so a damaged file fails here)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def colour_at(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    """The bands of the pixel at ``xy`` of an image of several (RGB, RGBA...)."""
    pixel = image.getpixel(xy)
    assert isinstance(pixel, tuple), f"a {image.mode} pixel is not a tuple of bands"
    return pixel


def level_at(image: Image.Image, xy: tuple[int, int]) -> int:
    """The value of the pixel at ``xy`` of an 8-bit image of one band (L, P)."""
    assert image.mode in ("L", "P"), f"a {image.mode} pixel is not one 8-bit value"
    pixel = image.getpixel(xy)
    assert isinstance(pixel, int | float)  # an int (Pillow declares any band's type)
    return int(pixel)
