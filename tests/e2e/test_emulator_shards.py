"""The Discord emulator's guilds, shards and owner-tooling routes, driven by plain discord.py.

These run bare ``AutoShardedClient``s (not the project bot) against the emulator, so they
check the emulator's contract with discord.py itself: what each shard sees, how IDENTIFY
is paced and refused, and the REST routes owner tooling relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import discord
import pytest

from tests.emulators.discord import (
    ATTACH_FILES,
    BOT_PERMISSIONS,
    DiscordEmulator,
    point_discord_at,
    shard_of,
    snowflake,
)
from tests.harness import eventually

READY_TIMEOUT = 10.0  # seconds


class ShardClient(discord.AutoShardedClient):
    """A bare sharded client that records interactions and identifies without the 5 s wait."""

    def __init__(self, shard_ids: list[int] | None, shard_count: int | None, retry: float = 0.3):
        # No shard_ids: every shard of shard_count (discord.py types the option list[int]).
        options: dict[str, Any] = {} if shard_ids is None else {"shard_ids": shard_ids}
        super().__init__(
            intents=discord.Intents.default(),
            shard_count=shard_count,
            guild_ready_timeout=0.05,
            **options,
        )
        self.retry = retry
        self.seen: list[discord.Interaction] = []
        self.ready_shards: list[int] = []

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Identify at once the first time; wait ``retry`` s before identifying again."""
        if not initial:
            await asyncio.sleep(self.retry)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        self.seen.append(interaction)

    async def on_shard_ready(self, shard_id: int) -> None:
        self.ready_shards.append(shard_id)


class TargetClient(ShardClient):
    """A shard client with an "Upscale image" message command that records the target
    message discord.py resolves from the interaction."""

    def __init__(self) -> None:
        super().__init__(None, 1)
        self.targets: list[discord.Message] = []
        self.tree = discord.app_commands.CommandTree(self)
        self.tree.add_command(
            discord.app_commands.ContextMenu(name="Upscale image", callback=self.on_target)
        )

    async def on_target(self, interaction: discord.Interaction, message: discord.Message) -> None:
        self.targets.append(message)


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as emulator:
        point_discord_at(emulator)
        emulator.global_commands = [command("ping")]
        yield emulator


def command(name: str) -> dict[str, Any]:
    """A global slash command as if the bot had registered it (these clients register none)."""
    return {"id": str(snowflake()), "name": name, "type": 1, "description": "", "options": []}


Client = TypeVar("Client", bound=ShardClient)


@contextlib.asynccontextmanager
async def running(client: Client, emu: DiscordEmulator) -> AsyncIterator[Client]:
    """Start ``client`` against the emulator; close it (and wait for it) on the way out."""
    task = asyncio.create_task(client.start(emu.token))
    try:
        yield client
    finally:
        await client.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5.0)


async def ready(client: ShardClient) -> None:
    await asyncio.wait_for(client.wait_until_ready(), READY_TIMEOUT)


async def test_two_clients_on_two_shards_each_see_only_their_guilds(
    emu: DiscordEmulator,
) -> None:
    """Shards [0] and [1] of 2 in one process: READY and GUILD_CREATE carry only their guilds."""
    emu.max_concurrency = 2  # two buckets: both may identify at once
    on_0 = [emu.add_guild(f"zero-{n}", shard=(0, 2)) for n in range(2)]
    on_1 = [emu.add_guild(f"one-{n}", shard=(1, 2)) for n in range(3)]
    default_shard = shard_of(emu.guild.id, 2)
    async with running(ShardClient([0], 2), emu) as a, running(ShardClient([1], 2), emu) as b:
        await ready(a)
        await ready(b)
        expected = {0: {g.id for g in on_0}, 1: {g.id for g in on_1}}
        expected[default_shard].add(emu.guild.id)
        assert {g.id for g in a.guilds} == expected[0]
        assert {g.id for g in b.guilds} == expected[1]
        assert emu.connected_shards() == [0, 1] and emu.identify_refusals == 0
        assert [(i.shard_id, i.shard_count, i.outcome) for i in emu.identify_log] in (
            [(0, 2, "ready"), (1, 2, "ready")],
            [(1, 2, "ready"), (0, 2, "ready")],
        )
        guild = a.get_guild(on_0[0].id)
        assert guild is not None and guild.me is not None


async def test_an_interaction_reaches_only_the_shard_owning_its_guild(
    emu: DiscordEmulator,
) -> None:
    """A slash command in a shard-1 guild arrives at the shard-1 client alone, and back."""
    emu.max_concurrency = 2
    g0 = emu.add_guild("zero", shard=(0, 2))
    g1 = emu.add_guild("one", shard=(1, 2))
    async with running(ShardClient([0], 2), emu) as a, running(ShardClient([1], 2), emu) as b:
        await ready(a)
        await ready(b)
        first = await emu.slash("ping", channel=g1.channel)
        second = await emu.slash("ping", channel=g0.channel, member=g0.member("dave"))
        await eventually(lambda: len(a.seen) + len(b.seen) == 2)
        await asyncio.sleep(0.1)  # nothing else arrives late
        assert [i.id for i in b.seen] == [first.id] and [i.id for i in a.seen] == [second.id]
        assert b.seen[0].guild_id == g1.id and b.seen[0].user.name == "carol"
        assert a.seen[0].user.id == g0.member("dave").user.id


async def test_guild_and_interaction_locales_reach_discord_py(emu: DiscordEmulator) -> None:
    """GUILD_CREATE carries preferred_locale; an interaction carries locale and guild_locale."""
    guild = emu.add_guild("Serveur", locale="fr")
    async with running(ShardClient(None, 1), emu) as client:
        await ready(client)
        seen = client.get_guild(guild.id)
        assert seen is not None and seen.preferred_locale is discord.Locale.french
        await emu.slash("ping", channel=guild.channel, locale="de")
        await emu.slash("ping")
        await eventually(lambda: len(client.seen) == 2)
        german, default = client.seen
        assert german.locale is discord.Locale.german
        assert german.guild_locale is discord.Locale.french
        assert (default.locale, default.guild_locale) == (
            discord.Locale.american_english,
            discord.Locale.american_english,
        )


async def test_two_identifies_in_one_bucket_within_five_seconds_refuse_the_later(
    emu: DiscordEmulator,
) -> None:
    """With max_concurrency 1, shards 0 and 1 identifying together: one gets op 9, retries."""
    emu.identify_interval = 1.0  # Discord's 5 s, shortened so the retry is quick
    async with running(ShardClient([0], 2), emu) as a, running(ShardClient([1], 2), emu) as b:
        await ready(a)
        await ready(b)
        assert emu.identify_refusals >= 1
        refused = [i for i in emu.identify_log if i.outcome == "rate_limited"]
        admitted = [i.at for i in emu.identify_log if i.outcome == "ready"]
        assert refused and len(admitted) == 2
        assert admitted[1] - admitted[0] >= emu.identify_interval
        assert emu.connected_shards() == [0, 1]


async def test_identifies_in_different_buckets_may_overlap(emu: DiscordEmulator) -> None:
    """With max_concurrency 2, shards 0 and 1 are in different buckets: no refusal."""
    emu.max_concurrency = 2
    async with running(ShardClient([0], 2), emu) as a, running(ShardClient([1], 2), emu) as b:
        await ready(a)
        await ready(b)
        assert emu.identify_refusals == 0 and emu.identifies == 2


async def test_a_second_session_on_a_connected_shard_is_refused_until_the_first_closes(
    emu: DiscordEmulator,
) -> None:
    """A restarted process keeps getting op 9 for its shard, and takes it once the old one goes."""
    emu.identify_interval = 0.2
    emu.add_guild("only", shard=(0, 1))
    old = ShardClient([0], 1)
    async with running(old, emu):
        await ready(old)
        new = ShardClient([0], 1, retry=0.3)
        async with running(new, emu):
            await eventually(lambda: emu.duplicate_session_refusals >= 2)
            assert not new.is_ready() and emu.connected_shards() == [0]
            await old.close()
            await ready(new)
            assert emu.connected_shards() == [0]
            assert emu.identify_log[0].outcome == "ready"
            assert emu.identify_log[-1].outcome == "ready" and emu.identifies == 2
            await emu.slash("ping", channel=emu.guilds[-1].channel)
            await eventually(lambda: len(new.seen) == 1)
            assert old.seen == []


async def test_an_auto_sharded_client_runs_the_recommended_shard_count(
    emu: DiscordEmulator,
) -> None:
    """Without a count, GET /gateway/bot decides: two shards, and its session start limit."""
    emu.recommended_shards, emu.max_concurrency = 2, 2
    async with running(ShardClient(None, None), emu) as client:
        await ready(client)
        assert client.shard_count == 2 and sorted(client.shards) == [0, 1]
        limits = await client.fetch_session_start_limits()
        assert (limits.total, limits.remaining, limits.max_concurrency) == (1000, 998, 2)
    assert any(c.path.endswith("/gateway/bot") for c in emu.calls)


async def test_a_rejected_token_makes_login_fail(emu: DiscordEmulator) -> None:
    """reject_token answers GET /users/@me with 401, which discord.py raises as LoginFailure."""
    emu.reject_token = True
    client = ShardClient(None, 1)
    with pytest.raises(discord.LoginFailure):
        await client.login(emu.token)
    await client.close()


async def test_the_bots_guilds_are_listed_with_their_permissions(emu: DiscordEmulator) -> None:
    """GET /users/@me/guilds lists every guild, with the permissions a test set per guild."""
    other = emu.add_guild("No files")
    other.bot_permissions = BOT_PERMISSIONS & ~ATTACH_FILES
    client = ShardClient(None, 1)
    await client.login(emu.token)
    try:
        names = {g.id: g.name async for g in client.fetch_guilds()}
        assert names == {emu.guild.id: "Test Server", other.id: "No files"}
        # discord.py's Guild drops "permissions": owner tooling reads the raw payload
        raw = {int(g["id"]): g for g in await client.http.get_guilds(200)}
        assert discord.Permissions(int(raw[emu.guild.id]["permissions"])).attach_files
        assert not discord.Permissions(int(raw[other.id]["permissions"])).attach_files
    finally:
        await client.close()


async def test_history_pages_backwards_with_before_and_limit(emu: DiscordEmulator) -> None:
    """GET /channels/{id}/messages gives newest first and pages with before/limit."""
    posted = [emu.user_message(content=f"m{n}") for n in range(5)]
    client = ShardClient(None, 1)
    await client.login(emu.token)
    try:
        channel = await client.fetch_channel(emu.channel.id)
        assert isinstance(channel, discord.TextChannel)
        latest = [m.content async for m in channel.history(limit=3)]
        assert latest == ["m4", "m3", "m2"]
        older = [
            m.content
            async for m in channel.history(limit=10, before=discord.Object(int(posted[2]["id"])))
        ]
        assert older == ["m1", "m0"]
        oldest_first = [m.content async for m in channel.history(limit=2, oldest_first=True)]
        assert oldest_first == ["m0", "m1"]
    finally:
        await client.close()


async def test_a_dm_to_the_application_owner_is_recorded(emu: DiscordEmulator) -> None:
    """application_info().owner, create_dm and send: the DM lands in dms_to(owner)."""
    client = ShardClient(None, 1)
    await client.login(emu.token)
    try:
        info = await client.application_info()
        assert info.owner.id == emu.owner.id
        dm = await info.owner.create_dm()
        await dm.send("1min.ai refused the API key")
        assert [m["content"] for m in emu.dms_to(emu.owner)] == ["1min.ai refused the API key"]
        assert emu.dms_sent[0][0] == emu.owner.id
        emu.closed_dms.add(emu.owner.id)
        with pytest.raises(discord.Forbidden) as refused:
            await dm.send("again")
        assert refused.value.code == 50007
    finally:
        await client.close()


async def test_a_target_message_resolves_its_attachments_and_embeds(
    emu: DiscordEmulator,
) -> None:
    """image_message: N images with sizes, a text file and image embeds reach discord.py."""
    emu.global_commands.append(
        {"id": str(snowflake()), "name": "Upscale image", "type": 3, "description": ""}
    )
    message = emu.image_message(3, embed_images=2, content="look")
    async with running(TargetClient(), emu) as client:
        await ready(client)
        it = await emu.message_command("Upscale image", message, locale="ja")
        await eventually(lambda: len(client.targets) == 1)
        interaction, target = client.seen[0], client.targets[0]
        assert interaction.id == it.id and interaction.locale is discord.Locale.japanese
        assert (target.id, target.content) == (int(message["id"]), "look")
        kinds = [(a.filename, a.content_type, a.width) for a in target.attachments]
        assert kinds == [
            ("image1.png", "image/png", 64),
            ("image2.png", "image/png", 72),
            ("image3.png", "image/png", 80),
            ("notes.txt", "text/plain; charset=utf-8", None),
        ]
        assert [e.image.width for e in target.embeds] == [64, 72]
        for attachment in target.attachments[:3]:
            assert (await attachment.read())[:8] == b"\x89PNG\r\n\x1a\n"
