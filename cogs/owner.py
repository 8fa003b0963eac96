"""What the bot tells the people in charge: the owner's alerts and each server's quota log.

* The owner hears once when 1min.ai starts refusing the bot (bad key, no credits) and
  once when it accepts again: in ``ALERT_CHANNEL_ID``, or by DM to the application owner.
* A server's quota log channel (``/quota log``) gets every quota change (who changed
  what, from what to what) and the server budget's 80% and 100% alerts, once each per
  period. When the bot cannot post there it says so once in its log and stops trying
  until the channel is set again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.db import utc_now
from bot.failures import FailureKind
from bot.i18n import t
from bot.jobs import Job
from bot.ledger import Change, QuotaChanged, period_end
from bot.onemin.circuit import CircuitEvent

if TYPE_CHECKING:
    from bot.frontend.client import UpscaleBot

log = logging.getLogger(__name__)

BUDGET_THRESHOLDS = (80, 100)  # percent of the server budget that trigger an alert

_WHAT = {
    "default_limit": "default_limit",
    "server_budget": "server_budget",
    "period": "period",
    "role_limit": "role_limit",
    "clear_role_limit": "role_limit",
    "member_limit": "member_limit",
    "clear_member_limit": "member_limit",
    "grant": "grant",
    "reset_usage": "usage",
}


def _mention(target: str | None) -> dict[str, str]:
    """Placeholders for a change's target ("role:1", "member:2")."""
    if not target or ":" not in target:
        return {}
    kind, _, ident = target.partition(":")
    if kind == "role":
        return {"role": f"<@&{ident}>"}
    if kind == "member":
        return {"member": f"<@{ident}>"}
    return {}


def describe_change(locale: str | None, actor_id: int, change: Change) -> str | None:
    """The quota log line for ``change``, or None when it is not a quota change."""
    what_key = _WHAT.get(change.action)
    if what_key is None:
        return None
    none = t(locale, "quota.log.none")
    what = t(locale, f"quota.log.what.{what_key}", **_mention(change.target))
    return t(
        locale,
        "quota.log.changed",
        actor=f"<@{actor_id}>",
        what=what,
        old=change.old_value if change.old_value is not None else none,
        new=change.new_value if change.new_value is not None else none,
    )


def alert_text(event: CircuitEvent) -> str:
    """The owner's alert (in English: it is for the owner, not a member)."""
    if event.opened:
        if event.reason is FailureKind.OUT_OF_CREDITS:
            cause = "reports that the account has no credits left (406)"
            fix = "Top up the 1min.ai account"
        else:
            cause = "refused the API key (401)"
            fix = "Check ONEMIN_API_KEY in .env and restart the bot"
        return (
            f"⚠️ 1min.ai {cause}. The bot has stopped calling it: new upscales are refused at"
            f" no cost and queued ones wait. {fix}; the bot checks again every few minutes"
            " and resumes by itself."
        )
    minutes = max(1, round(event.duration / 60))
    return f"✅ 1min.ai accepts the bot again after {minutes} min; queued upscales continue."


class Owner(commands.Cog):
    """Alerts for the owner and each server's quota log."""

    def __init__(self, bot: UpscaleBot) -> None:
        self.bot = bot
        self._unpostable: set[int] = set()  # log channels already reported unpostable

    async def cog_load(self) -> None:
        self.bot.circuit.subscribe(self.on_circuit)
        self.bot.queue.subscribe_charged(self.on_charged)

    # -- the owner ---------------------------------------------------------------------

    async def on_circuit(self, event: CircuitEvent) -> None:
        text = alert_text(event)
        channel_id = self.bot.settings.alert_channel_id
        try:
            if channel_id is not None:
                await self.bot.get_partial_messageable(channel_id).send(text)
                return
            app = await self.bot.application_info()
            if app.team is not None and app.team.owner_id is not None:
                owner = await self.bot.fetch_user(app.team.owner_id)
                await owner.send(text)
            else:
                await app.owner.send(text)
        except discord.HTTPException as exc:
            log.warning("Could not alert the owner (HTTP %s): %s", exc.status, text)

    # -- a server's quota log ----------------------------------------------------------

    async def _log_channel(self, guild_id: int) -> int | None:
        settings = await self.bot.ledger.guild_settings(guild_id)
        return settings.log_channel_id

    async def post(self, guild_id: int, channel_id: int, text: str) -> None:
        """Post in the guild's log channel; a refusal is logged once, then not retried."""
        if channel_id in self._unpostable:
            return
        try:
            await self.bot.get_partial_messageable(channel_id, guild_id=guild_id).send(
                text, allowed_mentions=discord.AllowedMentions.none()
            )
        except discord.HTTPException as exc:
            self._unpostable.add(channel_id)
            log.warning(
                "Cannot post in the quota log channel %d of server %d (HTTP %s); not trying"
                " again until the channel is set again",
                channel_id,
                guild_id,
                exc.status,
            )

    @commands.Cog.listener()
    async def on_quota_change(self, event: QuotaChanged) -> None:
        """A moderator changed a quota (``bot.dispatch("quota_change", event)`` from the
        credits commands): post it in the guild's log channel, if it has one."""
        await self.log_change(event)

    async def log_change(self, event: QuotaChanged) -> None:
        """Post a moderator's quota change in the guild's log channel, if it has one."""
        guild_id, change = event.guild_id, event.change
        if change.action == "log_channel":
            self._unpostable.discard(int(change.new_value or 0))
            return
        channel_id = await self._log_channel(guild_id)
        if channel_id is None:
            return
        text = describe_change(self._locale(guild_id), event.actor_id, change)
        if text is not None:
            await self.post(guild_id, channel_id, text)

    async def on_charged(self, job: Job) -> None:
        """After a credit is charged: the 80% and 100% server budget alerts, once each."""
        usage = await self.bot.ledger.server_usage(job.guild_id)
        if not usage.budget:
            return
        percent = usage.used * 100 // usage.budget
        channel_id = None
        for threshold in BUDGET_THRESHOLDS:
            if percent < threshold:
                continue
            if not await self.bot.ledger.claim_budget_alert(job.guild_id, threshold):
                continue
            channel_id = channel_id or await self._log_channel(job.guild_id)
            if channel_id is None:
                return
            period = (await self.bot.ledger.guild_settings(job.guild_id)).period
            resets_at = period_end(utc_now(), period)
            reset = (
                f"<t:{int(resets_at.timestamp())}:R>"
                if resets_at
                else t(self._locale(job.guild_id), "credits.resets_never")
            )
            text = t(
                self._locale(job.guild_id),
                f"quota.log.budget_{threshold}",
                used=usage.used,
                limit=usage.budget,
                reset=reset,
            )
            await self.post(job.guild_id, channel_id, text)

    def _locale(self, guild_id: int) -> str | None:
        guild = self.bot.get_guild(guild_id)
        return str(guild.preferred_locale) if guild is not None else None


async def setup(bot: UpscaleBot) -> None:
    await bot.add_cog(Owner(bot))
