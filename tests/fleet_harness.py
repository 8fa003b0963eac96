"""A fleet of real bot processes on one PostgreSQL schema, for the fleet tests and bench.

:func:`fleet` starts the emulators with a guild on each of ``SHARDS`` shards and a fresh
migrated schema on the PostgreSQL test server (``TEST_DATABASE_URL``); :meth:`Fleet.start`
runs one ``python -m tests.bot_process`` (what ``python -m bot`` runs) per shard with
``SHARD_COUNT``/``SHARD_IDS``. Every process is killed and the schema dropped at the end.
Processes run on short clocks (:mod:`tests.support.timings`) against a Discord emulator
whose IDENTIFY window is shortened to match, unless ``fleet(..., timings=REAL_TIMINGS)``.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.db import Database, open_database
from bot.timings import Timings
from tests.bot_process import start_bot_process
from tests.emulators.discord import DiscordEmulator, Guild, Injected, Member
from tests.emulators.onemin import OneMinEmulator
from tests.harness import DISCORD_TOKEN, ONEMIN_KEY
from tests.support.databases import PG_URL, drop_schema, require_postgres
from tests.support.images import png
from tests.support.timings import SHORT_TIMINGS, identify_window, timings_env

SHARDS = 2
START_TIMEOUT = 30.0  # seconds for a process to connect its shard
COMMANDS_PUT = re.compile(r"/applications/\d+/(guilds/\d+/)?commands$")


def process_tag(shard: int) -> str:
    """What the process of ``shard`` adds to its Discord requests' User-Agent."""
    return f"fleet-shard/{shard}"


@dataclass
class Fleet:
    """The emulators, one schema, a guild per shard, and the bot processes by shard."""

    discord: DiscordEmulator
    onemin: OneMinEmulator
    tmp: Path
    schema: str
    db: Database
    guilds: dict[int, Guild]
    timings: Timings = SHORT_TIMINGS
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    owners: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    runs: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def env(self, shard: int, **extra: str) -> dict[str, str]:
        sep = "&" if "?" in PG_URL else "?"
        return {
            "DISCORD_TOKEN": DISCORD_TOKEN,
            "ONEMIN_API_KEY": ONEMIN_KEY,
            "ONEMIN_API_BASE": self.onemin.base_url,
            "DATABASE_URL": f"{PG_URL}{sep}search_path={self.schema}",
            "SPOOL_DIR": str(self.tmp / "spool"),
            "DISCORD_API_BASE": self.discord.api_base,
            "DISCORD_GATEWAY_URL": self.discord.gateway_url,
            "SHARD_COUNT": str(SHARDS),
            "SHARD_IDS": str(shard),
            "LOG_LEVEL": "INFO",
            "PROCESS_TAG": process_tag(shard),
            **timings_env(self.timings),
            **extra,
        }

    def log_path(self, shard: int) -> Path:
        """The log of the latest process started for ``shard``."""
        return self.tmp / f"bot{shard}-{self.runs[shard]}.log"

    def log(self, shard: int) -> str:
        path = self.log_path(shard)
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')}"
            for p in sorted(self.tmp.glob("bot*.log"))
        )

    def spawn(self, shard: int, **extra: str) -> subprocess.Popen[bytes]:
        self.runs[shard] += 1
        proc = start_bot_process(self.env(shard, **extra), self.log_path(shard))
        self.procs[shard] = proc
        return proc

    async def start(self, *shards: int, **extra: str) -> None:
        """Start a process per shard at once; wait until every one has its shard."""
        shards = shards or tuple(range(SHARDS))
        seen = len(self.discord.identify_log)
        for shard in shards:
            self.spawn(shard, **extra)
        await self.connected(shards, seen)

    def _identified(self, shards: tuple[int, ...], since: int) -> bool:
        ready = {a.shard_id for a in self.discord.identify_log[since:] if a.outcome == "ready"}
        return set(shards) <= ready and set(shards) <= set(self.discord.connected_shards())

    async def connected(self, shards: tuple[int, ...], since: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not (self._identified(shards, since) and self.synced()):
            dead = [s for s in shards if self.procs[s].poll() is not None]
            if dead or time.monotonic() > deadline:
                raise AssertionError(f"shards {shards} did not start:\n{self.logs()}")
            await asyncio.sleep(0.05)

    def synced(self) -> bool:
        return bool(self.discord.global_commands)

    def kill(self, shard: int) -> None:
        proc = self.procs[shard]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)

    async def upscale(self, shard: int, member: Member, name: str = "a.png") -> Injected:
        guild = self.guilds[shard]
        return await self.discord.slash(
            "upscale",
            {"image": self.discord.attachment(png(), name)},
            member=member,
            channel=guild.channel,
        )

    def members(self, shard: int, count: int) -> list[Member]:
        guild = self.guilds[shard]
        return [self.discord.add_member(f"s{shard}m{i}", guild=guild) for i in range(count)]

    async def burst(self, per_guild: int) -> list[Injected]:
        """``per_guild`` members of each guild upscale at the same moment."""
        members = {s: self.members(s, per_guild) for s in self.guilds}
        return list(
            await asyncio.gather(
                *(
                    self.upscale(s, m, f"{s}-{i}.png")
                    for s in members
                    for i, m in enumerate(members[s])
                )
            )
        )

    def footers(self) -> list[str]:
        """The job footers of every posted result, in every guild."""
        return [
            str(e["footer"]["text"])
            for g in self.guilds.values()
            for m in self.discord.channel_messages(g.channel)
            if m.get("attachments")
            for e in m.get("embeds", [])
            if e.get("footer")
        ]

    async def value(self, sql: str) -> Any:
        row = await self.db.fetchone(sql)
        assert row is not None
        return row[0]

    async def settled(self, timeout: float = 40.0) -> None:
        """Until no job is queued or running and no credit is reserved."""
        deadline = time.monotonic() + timeout
        while await self.value(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE status IN ('intake', 'queued', 'running'))"
            " + (SELECT COUNT(*) FROM ledger_entries WHERE state = 'reserved')"
        ):
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs still unfinished:\n{self.logs()}")
            await asyncio.sleep(0.1)

    @asynccontextmanager
    async def watching_owners(self) -> AsyncIterator[None]:
        """Record, per job, every process instance seen holding it (polled every 30 ms)."""

        async def watch() -> None:
            while True:
                for row in await self.db.fetchall(
                    "SELECT id, lease_owner FROM jobs WHERE status = 'running'"
                ):
                    if row["lease_owner"]:
                        self.owners[row["id"]].add(str(row["lease_owner"]).rsplit(":", 1)[0])
                await asyncio.sleep(0.03)

        task = asyncio.create_task(watch())
        try:
            yield
        finally:
            task.cancel()

    def ran_on(self, job_id: str) -> set[str]:
        """The shards whose process held ``job_id`` ("host/1" -> "1")."""
        return {owner.rsplit("/", 1)[1] for owner in self.owners[job_id]}


@asynccontextmanager
async def fleet(
    tmp_path: Path, *, max_concurrency: int = 2, timings: Timings = SHORT_TIMINGS
) -> AsyncIterator[Fleet]:
    """Emulators with a guild on each shard, a fresh migrated schema; kills every process."""
    await require_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    db = await open_database(PG_URL, schema=schema)
    try:
        async with (
            DiscordEmulator(token=DISCORD_TOKEN) as d,
            OneMinEmulator(api_key=ONEMIN_KEY) as o,
        ):
            d.max_concurrency = max_concurrency
            d.identify_interval = identify_window(timings)
            guilds = {s: d.add_guild(f"Shard {s} Server", shard=(s, SHARDS)) for s in range(SHARDS)}
            f = Fleet(d, o, tmp_path, schema, db, guilds, timings)
            try:
                yield f
            finally:
                f.stop_all()
    finally:
        await db.close()
        await drop_schema(schema)


async def all_final(its: list[Injected], timeout: float = 40.0) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(it.final(timeout=timeout) for it in its)))


def delivered(finals: list[dict[str, Any]]) -> int:
    return sum(bool(f.get("attachments")) for f in finals)


def delivered_through_webhook(f: Fleet, it: Injected) -> bool:
    """The result was posted by editing ``it``'s reply with its interaction token."""
    return any(
        c.method == "PATCH"
        and c.files
        and re.search(rf"/webhooks/\d+/{it.token}/messages/", c.path)
        for c in f.discord.calls
    )


async def wait_until(
    predicate: Callable[[], Any], what: str, f: Fleet, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached:\n{f.logs()}")
        await asyncio.sleep(0.03)
