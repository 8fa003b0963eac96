"""/credits, /quota and /usage end to end through the Discord emulator."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any

from tests.harness import Harness, running_bot
from tests.support.images import png

EPHEMERAL = 64


async def run(h: Harness, name: str, options: dict[str, Any] | None = None, **kw: Any) -> str:
    """Run a command and return the final text of its reply."""
    it = await h.discord.slash(name, options, **kw)
    final = await it.final()
    return final.get("content") or ""


async def quota(h: Harness, sub: str, options: dict[str, Any] | None = None, **kw: Any) -> str:
    kw.setdefault("member", h.discord.moderator)
    return await run(h, "quota", options, subcommand=sub, **kw)


async def test_credits_shows_used_limit_and_reset(tmp_path: Path) -> None:
    """/credits after one upscale says 1 of 10 used and when the period resets."""
    async with running_bot(tmp_path) as h:
        await h.upscale(png())
        text = await run(h, "credits")
        assert "used **1** of **10**" in text
        assert "Resets: <t:" in text


async def test_credits_for_another_member_needs_a_moderator(tmp_path: Path) -> None:
    """alice asking about bob is refused; a moderator gets bob's figures."""
    async with running_bot(tmp_path) as h:
        bob = h.discord.bob
        refused = await run(h, "credits", {"member": bob})
        assert "Only moderators" in refused
        allowed = await run(h, "credits", {"member": bob}, member=h.discord.moderator)
        assert f"<@{bob.user.id}> has used **0**" in allowed


async def test_quota_default_changes_the_limit_and_is_audited(tmp_path: Path) -> None:
    """/quota default sets everyone's limit, shows in /credits, and writes the audit log."""
    async with running_bot(tmp_path) as h:
        text = await quota(h, "default", {"limit": 3})
        assert "**3**" in text
        assert "of **3**" in await run(h, "credits")
        entries = await h.services.ledger.audit_log(h.discord.guild.id)
        assert [(e.action, e.old_value, e.new_value) for e in entries] == [
            ("default_limit", "10", "3")
        ]
        assert entries[0].actor_id == h.discord.moderator.user.id


async def test_quota_role_user_and_clear(tmp_path: Path) -> None:
    """Role limits, a member override and clearing them change the member's limit."""
    async with running_bot(tmp_path) as h:
        alice = h.discord.alice
        alice.roles.append(h.discord.vip_role)
        await quota(h, "role", {"role": h.discord.vip_role, "limit": 25})
        assert "of **25**" in await run(h, "credits")
        await quota(h, "user", {"member": alice, "limit": 4})
        assert "of **4**" in await run(h, "credits")
        await quota(h, "clear", {"member": alice})
        assert "of **25**" in await run(h, "credits")
        await quota(h, "clear-role", {"role": h.discord.vip_role})
        assert "of **10**" in await run(h, "credits")


async def test_quota_server_budget_stops_everyone(tmp_path: Path) -> None:
    """With a server budget of 1, bob is refused after alice's upscale, naming the budget."""
    async with running_bot(tmp_path) as h:
        await quota(h, "server", {"limit": 1})
        await h.upscale(png())
        _, final = await h.upscale(png(), member=h.discord.bob)
        assert "server's upscale budget" in final["content"]


async def test_quota_period_grant_and_reset(tmp_path: Path) -> None:
    """Period, a grant (positive and negative) and a reset all show up in /credits."""
    async with running_bot(tmp_path) as h:
        alice = h.discord.alice
        assert "weekly" in await quota(h, "period", {"period": "weekly"})
        await quota(h, "grant", {"member": alice, "amount": 5})
        assert "of **15**" in await run(h, "credits")
        await quota(h, "grant", {"member": alice, "amount": -2})
        assert "of **13**" in await run(h, "credits")
        await h.upscale(png())
        await quota(h, "reset", {"member": alice})
        assert "used **0**" in await run(h, "credits")


async def test_quota_show_lists_the_settings(tmp_path: Path) -> None:
    """/quota show lists period, default, budget and the overrides."""
    async with running_bot(tmp_path) as h:
        await quota(h, "user", {"member": h.discord.bob, "limit": 7})
        text = await quota(h, "show")
        assert "Period: **daily**" in text and "Default member limit: **10**" in text
        assert f"<@{h.discord.bob.user.id}>: 7" in text


async def test_zero_grant_gets_a_clear_message(tmp_path: Path) -> None:
    """A grant of 0 is refused in plain words and changes nothing."""
    async with running_bot(tmp_path) as h:
        text = await quota(h, "grant", {"member": h.discord.bob, "amount": 0})
        assert "changes nothing" in text
        assert await h.services.ledger.audit_log(h.discord.guild.id) == []


async def test_non_moderator_is_refused_despite_bypassed_defaults(tmp_path: Path) -> None:
    """alice (no Manage Server) runs /quota default: Discord's default permissions were
    bypassed (the interaction arrives anyway), the bot still refuses and changes nothing."""
    async with running_bot(tmp_path) as h:
        text = await quota(h, "default", {"limit": 500}, member=h.discord.alice)
        assert "Only moderators" in text
        settings = await h.services.ledger.guild_settings(h.discord.guild.id)
        assert settings.default_limit == 10


async def test_moderator_role_from_settings_counts(tmp_path: Path) -> None:
    """A member holding a role listed in MODERATOR_ROLE_IDS may use /quota."""
    async with running_bot(tmp_path) as h:
        roles = frozenset({h.discord.mod_role.id})  # the emulator's ids exist only now
        h.bot.settings = dataclasses.replace(h.settings, moderator_role_ids=roles)
        text = await quota(h, "default", {"limit": 6}, member=h.discord.role_mod)
        assert "**6**" in text
        assert (await h.services.ledger.guild_settings(h.discord.guild.id)).default_limit == 6


async def test_commands_are_refused_in_dms(tmp_path: Path) -> None:
    """/credits in a DM gets a plain refusal."""
    async with running_bot(tmp_path) as h:
        text = await run(h, "credits", channel=h.discord.dm_channel)
        assert "server" in text


async def test_moderator_replies_are_ephemeral(tmp_path: Path) -> None:
    """The deferred reply of a moderator command carries the ephemeral flag."""
    async with running_bot(tmp_path) as h:
        it = await h.discord.slash("quota", subcommand="show", member=h.discord.moderator)
        await it.final()
        callback = next(c for c in h.discord.calls if c.path.endswith("/callback"))
        assert callback.json["data"]["flags"] & EPHEMERAL


async def test_usage_report_has_a_csv_that_parses(tmp_path: Path) -> None:
    """/usage after two upscales and one refunded failure: embed totals and a CSV."""
    async with running_bot(tmp_path) as h:
        await h.upscale(png())
        await h.upscale(png(), member=h.discord.bob)
        h.onemin.fail("upscale", "server_error", status=500)
        await h.upscale(png(), member=h.discord.bob)
        it = await h.discord.slash("usage", member=h.discord.moderator)
        final = await it.final()
        fields = {f["name"]: f["value"] for f in final["embeds"][0]["fields"]}
        assert (fields["Upscales"], fields["Failures"], fields["Refunds"]) == ("2", "1", "1")
        name, data = it.file(final)
        assert name.endswith(".csv")
        rows = list(csv.DictReader(io.StringIO(data.decode())))
        by_member = {int(r["member_id"]): r for r in rows}
        bob = by_member[h.discord.bob.user.id]
        assert (bob["upscales"], bob["failures"]) == ("1", "1")
        assert by_member[h.discord.alice.user.id]["credits"] == "1"


async def test_usage_is_for_moderators_only(tmp_path: Path) -> None:
    """A non-moderator asking for /usage is refused."""
    async with running_bot(tmp_path) as h:
        assert "Only moderators" in await run(h, "usage")


def footer_id(final: dict[str, Any]) -> str:
    """The job id a result shows in its embed's footer ("Job 3f2a9c1e")."""
    return str(final["embeds"][0]["footer"]["text"]).rsplit(" ", 1)[-1]


async def test_usage_job_shows_a_moderator_that_jobs_trail(tmp_path: Path) -> None:
    """/usage job:<id from a result's footer> answers a moderator, privately, with who
    asked, the outcome, the credit charged, the 1min.ai record and each stage with the
    process that ran it."""
    async with running_bot(tmp_path) as h:
        _, final = await h.upscale(png())
        shown = footer_id(final)
        await h.idle()
        it = await h.discord.slash("usage", {"job": shown}, member=h.discord.moderator)
        text = (await it.final()).get("content") or ""
        assert it.ack_type == 5 and (it.original or {}).get("flags", 0) & EPHEMERAL
        assert f"Job {shown}" in text
        assert f"<@{h.discord.alice.user.id}>" in text
        assert "Delivered." in text and "1 charged" in text
        assert "1min.ai record: `" in text
        for stage in ("request received", "uploading to 1min.ai", "posting the result"):
            assert stage in text
        assert h.services.queue.owner in text


async def test_usage_job_of_another_server_reveals_nothing(tmp_path: Path) -> None:
    """A moderator asking for a job of another server gets the same answer as for a job
    that does not exist, and nothing of that job."""
    async with running_bot(tmp_path) as h:
        other = h.discord.add_guild("Elsewhere")
        await h.discord.announce_guild(other)
        it = await h.discord.slash(
            "upscale",
            {"image": h.discord.attachment(png(), "x.png")},
            channel=other.channel,
            member=other.member("carol"),
        )
        shown = footer_id(await it.final())
        answer = await h.discord.slash("usage", {"job": shown}, member=h.discord.moderator)
        text = (await answer.final()).get("content") or ""
        missing = await h.discord.slash("usage", {"job": "0badc0de"}, member=h.discord.moderator)
        assert text == "There is no such job in this server."
        assert text == (await missing.final()).get("content")
