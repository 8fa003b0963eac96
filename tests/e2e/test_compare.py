"""The Compare button on a delivered result, through the real bot and the emulators."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops

from bot.i18n import t
from bot.images.compare import GUTTER
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


FITTED_LIMIT = 1024 * 1024 + 64 * 1024  # an upload limit that makes the bot fit the result


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
    answers with the comparison image: the region kept in the database, beside the same
    region of the result message's attachment (as Discord serves it)."""
    async with running_bot(tmp_path) as h:
        it, final = await h.upscale(textured_png(), "detail.png")
        custom_id = find_button(final, is_compare)["custom_id"]
        filename, posted = it.file(final)
    async with running_bot(tmp_path) as h:
        old = h.discord.user_message(
            h.discord.me,
            content="an older result",
            attachments=[h.discord.attachment(posted, filename)],
        )
        old["components"] = [
            {
                "type": 1,
                "components": [{"type": 2, "style": 2, "label": "Compare", "custom_id": custom_id}],
            }
        ]
        click = await h.discord.click(old, custom_id)
        answer = await click.final()
        crops = await h.services.queue.compare_crops(custom_id.rsplit(":", 1)[1])
        assert crops is not None
        left, top, right, bottom = crops.box
        after_size = ((right - left) * 4, (bottom - top) * 4)
        _, after_half = halves(decode(click.file(answer)[1]).convert("RGB"), after_size)
        expected = decode(posted).convert("RGB").crop((left * 4, top * 4, right * 4, bottom * 4))
        assert ImageChops.difference(after_half, expected).getbbox() is None


async def test_compare_on_a_message_without_its_file_says_it_is_no_longer_available(
    tmp_path: Path,
) -> None:
    """When the result message no longer carries its file, Compare answers (ephemerally)
    that the comparison is no longer available, with no image."""
    async with running_bot(tmp_path) as h:
        _, final = await h.upscale(textured_png(), "detail.png")
        custom_id = find_button(final, is_compare)["custom_id"]
        bare = h.discord.user_message(h.discord.me, content="a result without its file")
        bare["components"] = final["components"]
        click = await h.discord.click(bare, custom_id)
        answer = await click.final()
        assert answer["flags"] & 64
        assert answer["content"] == t("en-US", "compare.expired")
        assert not answer.get("attachments")


async def test_compare_says_to_try_again_when_the_posted_file_cannot_be_fetched(
    tmp_path: Path,
) -> None:
    """When Discord's CDN does not serve the result's file, Compare answers that it could
    not be made just now (not that it expired), and logs no error."""
    async with running_bot(tmp_path) as h:
        _, final = await h.upscale(textured_png(), "detail.png")
        button = find_button(final, is_compare)
        h.discord.attachment_url_lifetime = -1.0  # every CDN URL made now is expired
        message = h.discord.channel_messages()[-1]
        message["attachments"] = [h.discord.attachment(b"gone", "detail_4x.png")]
        click = await h.discord.click(message, button["custom_id"])
        answer = await click.final()
        assert answer["content"] == t("en-US", "compare.failed")
        assert not answer.get("attachments")


async def test_compare_of_a_fitted_result_shows_the_region_as_it_was_posted(
    tmp_path: Path,
) -> None:
    """A result fitted to a small upload limit (re-encoded as lossy WebP) still has
    Compare; its right half is the same region cut from the file as it was posted (the
    WebP's pixels), at that file's own scale."""
    data = textured_png((400, 300), seed=11)
    async with running_bot(tmp_path) as h:
        it, final = await h.upscale(data, "detail.png", upload_limit=FITTED_LIMIT)
        link_labels = [
            c.get("label") for row in final["components"] for c in row["components"] if c.get("url")
        ]
        assert t("en-US", "button.full_size") in link_labels  # it was fitted
        posted = decode(it.file(final)[1]).convert("RGB")
        button = find_button(final, is_compare)
        click = await h.discord.click(final, button["custom_id"])
        answer = await click.final()
        crops = await h.services.queue.compare_crops(button["custom_id"].rsplit(":", 1)[1])
        assert crops is not None
        left, top, right, bottom = (
            (2 * edge * full + base) // (2 * base)
            for edge, full, base in zip(
                crops.box, (*posted.size, *posted.size), (400, 300, 400, 300), strict=True
            )
        )
        expected = posted.crop((left, top, right, bottom))
        _, after_half = halves(decode(click.file(answer)[1]).convert("RGB"), expected.size)
        assert ImageChops.difference(after_half, expected).getbbox() is None
