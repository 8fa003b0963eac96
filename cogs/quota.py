"""The ``/quota`` group: a server's limits, budget, period, grants and quota log.

Every command checks at run time (Manage Server or a moderator role), not only through
Discord's ``default_permissions``, which server admins can change. Replies are
ephemeral and in the moderator's Discord language; every change is written to the
ledger's audit log by the ledger, and announced to whoever keeps the server's quota log
(:data:`QUOTA_CHANGE_EVENT`). Descriptions and the period choices are localised through
:class:`bot.frontend.translator.Translator`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.frontend.translator import cmd_text, interaction_locale
from bot.frontend.tree import UserError
from bot.i18n import Text, number, t
from bot.ledger import MAX_CREDITS, Change, Ledger, LedgerValueError, QuotaChanged
from cogs.checks import moderator_only, require_guild
from cogs.credits import PERIOD_CHOICES, reset_text

if TYPE_CHECKING:
    from bot.frontend.client import Interaction, UpscaleBot

# ``bot.dispatch`` event for every moderator change, with its QuotaChanged; the listener
# is ``on_quota_change`` (the Owner cog posts it in the server's quota log).
QUOTA_CHANGE_EVENT = "quota_change"
MANAGE_GUILD = discord.Permissions(manage_guild=True)


def _budget(language: str, limit: int) -> str:
    if limit == 0:
        return t(language, "quota.no_budget")
    return t(language, "unit.credits", count=limit)


def _period(period: str) -> Text:
    return Text.of(f"period.{period}")


class Quota(commands.Cog):
    """Moderators' settings of the server's credit limits."""

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
                reset=reset_text(lang, total.resets_at),
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


async def setup(bot: UpscaleBot) -> None:
    await bot.add_cog(Quota(bot))
