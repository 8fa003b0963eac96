"""/upscale end to end: the real bot against the Discord and 1min.ai emulators."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import decode, png, running_bot


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
async def test_upscale_delivers_a_4x_image_in_each_format(tmp_path: Path, fmt: str) -> None:
    """The deferred reply is edited with a file of the chosen format at 4x the input size."""
    async with running_bot(tmp_path) as h:
        it, final = await h.upscale(png((80, 60)), fmt=fmt)
        assert it.ack_type == 5
        _, data = it.file(final)
        image = decode(data)
        assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
        assert image.size == (320, 240)
        assert await h.balance(h.discord.alice.user.id) == (1, 0)
