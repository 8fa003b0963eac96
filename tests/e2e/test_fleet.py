"""A fleet: two real bot processes (shards 0 and 1 of 2) on one PostgreSQL schema.

The emulators run in the test process; each bot runs as ``python -m tests.bot_process``
(what ``python -m bot`` runs) with ``SHARD_COUNT=2`` and its own ``SHARD_IDS``, on a fresh
schema of the PostgreSQL test server (``TEST_DATABASE_URL``). Interactions of a guild reach
only the process owning its shard, but any process may run any job.
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

import asyncpg

from bot.db import Database, open_database
from tests.bot_process import start_bot_process
from tests.conftest import PG_URL, require_postgres
from tests.emulators.discord import DiscordEmulator, Guild, Injected, Member
from tests.emulators.onemin import OneMinEmulator
from tests.harness import DISCORD_TOKEN, ONEMIN_KEY, png

SHARDS = 2
START_TIMEOUT = 30.0  # seconds for a process to connect its shard
COMMANDS_PUT = re.compile(r"/applications/\d+/(guilds/\d+/)?commands$")


@dataclass
class Fleet:
    """The emulators, one schema, a guild per shard, and the bot processes by shard."""

    discord: DiscordEmulator
    onemin: OneMinEmulator
    tmp: Path
    schema: str
    db: Database
    guilds: dict[int, Guild]
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
            "SELECT (SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running'))"
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
async def fleet(tmp_path: Path, *, max_concurrency: int = 2) -> AsyncIterator[Fleet]:
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
            guilds = {s: d.add_guild(f"Shard {s} Server", shard=(s, SHARDS)) for s in range(SHARDS)}
            f = Fleet(d, o, tmp_path, schema, db, guilds)
            try:
                yield f
            finally:
                f.stop_all()
    finally:
        await db.close()
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()


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


# -- start-up ------------------------------------------------------------------------------


async def test_two_processes_starting_together_identify_in_turns(tmp_path: Path) -> None:
    """With max_concurrency 1, two processes started at once identify 5 s apart: Discord
    refuses no IDENTIFY, and each process holds only its own shard."""
    async with fleet(tmp_path, max_concurrency=1) as f:
        await f.start()
        ready = [a for a in f.discord.identify_log if a.outcome == "ready"]
        assert sorted(a.shard_id for a in ready) == [0, 1]
        assert f.discord.identify_refusals == 0
        assert abs(ready[1].at - ready[0].at) >= 5.0
        assert f.discord.connected_shards() == [0, 1]
        assert sorted(g.id for g in f.discord.guilds_on(0, SHARDS)) == sorted(
            g.id for g in f.discord.guilds if (g.id >> 22) % SHARDS == 0
        )


async def test_only_one_process_of_the_fleet_syncs_the_commands(tmp_path: Path) -> None:
    """Two processes starting together register the commands once; a restarted process
    with the same commands does not register them again."""
    async with fleet(tmp_path) as f:
        await f.start()
        puts = [c for c in f.discord.calls if c.method == "PUT" and COMMANDS_PUT.search(c.path)]
        assert len(puts) == 1
        f.kill(1)
        await f.start(1)
        puts = [c for c in f.discord.calls if c.method == "PUT" and COMMANDS_PUT.search(c.path)]
        assert len(puts) == 1
        assert "not syncing" in f.log(1)


# -- fleet-wide limits ---------------------------------------------------------------------


async def test_a_burst_in_both_guilds_is_delivered_exactly_once(tmp_path: Path) -> None:
    """Six members in each shard's guild upscale at once: every job is delivered once (one
    result per job footer) and charged once."""
    async with fleet(tmp_path) as f:
        await f.start(MAX_CONCURRENT_JOBS="2")
        f.onemin.upscale_delay = 0.3
        its = await f.burst(6)
        assert delivered(await all_final(its)) == 12
        await f.settled()
        assert len(f.footers()) == 12 and len(set(f.footers())) == 12
        assert await f.value("SELECT COUNT(*) FROM ledger_entries WHERE state = 'committed'") == 12
        assert await f.value("SELECT COUNT(*) FROM jobs WHERE status = 'delivered'") == 12


async def test_the_fleet_never_has_more_than_k_upscales_in_flight(tmp_path: Path) -> None:
    """With MAX_CONCURRENT_JOBS=2 on both processes, 1min.ai never sees more than two
    upscale calls at once, though both processes have work."""
    async with fleet(tmp_path) as f:
        await f.start(MAX_CONCURRENT_JOBS="2")
        f.onemin.upscale_delay = 0.5
        async with f.watching_owners():
            its = await f.burst(5)
            assert delivered(await all_final(its)) == 10
        assert f.onemin.max_features_in_flight == 2
        assert {s for job in f.owners for s in f.ran_on(job)} == {"0", "1"}


async def test_the_fleet_stays_under_the_1min_rate_limit_together(tmp_path: Path) -> None:
    """1min.ai allows 6 calls per 4 s window; with ONEMIN_REQUESTS_PER_MINUTE=6 over the
    same window, two busy processes together never go over it and get no 429."""
    async with fleet(tmp_path) as f:
        f.onemin.rate_limit(6, 4.0)
        await f.start(
            MAX_CONCURRENT_JOBS="4", ONEMIN_REQUESTS_PER_MINUTE="6", ONEMIN_RATE_WINDOW="4"
        )
        its = await f.burst(4)
        assert delivered(await all_final(its, timeout=60)) == 8
        assert f.onemin.max_in_window(admitted_only=True) <= 6
        assert f.onemin.rate_limited_count == 0
        assert f.onemin.calls["upload"] == 8


async def test_racing_for_the_total_budget_delivers_exactly_the_budget(tmp_path: Path) -> None:
    """TOTAL_BUDGET=5 shared by both processes: a burst of 12 in both guilds delivers
    exactly 5 and refuses the rest without charging them."""
    async with fleet(tmp_path) as f:
        await f.start(MAX_CONCURRENT_JOBS="4", TOTAL_BUDGET="5")
        its = await f.burst(6)
        finals = await all_final(its)
        await f.settled()
        assert delivered(finals) == 5
        assert len(set(f.footers())) == 5
        assert await f.value("SELECT COUNT(*) FROM ledger_entries WHERE state = 'committed'") == 5
        assert await f.value("SELECT COUNT(*) FROM ledger_entries WHERE state = 'reserved'") == 0


# -- any process runs any job --------------------------------------------------------------


async def test_a_job_accepted_by_one_process_is_run_and_delivered_by_the_other(
    tmp_path: Path,
) -> None:
    """Process 0 is busy (its one slot held by a slow upload): the next job it accepts is
    run by process 1, which delivers it by editing the original reply through the
    interaction webhook, with no gateway connection to that guild."""
    async with fleet(tmp_path) as f:
        await f.start(0, MAX_CONCURRENT_JOBS="1")
        await f.start(1, MAX_CONCURRENT_JOBS="2")
        f.onemin.fail("upload", "latency", seconds=4.0)
        alice, bob = f.members(0, 2)
        async with f.watching_owners():
            first = await f.upscale(0, alice)
            await wait_until(
                lambda: f.value("SELECT COUNT(*) FROM jobs WHERE status = 'running'"),
                "first job running",
                f,
            )
            second = await f.upscale(0, bob)
            final = await second.final(timeout=20)
            assert final.get("attachments")
            await first.final(timeout=20)
        jobs = [r["id"] for r in await f.db.fetchall("SELECT id FROM jobs ORDER BY created_at")]
        assert f.ran_on(jobs[0]) == {"0"} and f.ran_on(jobs[1]) == {"1"}
        assert delivered_through_webhook(f, second)


# -- failover ------------------------------------------------------------------------------


async def test_kill_9_of_one_process_mid_burst_the_other_finishes_every_job(
    tmp_path: Path,
) -> None:
    """kill -9 of process 0 in the middle of a burst: once its leases run out, process 1
    takes its jobs over and every job is delivered exactly once, through the original
    replies, and charged once."""
    async with fleet(tmp_path) as f:
        await f.start(MAX_CONCURRENT_JOBS="2", JOB_LEASE_SECONDS="3")
        f.onemin.upscale_delay = 1.0
        async with f.watching_owners():
            its = await f.burst(4)
            for it in its:
                await it.acked()
            await wait_until(
                lambda: f.value(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'running'"
                    " AND lease_owner LIKE '%/0:%' AND stage = 'upscaling'"
                ),
                "a job upscaling in process 0",
                f,
            )
            f.kill(0)
            finals = await all_final(its, timeout=40)
        assert delivered(finals) == 8
        await f.settled()
        assert len(f.footers()) == 8 and len(set(f.footers())) == 8
        assert await f.value("SELECT COUNT(*) FROM ledger_entries WHERE state = 'committed'") == 8
        taken_over = [job for job in f.owners if f.ran_on(job) == {"0", "1"}]
        assert taken_over, f.owners
        assert all(delivered_through_webhook(f, it) for it in its)
        assert "Took over job" in f.log(1)


async def test_a_restarted_process_takes_its_shard_back_without_disturbing_the_other(
    tmp_path: Path,
) -> None:
    """Process 0 is killed and started again while process 1 runs jobs: it gets shard 0
    back, serves its guild again, and process 1's jobs are neither released nor run twice."""
    async with fleet(tmp_path) as f:
        await f.start(MAX_CONCURRENT_JOBS="2", JOB_LEASE_SECONDS="3")
        f.onemin.upscale_delay = 3.0  # still running while process 0 starts and recovers
        f.kill(0)
        async with f.watching_owners():
            its = [await f.upscale(1, m) for m in f.members(1, 2)]
            await wait_until(
                lambda: f.value(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'running' AND stage = 'upscaling'"
                ),
                "process 1 upscaling",
                f,
            )
            await f.start(0, MAX_CONCURRENT_JOBS="2", JOB_LEASE_SECONDS="3")
            assert f.discord.connected_shards() == [0, 1]
            again = await f.upscale(0, f.members(0, 1)[0])
            assert (await again.final(timeout=20)).get("attachments")
            assert delivered(await all_final(its)) == 2
        await f.settled()
        ones = [
            r["id"]
            for r in await f.db.fetchall(
                "SELECT id FROM jobs WHERE guild_id = ?", (f.guilds[1].id,)
            )
        ]
        assert all(f.ran_on(job) == {"1"} for job in ones)
        assert await f.value("SELECT MAX(claims) FROM jobs") == 1
        assert f.onemin.upscales == 3
