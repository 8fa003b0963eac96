"""The owner's controls through the real bot: where the bot may be used."""

from __future__ import annotations

from pathlib import Path

from tests.harness import png, running_bot


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
        h.bot.tree.allowed_guilds = frozenset({h.discord.guild.id})  # type: ignore[attr-defined]
        it, final = await h.upscale(png())
        assert it.file(final)
