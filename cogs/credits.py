"""``/credits`` and ``/usage``: balances and reports, the ledger's Discord surface to read.

``/usage`` (and ``/credits`` for another member) is checked at run time too (Manage
Server or a moderator role), not only through Discord's ``default_permissions``, which
server admins can change; the moderators' settings are the ``/quota`` group
(:mod:`cogs.quota`). Replies are in the member's Discord language; descriptions and the
period choices are localised through :class:`bot.frontend.translator.Translator`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.failures import FailureKind
from bot.frontend.translator import cmd_text, interaction_locale, localised_choices
from bot.frontend.tree import UserError
from bot.i18n import catalogue, number, t
from bot.images.chart import NAMED_MEMBERS, usage_chart
from bot.jobs import JobFailure, JobStatus
from bot.jobs.trail import JobTrail
from bot.ledger import (
    PERIODS,
    Ledger,
    MemberUsage,
    Period,
    UsageReport,
)
from cogs import messages
from cogs.checks import NOT_A_MODERATOR, is_moderator, moderator_only, require_guild

if TYPE_CHECKING:
    from bot.frontend.client import Interaction, UpscaleBot

log = logging.getLogger(__name__)

PERIOD_CHOICES = localised_choices("period", PERIODS)
TOP_MEMBERS = 10  # rows shown in the /usage embed (the CSV has all)


def reset_text(language: str, when: datetime | None) -> str:
    """When a period ends, as a Discord relative timestamp (or "never")."""
    if when is None:
        return t(language, "credits.resets_never")
    return f"<t:{int(when.timestamp())}:R>"


class Credits(commands.Cog):
    """Balances and reports."""

    def __init__(self, bot: UpscaleBot) -> None:
        self.bot = bot

    @property
    def ledger(self) -> Ledger:
        return self.bot.ledger

    # -- /credits ----------------------------------------------------------------------

    @app_commands.command(name="credits", description=cmd_text("cmd.credits.description"))
    @app_commands.describe(member=cmd_text("cmd.credits.option.member"))
    @app_commands.guild_only()
    async def credits(self, interaction: Interaction, member: discord.Member | None = None) -> None:
        guild = require_guild(interaction)
        target = member or interaction.user
        if target.id != interaction.user.id and not is_moderator(interaction):
            raise UserError(NOT_A_MODERATOR)
        await interaction.response.defer(ephemeral=True, thinking=True)
        role_ids = [r.id for r in getattr(target, "roles", ())]
        balance = await self.ledger.balance(guild.id, target.id, role_ids)
        queued = await self.bot.queue.count_member_unfinished(guild.id, target.id)
        lang = interaction_locale(interaction)
        figures = {
            "used": balance.used,
            "count": balance.limit,
            "period": t(lang, f"period.{balance.period}"),
            "remaining": balance.remaining,
        }
        if target.id == interaction.user.id:
            lines = [t(lang, "credits.balance_self", **figures)]
        else:
            lines = [t(lang, "credits.balance_member", member=target.mention, **figures)]
        if balance.pending:
            lines.append(t(lang, "credits.reserved", count=balance.pending))
        lines.append(t(lang, "credits.resets", reset=reset_text(lang, balance.resets_at)))
        lines.append(t(lang, "credits.jobs", count=queued))
        await interaction.edit_original_response(content="\n".join(lines))

    # -- /usage ------------------------------------------------------------------------

    @app_commands.command(name="usage", description=cmd_text("cmd.usage.description"))
    @app_commands.describe(
        period=cmd_text("cmd.usage.option.period"), job=cmd_text("cmd.usage.option.job")
    )
    @app_commands.choices(period=PERIOD_CHOICES)
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @moderator_only()
    async def usage(
        self,
        interaction: Interaction,
        period: app_commands.Choice[str] | None = None,
        job: app_commands.Range[str, 1, 64] | None = None,
    ) -> None:
        guild = require_guild(interaction)
        chosen = _check_period(period.value) if period is not None else None
        await interaction.response.defer(ephemeral=True, thinking=True)
        if job is not None:
            await self._job_trail(interaction, guild.id, job)
            return
        report = await self.ledger.usage(guild.id, chosen)
        lang = interaction_locale(interaction)
        rows = report.members  # most credits first
        period_name = t(lang, f"period.{report.period}")
        embed = discord.Embed(title=t(lang, "usage.title", period=period_name))
        top = rows[:TOP_MEMBERS]
        if top:
            embed.description = "\n".join(
                t(
                    lang,
                    "usage.row",
                    member=f"<@{m.member_id}>",
                    credits=t(lang, "unit.credits", count=m.credits),
                    upscales=t(lang, "unit.upscales", count=m.upscales),
                    failed=t(lang, "usage.failed", count=m.failures),
                    refunded=t(lang, "usage.refunded", count=m.refunds),
                )
                for m in top
            )
        else:
            embed.description = t(lang, "usage.empty")
        totals = report.totals
        for key, value in (
            ("upscales", totals.upscales),
            ("credits", totals.credits),
            ("failures", totals.failures),
            ("refunds", totals.refunds),
        ):
            embed.add_field(name=t(lang, f"usage.field.{key}"), value=number(lang, value))
        data = io.BytesIO(await asyncio.to_thread(_usage_csv, rows))  # a row per member
        chart = await self._chart(report, lang, guild)
        await interaction.edit_original_response(
            embed=embed,
            attachments=[discord.File(data, filename=f"usage-{guild.id}.csv"), chart],
        )

    async def _chart(self, report: UsageReport, lang: str, guild: discord.Guild) -> discord.File:
        """The report's chart (drawn in a thread) as a PNG attachment with its alt text.

        Members are named by their display name when the bot has them cached (it asks
        Discord for nobody), else by id; the chart names only the first few.
        """
        names = {}
        for usage in report.members[:NAMED_MEMBERS]:  # most credits first
            member = guild.get_member(usage.member_id)
            if member is not None:
                names[usage.member_id] = member.display_name
        drawn = await asyncio.to_thread(usage_chart, report, lang, names, datetime.now(UTC))
        return discord.File(
            io.BytesIO(drawn.png), filename=f"usage-{guild.id}.png", description=drawn.description
        )

    async def _job_trail(self, interaction: Interaction, guild_id: int, shown: str) -> None:
        """``/usage job:<id>``: the job's trail, for a job of this server only (another
        server's job is answered exactly like one that does not exist)."""
        lang = interaction_locale(interaction)
        trail = await self.bot.queue.trail(shown)
        if trail is None or trail.job.guild_id != guild_id:
            await interaction.edit_original_response(content=t(lang, "usage.job.not_found"))
            return
        await interaction.edit_original_response(content="\n".join(trail_lines(trail, lang)))


def trail_lines(trail: JobTrail, lang: str) -> list[str]:
    """A job's trail in the moderator's language (times as Discord timestamps)."""
    job = trail.job
    lines = [
        f"**{t(lang, 'usage.job.title', job=job.id[:8])}**",
        t(
            lang,
            "usage.job.requested",
            member=f"<@{job.member_id}>",
            when=f"<t:{int(job.created_at)}:f>",
        ),
    ]
    if trail.status is JobStatus.DELIVERED:
        lines.append(t(lang, "usage.job.delivered"))
    elif trail.status is JobStatus.CANCELLED:
        lines.append(t(lang, "usage.job.cancelled"))
    elif trail.status is JobStatus.FAILED:
        kind = _failure_kind(trail.error_kind)
        reason = messages.failure_reason(JobFailure(kind)).render(lang)
        lines.append(t(lang, "usage.job.failed", reason=reason))
    else:
        stage = trail.events[-1].stage if trail.events else job.stage.value
        lines.append(t(lang, "usage.job.running", stage=_stage_name(lang, stage)))
    if trail.credits is not None:
        cost, state = trail.credits
        lines.append(t(lang, f"usage.job.credits_{state}", count=cost))
    if job.record_id:
        lines.append(t(lang, "usage.job.record", record=f"`{job.record_id}`"))
    lines.append(f"**{t(lang, 'usage.job.stages')}**")
    lines += [
        f"<t:{int(e.at)}:T> {_stage_name(lang, e.stage)} · `{e.process}`" for e in trail.events
    ]
    return lines


def _stage_name(lang: str, stage: str) -> str:
    key = "usage.job.stage." + stage.replace(" ", "_")
    return t(lang, key) if key in catalogue() else stage


def _failure_kind(value: str | None) -> FailureKind:
    try:
        return FailureKind(value or FailureKind.ERROR)
    except ValueError:
        return FailureKind.ERROR


def _check_period(value: str) -> Period:
    """A period choice as the ledger's type (Discord only sends the offered choices)."""
    for period in PERIODS:
        if period == value:
            return period
    raise UserError("quota.invalid.period")


def _usage_csv(members: list[MemberUsage]) -> bytes:
    """The /usage report's CSV attachment: one row per member, most credits first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["member_id", "upscales", "credits", "failures", "refunds"])
    writer.writerows([m.member_id, m.upscales, m.credits, m.failures, m.refunds] for m in members)
    return buffer.getvalue().encode()


async def setup(bot: UpscaleBot) -> None:
    await bot.add_cog(Credits(bot))
