"""``/credits``, the ``/quota`` group and ``/usage``: the ledger's Discord surface.

Every moderator command checks at run time (Manage Server or a moderator role), not only
through Discord's ``default_permissions``, which server admins can change. Moderator
replies are ephemeral; every change is written to the ledger's audit log by the ledger.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Awaitable
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.ledger import MAX_CREDITS, Change, Ledger, LedgerValueError
from bot.tree import UserError
from cogs.checks import (
    NOT_A_MODERATOR,
    interaction_is_moderator,
    moderator_only,
    require_guild,
)
from cogs.owner import owner_cog

if TYPE_CHECKING:
    from bot.client import UpscaleBot

log = logging.getLogger(__name__)

PeriodChoice = Literal["daily", "weekly", "monthly", "lifetime"]
TOP_MEMBERS = 10  # rows shown in the /usage embed (the CSV has all)
MANAGE_GUILD = discord.Permissions(manage_guild=True)


def _timestamp(when: datetime | None) -> str:
    if when is None:
        return "never (lifetime limit)"
    return f"<t:{int(when.timestamp())}:R>"


def _limit_text(limit: int) -> str:
    return "no budget" if limit == 0 else f"{limit} credits"


class Credits(commands.Cog):
    """Balances, limits and reports."""

    quota = app_commands.Group(
        name="quota",
        description="Moderators: limit how many credits members may spend",
        guild_only=True,
        default_permissions=MANAGE_GUILD,
    )

    def __init__(self, bot: UpscaleBot) -> None:
        self.bot = bot

    @property
    def ledger(self) -> Ledger:
        return self.bot.ledger

    # -- /credits ----------------------------------------------------------------------

    @app_commands.command(name="credits", description="Your upscale credits this period")
    @app_commands.describe(member="Moderators: whose credits to show")
    @app_commands.guild_only()
    async def credits(
        self, interaction: discord.Interaction, member: discord.Member | None = None
    ) -> None:
        guild = require_guild(interaction)
        target = member or interaction.user
        if target.id != interaction.user.id and not interaction_is_moderator(interaction):
            raise UserError(NOT_A_MODERATOR)
        await interaction.response.defer(ephemeral=True, thinking=True)
        role_ids = [r.id for r in getattr(target, "roles", ())]
        balance = await self.ledger.balance(guild.id, target.id, role_ids)
        queued = await self.bot.queue.active_jobs(guild.id, target.id)
        who = "You have" if target.id == interaction.user.id else f"{target.mention} has"
        lines = [
            f"{who} used **{balance.used}** of **{balance.limit}** credits this "
            f"{balance.period} period ({balance.remaining} left).",
        ]
        if balance.pending:
            lines.append(f"{balance.pending} credits are reserved for jobs in progress.")
        lines.append(f"Resets: {_timestamp(balance.resets_at)}.")
        lines.append(f"Jobs queued or running: {queued}.")
        await interaction.edit_original_response(content="\n".join(lines))

    # -- /quota ------------------------------------------------------------------------

    async def _change(
        self, interaction: discord.Interaction, text: str, action: Awaitable[Change | None]
    ) -> None:
        """Defer, run the ledger change, then confirm (or explain a refused value)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            change = await action
        except LedgerValueError as exc:
            raise UserError(str(exc)) from None
        await interaction.edit_original_response(content=text)
        owner = owner_cog(self.bot)
        if owner is not None and interaction.guild_id is not None:
            await owner.log_change(interaction.guild_id, interaction.user.id, change)

    @quota.command(name="show", description="Show this server's limits and period")
    @moderator_only()
    async def quota_show(self, interaction: discord.Interaction) -> None:
        guild = require_guild(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        gs = await self.ledger.guild_settings(guild.id)
        lines = [
            f"Period: **{gs.period}**",
            f"Default member limit: **{gs.default_limit}** credits",
            f"Server budget: **{_limit_text(gs.server_budget)}**",
        ]
        if gs.role_limits:
            roles = ", ".join(f"<@&{rid}>: {lim}" for rid, lim in sorted(gs.role_limits.items()))
            lines.append(f"Role limits: {roles}")
        if gs.member_limits:
            members = ", ".join(f"<@{mid}>: {lim}" for mid, lim in sorted(gs.member_limits.items()))
            lines.append(f"Member overrides: {members}")
        total = await self.ledger.total_usage()
        if total is not None:
            lines.append(
                f"Total budget (all servers): **{total.used}/{total.limit}** credits,"
                f" resets {_timestamp(total.resets_at)}"
            )
        circuit = await self.bot.services.circuit.state()
        lines.append(
            "Upscaling service: "
            + ("**refusing the bot's account; upscales are paused**" if circuit.open else "working")
        )
        if gs.log_channel_id is not None:
            lines.append(f"Quota log: <#{gs.log_channel_id}>")
        await interaction.edit_original_response(content="\n".join(lines))

    @quota.command(name="default", description="Per-member limit for members without override")
    @app_commands.describe(limit="Credits per period")
    @moderator_only()
    async def quota_default(
        self, interaction: discord.Interaction, limit: app_commands.Range[int, 0, MAX_CREDITS]
    ) -> None:
        guild = require_guild(interaction)
        await self._change(
            interaction,
            f"Default member limit set to **{limit}** credits per period.",
            self.ledger.set_default_limit(guild.id, interaction.user.id, limit),
        )

    @quota.command(name="role", description="Limit for members holding a role")
    @app_commands.describe(role="The role", limit="Credits per period")
    @moderator_only()
    async def quota_role(
        self,
        interaction: discord.Interaction,
        role: discord.Role,
        limit: app_commands.Range[int, 0, MAX_CREDITS],
    ) -> None:
        guild = require_guild(interaction)
        await self._change(
            interaction,
            f"Members with {role.mention} may use **{limit}** credits per period "
            "(a member gets the most generous of their role limits).",
            self.ledger.set_role_limit(guild.id, interaction.user.id, role.id, limit),
        )

    @quota.command(name="user", description="Per-member override (beats role and default)")
    @app_commands.describe(member="The member", limit="Credits per period")
    @moderator_only()
    async def quota_user(
        self,
        interaction: discord.Interaction,
        member: discord.Member,
        limit: app_commands.Range[int, 0, MAX_CREDITS],
    ) -> None:
        guild = require_guild(interaction)
        await self._change(
            interaction,
            f"{member.mention} may now use **{limit}** credits per period.",
            self.ledger.set_member_limit(guild.id, interaction.user.id, member.id, limit),
        )

    @quota.command(name="clear", description="Remove a member's override")
    @moderator_only()
    async def quota_clear(self, interaction: discord.Interaction, member: discord.Member) -> None:
        guild = require_guild(interaction)
        await self._change(
            interaction,
            f"{member.mention}'s override removed; role and default limits apply.",
            self.ledger.clear_member_limit(guild.id, interaction.user.id, member.id),
        )

    @quota.command(name="clear-role", description="Remove a role's limit")
    @moderator_only()
    async def quota_clear_role(self, interaction: discord.Interaction, role: discord.Role) -> None:
        guild = require_guild(interaction)
        await self._change(
            interaction,
            f"The limit for {role.mention} was removed.",
            self.ledger.clear_role_limit(guild.id, interaction.user.id, role.id),
        )

    @quota.command(name="server", description="Total budget for the server per period")
    @app_commands.describe(limit="Credits per period for everyone together (0 = no budget)")
    @moderator_only()
    async def quota_server(
        self, interaction: discord.Interaction, limit: app_commands.Range[int, 0, MAX_CREDITS]
    ) -> None:
        guild = require_guild(interaction)
        await self._change(
            interaction,
            f"Server budget set to **{_limit_text(limit)}** per period.",
            self.ledger.set_server_budget(guild.id, interaction.user.id, limit),
        )

    @quota.command(name="period", description="The accounting period")
    @moderator_only()
    async def quota_period(self, interaction: discord.Interaction, period: PeriodChoice) -> None:
        guild = require_guild(interaction)
        await self._change(
            interaction,
            f"Accounting period set to **{period}**.",
            self.ledger.set_period(guild.id, interaction.user.id, period),
        )

    @quota.command(name="grant", description="One-off extra credits for this period")
    @app_commands.describe(amount="Credits to add (negative takes away)")
    @moderator_only()
    async def quota_grant(
        self,
        interaction: discord.Interaction,
        member: discord.Member,
        amount: app_commands.Range[int, -MAX_CREDITS, MAX_CREDITS],
    ) -> None:
        guild = require_guild(interaction)
        if amount == 0:
            raise UserError("A grant of 0 credits changes nothing.")
        verb = "granted" if amount > 0 else "taken from"
        await self._change(
            interaction,
            f"**{abs(amount)}** credits {verb} {member.mention} for this period.",
            self.ledger.grant(guild.id, interaction.user.id, member.id, amount),
        )

    @quota.command(name="reset", description="Zero a member's usage for this period")
    @moderator_only()
    async def quota_reset(self, interaction: discord.Interaction, member: discord.Member) -> None:
        guild = require_guild(interaction)
        await self._change(
            interaction,
            f"{member.mention}'s usage for this period was reset to 0.",
            self.ledger.reset_member(guild.id, interaction.user.id, member.id),
        )

    @quota.command(name="log", description="Where to post quota changes and budget alerts")
    @app_commands.describe(channel="The channel (omit to stop posting)")
    @moderator_only()
    async def quota_log(
        self, interaction: discord.Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        guild = require_guild(interaction)
        if channel is not None:
            perms = channel.permissions_for(guild.me)
            if not (perms.send_messages and perms.embed_links):
                raise UserError(
                    f"I can't post in {channel.mention}: I need the **Send Messages** and"
                    " **Embed Links** permissions there."
                )
            text = f"Quota changes and budget alerts will be posted in {channel.mention}."
        else:
            text = "Quota changes and budget alerts will no longer be posted."
        await self._change(
            interaction,
            text,
            self.ledger.set_log_channel(
                guild.id, interaction.user.id, channel.id if channel else None
            ),
        )

    # -- /usage ------------------------------------------------------------------------

    @app_commands.command(name="usage", description="Moderators: usage report with a CSV")
    @app_commands.describe(period="Which period (default: the server's own)")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @moderator_only()
    async def usage(
        self, interaction: discord.Interaction, period: PeriodChoice | None = None
    ) -> None:
        guild = require_guild(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        report = await self.ledger.usage(guild.id, period)
        rows = sorted(report.members, key=lambda m: (-m.credits, m.member_id))
        embed = discord.Embed(title=f"Upscale usage ({report.period})")
        top = rows[:TOP_MEMBERS]
        if top:
            embed.description = "\n".join(
                f"<@{m.member_id}>: {m.credits} credits, {m.upscales} upscales, "
                f"{m.failures} failed, {m.refunds} refunded"
                for m in top
            )
        else:
            embed.description = "No upscales in this period."
        t = report.totals
        embed.add_field(name="Upscales", value=str(t.upscales))
        embed.add_field(name="Credits", value=str(t.credits))
        embed.add_field(name="Failures", value=str(t.failures))
        embed.add_field(name="Refunds", value=str(t.refunds))
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["member_id", "upscales", "credits", "failures", "refunds"])
        for m in rows:
            writer.writerow([m.member_id, m.upscales, m.credits, m.failures, m.refunds])
        data = io.BytesIO(buffer.getvalue().encode())
        await interaction.edit_original_response(
            embed=embed, attachments=[discord.File(data, filename=f"usage-{guild.id}.csv")]
        )


async def setup(bot: UpscaleBot) -> None:
    await bot.add_cog(Credits(bot))
