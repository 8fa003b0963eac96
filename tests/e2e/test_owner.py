"""The owner's controls through the real bot: where the bot may be used."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from tests.harness import Harness, running_bot
from tests.support.images import png


async def test_command_outside_allowed_guilds_is_refused_at_no_cost(tmp_path: Path) -> None:
    """A server not in ALLOWED_GUILD_IDS: refused in words, no 1min.ai call, no credit."""
    async with running_bot(tmp_path, allowed_guild_ids=frozenset({1234})) as h:
        _, final = await h.upscale(png())
        assert "not enabled in this server" in final["content"]
        assert sum(h.onemin.calls.values()) == 0
        assert await h.balance(h.discord.alice.user.id) == (0, 0)
        assert any("ALLOWED_GUILD_IDS does not list" in line for line in h.logs.lines)


async def test_commands_in_an_allowed_guild_work(tmp_path: Path) -> None:
    """The server listed in ALLOWED_GUILD_IDS upscales as usual."""
    async with running_bot(tmp_path) as h:
        allowed = frozenset({h.discord.guild.id})  # the emulator's ids exist only now
        h.bot.settings = dataclasses.replace(h.settings, allowed_guild_ids=allowed)
        it, final = await h.upscale(png())
        assert it.file(final)


async def moderator_quota(h: Harness, sub: str, options: dict[str, Any] | None = None) -> str:
    it = await h.discord.slash("quota", options, subcommand=sub, member=h.discord.moderator)
    return str((await it.final())["content"])


def channel_texts(h: Harness) -> list[str]:
    return [str(m.get("content")) for m in h.discord.channel_messages()]


async def test_total_budget_raced_by_three_servers_delivers_exactly_the_budget(
    tmp_path: Path,
) -> None:
    """TOTAL_BUDGET=5, three servers with ten members each upscaling at once: exactly five
    upscales are delivered; the others are told the bot's total budget is used up."""
    async with running_bot(tmp_path, total_budget=5) as h:
        guilds = [h.discord.guild, h.discord.add_guild("Two"), h.discord.add_guild("Three")]
        for guild in guilds[1:]:
            await h.discord.announce_guild(guild)
        injected = []
        for guild in guilds:
            members = [h.discord.add_member(f"m{guild.id}-{i}", guild=guild) for i in range(10)]
            injected += [
                await h.discord.slash(
                    "upscale",
                    {"image": h.discord.attachment(png(), "a.png")},
                    member=m,
                    channel=guild.channel,
                )
                for m in members
            ]
        finals = [await it.final(timeout=60) for it in injected]
        delivered = [f for f in finals if f.get("attachments")]
        refused = [f for f in finals if "total upscale budget" in str(f.get("content"))]
        assert len(delivered) == 5
        assert len(refused) == 25
        assert h.onemin.upscales == 5
        assert "Total budget (all servers): **5/5** credits" in await moderator_quota(h, "show")


async def test_circuit_opens_on_401_and_406_alerts_once_and_recovers(tmp_path: Path) -> None:
    """1min.ai refusing the key, then reporting no credits: after the first failure no
    feature call is made while the circuit is open, new upscales are refused at once at
    no cost, the owner gets exactly one alert per incident (and one when it clears),
    and once 1min.ai accepts again the waiting job and later upscales are delivered."""
    async with running_bot(tmp_path, circuit_probe_interval=0.5) as h:
        owner = h.discord.moderator  # the emulated application's owner
        alice = h.discord.alice.user.id
        for trouble in ("401", "406"):
            if trouble == "401":
                h.onemin.refuse_key(True)
            else:
                h.onemin.set_credits(0)
            calls_before = h.onemin.calls["upscale"]
            first = await h.discord.slash(
                "upscale", {"image": h.discord.attachment(png(), "a.png")}
            )
            await h.discord.wait_until(lambda: len(h.discord.dms_to(owner)) % 2 == 1)
            failed_calls = h.onemin.calls["upscale"] - calls_before
            assert failed_calls <= 1
            _, refused = await h.upscale(png(), "b.png", member=h.discord.bob)
            assert "refusing the bot's account" in refused["content"]
            assert "Nothing was charged" in refused["content"]
            assert "upscales are paused" in await moderator_quota(h, "show")
            await asyncio.sleep(0.3)
            assert h.onemin.calls["upscale"] - calls_before == failed_calls
            if trouble == "401":
                h.onemin.refuse_key(False)
            else:
                h.onemin.set_credits(1000)
            final = await first.final(timeout=20)
            assert final.get("attachments")
            await h.discord.wait_until(lambda: len(h.discord.dms_to(owner)) % 2 == 0)
        texts = [str(m.get("content")) for m in h.discord.dms_to(owner)]
        assert len(texts) == 4
        assert "401" in texts[0] and "accepts the bot again" in texts[1]
        assert "406" in texts[2] and "accepts the bot again" in texts[3]
        assert await h.balance(alice) == (2, 0)
        assert await h.balance(h.discord.bob.user.id) == (0, 0)
        it, final = await h.upscale(png(), "c.png")
        assert it.file(final)


async def test_quota_changes_and_budget_alerts_appear_in_the_log_channel(
    tmp_path: Path,
) -> None:
    """With /quota log set, a quota change is posted (who, what, from, to) and the server
    budget's 80% and 100% alerts are posted once each."""
    async with running_bot(tmp_path, max_jobs_per_user=10) as h:
        answer = await moderator_quota(h, "log", {"channel": h.discord.channel})
        assert "will be posted in" in answer
        await moderator_quota(h, "server", {"limit": 5})
        mod = h.discord.moderator.user.id
        await h.discord.wait_until(
            lambda: any(
                f"<@{mod}> changed the server budget from 0 to 5" in t for t in channel_texts(h)
            )
        )
        for i in range(5):
            it, final = await h.upscale(png(), f"{i}.png", member=h.discord.bob)
            assert it.file(final)
        await h.idle()
        await h.discord.wait_until(
            lambda: sum("used its whole upscale budget" in t for t in channel_texts(h)) == 1
        )
        assert sum("used 80% of its upscale budget" in t for t in channel_texts(h)) == 1
        await moderator_quota(h, "log")  # stop posting
        await moderator_quota(h, "default", {"limit": 3})
        await asyncio.sleep(0.3)
        assert not any("default member limit" in t for t in channel_texts(h))
