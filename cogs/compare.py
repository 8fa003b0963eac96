"""The **Compare** button on a delivered result: before and after, side by side.

Anyone may press it. It answers ephemerally with one image rendered locally (no credit,
no call to 1min.ai). When the result was delivered the bot kept only a small crop of the
input and where it lies (:func:`bot.images.compare.input_crop`, in the database: it works after a
restart and in any process of a fleet, for at least a week); the same region of the
result is cut at click time from the result message's own attachment, which the click
carries: the file as it was posted, downloaded from Discord's CDN (bounded in size and
time, like a member's image) and cut in a thread or the image worker, never on the event
loop. Crops kept by earlier versions carry their result region and need no download.
"""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import discord

from bot import images
from bot.i18n import t
from bot.images import compare
from bot.images.download import DownloadFailed, DownloadTooLarge, download_to
from bot.images.workers import WorkerDied
from cogs.buttons import UpscaleButton

if TYPE_CHECKING:
    from bot.frontend.client import Interaction, UpscaleBot

log = logging.getLogger(__name__)

# The largest posted result Compare downloads: the most a bot may upload anywhere (a
# server at boost level 3). A posted result is at most its interaction's upload limit.
POSTED_MAX_BYTES = 100 * images.BYTES_PER_MIB


def posted_result(
    message: discord.Message | None, media_origins: frozenset[str]
) -> discord.Attachment | None:
    """The result file of a delivered result message: its first attachment, when it is
    on one of the bot's media origins (Discord's CDN) and not larger than
    :data:`POSTED_MAX_BYTES`; else None."""
    if message is None or not message.attachments:
        return None
    attachment = message.attachments[0]
    parts = urlsplit(attachment.url)
    if f"{parts.scheme}://{parts.netloc}".lower() not in media_origins:
        return None
    return attachment if attachment.size <= POSTED_MAX_BYTES else None


async def comparison(
    bot: UpscaleBot,
    crops: compare.CompareCrops,
    labels: tuple[str, str],
    posted: discord.Attachment | None,
) -> bytes | None:
    """The Compare image of ``crops``: from their stored after crop (earlier versions),
    or cut from the ``posted`` result; None when there is no posted result to cut from.

    Raises :class:`~bot.images.download.DownloadFailed`,
    :class:`~bot.images.download.DownloadTooLarge`, :class:`~bot.images.workers.WorkerDied` or
    :class:`~bot.images.compare.CompareError`.
    """
    if crops.after is not None:
        return await asyncio.to_thread(compare.render, crops, labels=labels)
    if posted is None:
        return None
    url = posted.url

    async def fetch(path: Path) -> int:
        return await download_to(bot.session, url, path, POSTED_MAX_BYTES)

    return await bot.image_workers.render_compare(crops, labels, fetch)


class CompareButton(UpscaleButton, template=r"upscale:compare:(?P<value>[0-9a-f]{32})"):
    """Shows the same region of the input (scaled 4x, nearest-neighbour) and the result."""

    action, label_key, emoji = "compare", "button.compare", "🔍"

    async def pressed(self, interaction: Interaction) -> None:
        locale = str(interaction.locale)
        await interaction.response.defer(ephemeral=True, thinking=True)
        bot = interaction.client
        crops = await bot.queue.compare_crops(self.value)
        labels = (t(locale, "compare.label_before"), t(locale, "compare.label_after"))
        posted = posted_result(interaction.message, bot.media_origins)
        try:
            image = None if crops is None else await comparison(bot, crops, labels, posted)
        except (DownloadFailed, DownloadTooLarge, WorkerDied) as exc:
            log.info("Compare for job %s failed: %s", self.value, type(exc).__name__)
            await interaction.edit_original_response(content=t(locale, "compare.failed"))
            return
        except compare.CompareError as exc:
            log.info("No comparison for job %s: %s", self.value, exc)
            image = None
        if image is None:
            await interaction.edit_original_response(content=t(locale, "compare.expired"))
            return
        await interaction.edit_original_response(
            content=t(locale, "compare.caption"),
            attachments=[discord.File(io.BytesIO(image), filename="compare.png")],
        )
