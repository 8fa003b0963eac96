"""Fixtures shared by the whole suite."""

from __future__ import annotations

import io

from PIL import Image


def png(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (30, 140, 220)) -> bytes:
    """A small solid PNG: the suite's (and the benchmarks') ordinary input image."""
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()
