"""The /usage reply's chart end to end: a PNG attachment with alt text, beside the CSV."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

from bot.i18n import t
from bot.images.chart import HEIGHT, WIDTH
from tests.harness import Harness, running_bot
from tests.support.images import png


async def usage(h: Harness, locale: str = "en-US") -> tuple[dict[str, Any], dict[str, Any]]:
    """Run /usage as the moderator: the final reply, and the payload of the edit that
    carried its files (with each attachment's description)."""
    it = await h.discord.slash("usage", member=h.discord.moderator, locale=locale)
    final = await it.final()
    edit = next(c for c in reversed(h.discord.calls) if c.files and c.method == "PATCH")
    return final, edit.json


def chart_of(final: dict[str, Any]) -> Image.Image:
    data = next(d for n, d in final["_files"] if n.endswith(".png"))
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


async def test_usage_carries_the_chart_with_alt_text_beside_the_csv(tmp_path: Path) -> None:
    """After an upscale, /usage attaches the CSV and a chart of the stated size, whose
    attachment has a description (alt text)."""
    async with running_bot(tmp_path) as h:
        await h.upscale(png())
        await h.idle()
        final, payload = await usage(h)
    names = [name for name, _ in final["_files"]]
    assert names[0].endswith(".csv") and names[1].endswith(".png")
    assert chart_of(final).size == (WIDTH, HEIGHT)
    described = {a["filename"]: a.get("description") for a in payload["attachments"]}
    assert described[names[1]].startswith("Bar chart of credits per day")


async def test_usage_without_use_shows_the_empty_chart(tmp_path: Path) -> None:
    """A period nobody used: still a chart, and its alt text says it is empty."""
    async with running_bot(tmp_path) as h:
        final, payload = await usage(h)
    assert chart_of(final).size == (WIDTH, HEIGHT)
    described = [a.get("description") or "" for a in payload["attachments"]]
    assert any(d.startswith("Empty chart: no upscales from ") for d in described)


async def test_the_charts_alt_text_is_in_the_moderators_language(tmp_path: Path) -> None:
    """A German moderator's chart is described in German."""
    async with running_bot(tmp_path) as h:
        final, payload = await usage(h, locale="de")
    start = t("de", "usage.chart.description_empty", first="X", last="Y").split("X")[0]
    described = [a.get("description") or "" for a in payload["attachments"]]
    assert any(d.startswith(start) for d in described), described
    assert chart_of(final).size == (WIDTH, HEIGHT)
