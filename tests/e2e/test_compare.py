"""The Compare button on a delivered result, through the real bot and the emulators."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops

from bot.compare import GUTTER
from tests.emulators.discord import find_button
from tests.harness import running_bot
from tests.support.images import decode


def textured_png(size: tuple[int, int] = (400, 300), seed: int = 7) -> bytes:
    """A picture with detail in one corner and flat colour elsewhere."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, (40, 90, 160))
    for x in range(size[0] // 2, size[0]):
        for y in range(size[1] // 2):
            image.putpixel((x, y), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def is_compare(component: dict[str, Any]) -> bool:
    return str(component.get("custom_id", "")).startswith("upscale:compare:")


def halves(image: Image.Image, after_size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    width, height = after_size
    band = image.height - height
    before = image.crop((0, band, width, band + height))
    after = image.crop((width + GUTTER, band, 2 * width + GUTTER, band + height))
    return before, after


async def test_compare_shows_the_same_region_before_and_after(tmp_path: Path) -> None:
    """Compare answers ephemerally with one decodable image whose left half is the
    input's region scaled 4x with nearest-neighbour and whose right half is the same
    region of the delivered result; the region has detail; no credit, no API call."""
    data = textured_png()
    async with running_bot(tmp_path) as h:
        it, final = await h.upscale(data, "detail.png")
        result = decode(it.file(final)[1]).convert("RGB")
        button = find_button(final, is_compare)
        calls = sum(h.onemin.calls.values())
        click = await h.discord.click(final, button["custom_id"], member=h.discord.bob)
        answer = await click.final()
        assert answer["flags"] & 64  # ephemeral
        image = decode(click.file(answer)[1]).convert("RGB")
        job_id = button["custom_id"].rsplit(":", 1)[1]
        crops = await h.services.queue.compare_crops(job_id)
        assert crops is not None
        left, top, right, bottom = crops.box
        # the detailed corner (right half, top half), not the flat rest
        assert (left + right) / 2 >= 200 and (top + bottom) / 2 <= 150
        after_size = ((right - left) * 4, (bottom - top) * 4)
        before_half, after_half = halves(image, after_size)
        source = Image.open(io.BytesIO(data)).convert("RGB").crop(crops.box)
        expected_before = source.resize(after_size, Image.Resampling.NEAREST)
        assert ImageChops.difference(before_half, expected_before).getbbox() is None
        expected_after = result.crop((left * 4, top * 4, right * 4, bottom * 4))
        assert ImageChops.difference(after_half, expected_after).getbbox() is None
        assert sum(h.onemin.calls.values()) == calls
        assert await h.balance(h.discord.bob.user.id) == (0, 0)


async def test_compare_works_after_a_restart(tmp_path: Path) -> None:
    """On a freshly started bot, Compare on a result delivered before the restart still
    answers with the comparison image."""
    async with running_bot(tmp_path) as h:
        _, final = await h.upscale(textured_png(), "detail.png")
        custom_id = find_button(final, is_compare)["custom_id"]
    async with running_bot(tmp_path) as h:
        old = h.discord.user_message(h.discord.me, content="an older result")
        old["components"] = [
            {
                "type": 1,
                "components": [{"type": 2, "style": 2, "label": "Compare", "custom_id": custom_id}],
            }
        ]
        click = await h.discord.click(old, custom_id)
        answer = await click.final()
        assert decode(click.file(answer)[1]).width > 0
