"""``/credits``, the ``/quota`` group and ``/usage``: the ledger's Discord surface.

Every moderator command checks at run time (Manage Server or a moderator role), not only
through Discord's ``default_permissions``, which server admins can change. Moderator
replies are ephemeral; every change is written to the ledger's audit log by the ledger.
Replies are in the member's Discord language; descriptions and the period choices are
localised through :class:`bot.frontend.translator.Translator`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.failures import FailureKind
from bot.frontend.translator import cmd_text, interaction_locale, localised_choices
from bot.frontend.tree import UserError
from bot.i18n import Text, catalogue, number, t
from bot.images.chart import NAMED_MEMBERS, usage_chart
from bot.jobs import JobFailure, JobStatus
from bot.jobs.trail import JobTrail
from bot.ledger import (
    MAX_CREDITS,
    PERIODS,
    Change,
    Ledger,
    LedgerValueError,
    MemberUsage,
    Period,
    QuotaChanged,
    UsageReport,
)
from cogs import messages
from cogs.checks import NOT_A_MODERATOR, is_moderator, moderator_only, require_guild

if TYPE_CHECKING:
    from bot.frontend.client import Interaction, UpscaleBot

log = logging.getLogger(__name__)

PERIOD_CHOICES = localised_choices("period", PERIODS)
# ``bot.dispatch`` event for every moderator change, with its QuotaChanged; the listener
# is ``on_quota_change`` (the Owner cog posts it in the server's quota log).
QUOTA_CHANGE_EVENT = "quota_change"
TOP_MEMBERS = 10  # rows shown in the /usage embed (the CSV has all)
MANAGE_GUILD = discord.Permissions(manage_guild=True)


def _reset(language: str, when: datetime | None) -> str:
    if when is None:
        return t(language, "credits.resets_never")
    return f"<t:{int(when.timestamp())}:R>"


def _budget(language: str, limit: int) -> str:
    if limit == 0:
        return t(language, "quota.no_budget")
    return t(language, "unit.credits", count=limit)


def _period(period: str) -> Text:
    return Text.of(f"period.{period}")


class Credits(commands.Cog):
    """Balances, limits and reports."""

    quota = app_commands.Group(
        name="quota",
        description=cmd_text("cmd.quota.description"),
        guild_only=True,
        default_permissions=MANAGE_GUILD,
    )

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
        queued = await self.bot.queue.active_jobs(guild.id, target.id)
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
        lines.append(t(lang, "credits.resets", reset=_reset(lang, balance.resets_at)))
        lines.append(t(lang, "credits.jobs", count=queued))
        await interaction.edit_original_response(content="\n".join(lines))

    # -- /quota ------------------------------------------------------------------------

    async def _change(
        self,
        interaction: Interaction,
        text: Text,
        action: Callable[..., Awaitable[Change | None]],
        *args: object,
    ) -> None:
        """Defer, run the ledger change ``action(guild_id, moderator_id, *args)``, then
        confirm (or explain a refused value in the ledger's own words, a
        ``quota.invalid.*`` catalogue text)."""
        guild = require_guild(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            change = await action(guild.id, interaction.user.id, *args)
        except LedgerValueError as exc:
            raise UserError(exc.text) from None
        await interaction.edit_original_response(
            content=text.render(interaction_locale(interaction))
        )
        if interaction.guild_id is not None and change is not None:
            # Whoever keeps the quota log (the Owner cog) listens for this event.
            changed = QuotaChanged(interaction.guild_id, interaction.user.id, change)
            self.bot.dispatch(QUOTA_CHANGE_EVENT, changed)

    @quota.command(name="show", description=cmd_text("cmd.quota.show.description"))
    @moderator_only()
    async def quota_show(self, interaction: Interaction) -> None:
        guild = require_guild(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        gs = await self.ledger.guild_settings(guild.id)
        lang = interaction_locale(interaction)
        lines = [
            t(lang, "quota.show.period", period=t(lang, f"period.{gs.period}")),
            t(lang, "quota.show.default_limit", count=gs.default_limit),
            t(lang, "quota.show.server_budget", budget=_budget(lang, gs.server_budget)),
        ]
        if gs.role_limits:
            roles = ", ".join(
                f"<@&{rid}>: {number(lang, lim)}" for rid, lim in sorted(gs.role_limits.items())
            )
            lines.append(t(lang, "quota.show.role_limits", roles=roles))
        if gs.member_limits:
            members = ", ".join(
                f"<@{mid}>: {number(lang, lim)}" for mid, lim in sorted(gs.member_limits.items())
            )
            lines.append(t(lang, "quota.show.member_overrides", members=members))
        total = await self.ledger.total_usage()
        if total is not None:
            value = t(
                lang,
                "quota.show.total_budget_value",
                used=total.used,
                limit=total.limit,
                reset=_reset(lang, total.resets_at),
            )
            name = t(lang, "quota.show.total_budget")
            lines.append(t(lang, "quota.show.line", name=name, value=value))
        circuit = await self.bot.circuit.state()
        state = t(
            lang, "quota.show.service_state.open" if circuit.open else "quota.show.service_state.ok"
        )
        if circuit.open:
            state = f"**{state}**"
        name = t(lang, "quota.show.service_state.name")
        lines.append(t(lang, "quota.show.line", name=name, value=state))
        if gs.log_channel_id is not None:
            lines.append(t(lang, "quota.show.log_channel", channel=f"<#{gs.log_channel_id}>"))
        await interaction.edit_original_response(content="\n".join(lines))

    @quota.command(name="default", description=cmd_text("cmd.quota.default.description"))
    @app_commands.describe(limit=cmd_text("cmd.quota.default.option.limit"))
    @moderator_only()
    async def quota_default(
        self, interaction: Interaction, limit: app_commands.Range[int, 0, MAX_CREDITS]
    ) -> None:
        await self._change(
            interaction,
            Text.of("quota.default.done", count=limit),
            self.ledger.set_default_limit,
            limit,
        )

    @quota.command(name="role", description=cmd_text("cmd.quota.role.description"))
    @app_commands.describe(
        role=cmd_text("cmd.quota.role.option.role"), limit=cmd_text("cmd.quota.role.option.limit")
    )
    @moderator_only()
    async def quota_role(
        self,
        interaction: Interaction,
        role: discord.Role,
        limit: app_commands.Range[int, 0, MAX_CREDITS],
    ) -> None:
        await self._change(
            interaction,
            Text.of("quota.role.done", role=role.mention, count=limit),
            self.ledger.set_role_limit,
            role.id,
            limit,
        )

    @quota.command(name="user", description=cmd_text("cmd.quota.user.description"))
    @app_commands.describe(
        member=cmd_text("cmd.quota.user.option.member"),
        limit=cmd_text("cmd.quota.user.option.limit"),
    )
    @moderator_only()
    async def quota_user(
        self,
        interaction: Interaction,
        member: discord.Member,
        limit: app_commands.Range[int, 0, MAX_CREDITS],
    ) -> None:
        await self._change(
            interaction,
            Text.of("quota.user.done", member=member.mention, count=limit),
            self.ledger.set_member_limit,
            member.id,
            limit,
        )

    @quota.command(name="clear", description=cmd_text("cmd.quota.clear.description"))
    @app_commands.describe(member=cmd_text("cmd.quota.clear.option.member"))
    @moderator_only()
    async def quota_clear(self, interaction: Interaction, member: discord.Member) -> None:
        await self._change(
            interaction,
            Text.of("quota.clear.done", member=member.mention),
            self.ledger.clear_member_limit,
            member.id,
        )

    @quota.command(name="clear-role", description=cmd_text("cmd.quota.clear_role.description"))
    @app_commands.describe(role=cmd_text("cmd.quota.clear_role.option.role"))
    @moderator_only()
    async def quota_clear_role(self, interaction: Interaction, role: discord.Role) -> None:
        await self._change(
            interaction,
            Text.of("quota.clear_role.done", role=role.mention),
            self.ledger.clear_role_limit,
            role.id,
        )

    @quota.command(name="server", description=cmd_text("cmd.quota.server.description"))
    @app_commands.describe(limit=cmd_text("cmd.quota.server.option.limit"))
    @moderator_only()
    async def quota_server(
        self, interaction: Interaction, limit: app_commands.Range[int, 0, MAX_CREDITS]
    ) -> None:
        budget = Text.of("unit.credits", count=limit) if limit else Text.of("quota.no_budget")
        await self._change(
            interaction,
            Text.of("quota.server.done", budget=budget),
            self.ledger.set_server_budget,
            limit,
        )

    @quota.command(name="period", description=cmd_text("cmd.quota.period.description"))
    @app_commands.describe(period=cmd_text("cmd.quota.period.option.period"))
    @app_commands.choices(period=PERIOD_CHOICES)
    @moderator_only()
    async def quota_period(
        self, interaction: Interaction, period: app_commands.Choice[str]
    ) -> None:
        await self._change(
            interaction,
            Text.of("quota.period.done", period=_period(period.value)),
            self.ledger.set_period,
            period.value,
        )

    @quota.command(name="grant", description=cmd_text("cmd.quota.grant.description"))
    @app_commands.describe(
        member=cmd_text("cmd.quota.grant.option.member"),
        amount=cmd_text("cmd.quota.grant.option.amount"),
    )
    @moderator_only()
    async def quota_grant(
        self,
        interaction: Interaction,
        member: discord.Member,
        amount: app_commands.Range[int, -MAX_CREDITS, MAX_CREDITS],
    ) -> None:
        if amount == 0:
            raise UserError("quota.grant.zero")
        key = "quota.grant.granted" if amount > 0 else "quota.grant.taken"
        await self._change(
            interaction,
            Text.of(key, count=abs(amount), member=member.mention),
            self.ledger.grant,
            member.id,
            amount,
        )

    @quota.command(name="reset", description=cmd_text("cmd.quota.reset.description"))
    @app_commands.describe(member=cmd_text("cmd.quota.reset.option.member"))
    @moderator_only()
    async def quota_reset(self, interaction: Interaction, member: discord.Member) -> None:
        await self._change(
            interaction,
            Text.of("quota.reset.done", member=member.mention),
            self.ledger.reset_member,
            member.id,
        )

    @quota.command(name="log", description=cmd_text("cmd.quota.log.description"))
    @app_commands.describe(channel=cmd_text("cmd.quota.log.option.channel"))
    @moderator_only()
    async def quota_log(
        self, interaction: Interaction, channel: discord.TextChannel | None = None
    ) -> None:
        guild = require_guild(interaction)
        if channel is not None:
            perms = channel.permissions_for(guild.me)
            if not (perms.send_messages and perms.embed_links):
                raise UserError("quota.log.cannot_post", channel=channel.mention)
            text = Text.of("quota.log.set", channel=channel.mention)
        else:
            text = Text.of("quota.log.cleared")
        await self._change(
            interaction, text, self.ledger.set_log_channel, channel.id if channel else None
        )

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
