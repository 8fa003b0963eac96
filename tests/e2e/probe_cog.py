"""A test-only cog for the harness's own tests and the ack benchmark.

Its commands exercise the Discord surface without the upscaler: defer then edit with a
file, an attachment download, every upload route, a message context menu, persistent
buttons (reply, update the message, defer then edit it), the bot's channel permissions,
and deliberate misbehaviour for the guard tests. ``/probe`` records HTTP errors from
Discord in ``Probe.http_errors`` (status, code) instead of raising them, so tests can
assert on them; ``/probe-late`` lets them escape to the command tree's error handler,
which logs at ERROR.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands
from PIL import Image

if TYPE_CHECKING:
    from bot.frontend.client import Interaction

log = logging.getLogger(__name__)


def tiny_image(fmt: str = "png") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, fmt.upper())
    return out.getvalue()


def blob(name: str) -> discord.File:
    """A small file whose bytes are its name (easy to assert on)."""
    return discord.File(io.BytesIO(name.encode()), filename=name)


class ProbeView(discord.ui.View):
    """A persistent view: reply (type 4), update the message (7), defer then edit it (6)."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Press", custom_id="probe:press")
    async def press(self, interaction: Interaction, _: discord.ui.Button[ProbeView]) -> None:
        await interaction.response.send_message(f"pressed by {interaction.user.id}", ephemeral=True)

    @discord.ui.button(label="Rename", custom_id="probe:rename")
    async def rename(self, interaction: Interaction, _: discord.ui.Button[ProbeView]) -> None:
        await interaction.response.edit_message(content=f"renamed by {interaction.user.id}")

    @discord.ui.button(label="Later", custom_id="probe:later")
    async def later(self, interaction: Interaction, _: discord.ui.Button[ProbeView]) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content="edited later", view=None)


class Probe(commands.Cog):
    """Commands that only the tests use."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.http_errors: list[tuple[int, int]] = []
        self.menu = app_commands.ContextMenu(name="Probe message", callback=self.probe_message)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)
        self.bot.add_view(ProbeView())

    async def _guarded(self, coro: Awaitable[object]) -> None:
        try:
            await coro
        except discord.HTTPException as exc:
            self.http_errors.append((exc.status, exc.code))

    @app_commands.command(name="probe", description="Defer, wait, then edit with a file")
    @app_commands.describe(
        delay="Seconds to wait before the edit",
        size="File size in bytes (zeros instead of an image)",
        ack_after="Seconds to wait before the defer",
        fmt="Image format of the file",
    )
    async def probe(
        self,
        interaction: Interaction,
        delay: float = 0.0,
        size: app_commands.Range[int, 0, 200_000_000] = 0,
        ack_after: float = 0.0,
        fmt: Literal["png", "jpeg"] = "png",
    ) -> None:
        if ack_after:
            await asyncio.sleep(ack_after)
        try:
            await interaction.response.defer(thinking=True)
        except discord.HTTPException as exc:
            self.http_errors.append((exc.status, exc.code))
            return
        if delay:
            await asyncio.sleep(delay)
        data = b"\0" * size if size else tiny_image(fmt)
        name = "blob.bin" if size else f"probe.{fmt}"
        await self._guarded(
            interaction.edit_original_response(
                content="done", attachments=[discord.File(io.BytesIO(data), filename=name)]
            )
        )

    @app_commands.command(name="probe-late", description="Wait, then defer without a safety net")
    @app_commands.describe(wait="Seconds to wait before the defer")
    async def probe_late(self, interaction: Interaction, wait: float) -> None:
        await asyncio.sleep(wait)
        await interaction.response.defer(thinking=True)  # a late ack raises NotFound here
        await interaction.edit_original_response(content="done")

    @app_commands.command(name="probe-download", description="Download an attachment")
    async def probe_download(self, interaction: Interaction, image: discord.Attachment) -> None:
        await interaction.response.defer(thinking=True)
        try:
            data = await image.read()
        except discord.HTTPException as exc:
            self.http_errors.append((exc.status, exc.code))
            await interaction.edit_original_response(content="download failed")
            return
        digest = hashlib.sha256(data).hexdigest()
        await interaction.edit_original_response(content=f"{len(data)} bytes {digest}")

    @app_commands.command(name="probe-routes", description="Use every message route once")
    async def probe_routes(self, interaction: Interaction) -> None:
        channel = interaction.channel
        assert isinstance(channel, discord.TextChannel)
        await interaction.response.send_message("callback", file=blob("callback.txt"))
        await interaction.edit_original_response(content="callback edited")
        await interaction.followup.send("followup", file=blob("followup.txt"))
        await interaction.followup.send("followup json")
        posted = await channel.send("channel", file=blob("channel.txt"))
        fetched = await channel.fetch_message(posted.id)
        await fetched.edit(content="channel edited", attachments=[blob("edited.txt")])
        await fetched.delete()
        await channel.send("channel json")

    @app_commands.command(name="probe-perms", description="Report the bot's Attach Files")
    async def probe_perms(self, interaction: Interaction) -> None:
        channel = interaction.channel
        assert isinstance(channel, discord.TextChannel) and interaction.guild is not None
        cached = channel.permissions_for(interaction.guild.me).attach_files
        await interaction.response.send_message(
            f"app={interaction.app_permissions.attach_files} cached={cached}"
        )

    @app_commands.command(name="probe-delete", description="Reply, delete it, fetch it")
    async def probe_delete(self, interaction: Interaction) -> None:
        await interaction.response.send_message("short-lived")
        await interaction.delete_original_response()
        await self._guarded(interaction.original_response())

    @app_commands.command(name="probe-button", description="Post a message with a button")
    async def probe_button(self, interaction: Interaction) -> None:
        await interaction.response.send_message("press it", view=ProbeView())

    @app_commands.command(name="probe-error", description="Log at ERROR (guard test)")
    async def probe_error(self, interaction: Interaction) -> None:
        await interaction.response.send_message("logging an error")
        log.error("deliberate error for the guard test")

    @app_commands.command(name="probe-unknown", description="Call an endpoint the emulator lacks")
    async def probe_unknown(self, interaction: Interaction) -> None:
        await interaction.response.send_message("calling")
        assert interaction.guild_id is not None
        await self._guarded(self.bot.fetch_guild(interaction.guild_id))  # GET /guilds/{id}

    async def probe_message(self, interaction: Interaction, message: discord.Message) -> None:
        images = [e.image.url for e in message.embeds if e.image.url]
        await interaction.response.send_message(
            f"{len(message.attachments)} attachments: "
            + ",".join(a.filename for a in message.attachments)
            + f"; {len(images)} embed images"
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Probe(bot))
