"""A database that blinks costs nothing: real bot processes through the fault proxy.

A fleet of two processes (shards 0 and 1 of 2, :mod:`tests.fleet_harness`) on one
PostgreSQL schema, each reaching the database through a fault proxy of its own
(:class:`tests.support.faultproxy.FaultProxy`), so a test can reset, refuse or stall one
process's database and not the other's. The SQLite cases run one process on a file that
a connection of the test holds locked, or fills. Every process is stopped with SIGTERM at
the end of a test and must exit 0 with no traceback and no "Task exception was never
retrieved" in its output (a process killed with -9 would never print the latter: asyncio
reports a task's lost exception when the task is collected, at the latest at exit).

Clocks are short (:mod:`tests.support.timings`), leases of 3 s where a lease must lapse;
tests wait on conditions (the emulators' holds, the database, the processes' logs), never
on a guess of how long something takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.frontend.tree import DATABASE_FULL, DATABASE_UNREACHABLE
from tests.bot_process import start_bot_process
from tests.emulators.discord import DiscordEmulator
from tests.emulators.discord.rest import Rest
from tests.emulators.onemin import OneMinEmulator
from tests.fleet_harness import SHARDS, START_TIMEOUT, Fleet, fleet, process_tag, wait_until
from tests.harness import DISCORD_TOKEN, ONEMIN_KEY
from tests.support.databases import PG_URL
from tests.support.faultproxy import FaultProxy
from tests.support.images import noise_png, png
from tests.support.timings import SHORT_TIMINGS, identify_window, timings_env

STOP_TIMEOUT = 30.0  # seconds a process may take to stop after SIGTERM
LEASE = "3"  # JOB_LEASE_SECONDS where a lease must lapse within a test (the least allowed)
# The deferred reply, edited through the interaction webhook (by id or as @original).
WEBHOOK_MESSAGE = r"/webhooks/\d+/[^/]+/messages/[^/]+$"
NEVER_RETRIEVED = "Task exception was never retrieved"


# -- what the Discord emulator saw, by process ------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """One REST request as it reached the Discord emulator."""

    at: float  # time.monotonic() on arrival (the emulator's record has the answer's time)
    method: str
    path: str
    agent: str  # the User-Agent: a fleet process adds its tag (tests.fleet_harness)


@pytest.fixture
def arrivals(monkeypatch: pytest.MonkeyPatch) -> list[Arrival]:
    """Every REST request the Discord emulators of this test receive, in order."""
    seen: list[Arrival] = []
    rest = Rest._rest

    async def recording(self: Rest, request: web.Request) -> web.StreamResponse:
        agent = request.headers.get("User-Agent", "")
        seen.append(Arrival(time.monotonic(), request.method, request.path, agent))
        return await rest(self, request)

    monkeypatch.setattr(Rest, "_rest", recording)
    return seen


def sent_by(arrivals: list[Arrival], shard: int) -> list[Arrival]:
    tag = process_tag(shard)
    return [a for a in arrivals if a.agent.endswith(f" {tag}")]


# -- a fleet behind fault proxies --------------------------------------------------------


@dataclass
class Proxied:
    """A fleet whose process of each shard reaches the database through its own proxy."""

    fleet: Fleet
    proxies: dict[int, FaultProxy]

    def url(self, shard: int) -> str:
        return self.proxies[shard].url(PG_URL, schema=self.fleet.schema)

    async def start(self, *shards: int, **extra: str) -> None:
        """Start the processes of ``shards`` (default: all) through their proxies."""
        for shard in shards or tuple(range(SHARDS)):
            await self.fleet.start(shard, DATABASE_URL=self.url(shard), **extra)

    def cut(self, *shards: int) -> None:
        """The database goes away: open connections reset, new ones refused."""
        for shard in shards or tuple(self.proxies):
            self.proxies[shard].refuse()
            self.proxies[shard].reset()

    def heal(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()


@asynccontextmanager
async def proxied_fleet(tmp_path: Path) -> AsyncIterator[Proxied]:
    async with AsyncExitStack() as stack:
        f = await stack.enter_async_context(fleet(tmp_path))
        proxies = {
            shard: await stack.enter_async_context(FaultProxy.to(PG_URL)) for shard in range(SHARDS)
        }
        yield Proxied(f, proxies)


# -- processes: a clean stop, and what they printed ----------------------------------------


async def exited(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """Wait (without blocking the loop) until ``proc`` exits; its status."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"process {proc.pid} still running after {timeout} s")
        await asyncio.sleep(0.05)
    return proc.returncode


async def stop(f: Fleet) -> None:
    """SIGTERM every running process of the fleet: each exits 0."""
    running = [p for p in f.procs.values() if p.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    statuses = [await exited(proc) for proc in running]
    assert statuses == [0] * len(running), f.logs()


async def stop_cleanly(f: Fleet) -> None:
    """:func:`stop`, and nothing any process printed is a traceback or a task's
    exception that nobody retrieved."""
    await stop(f)
    assert_quiet(f.logs())


def assert_quiet(output: str) -> None:
    """No traceback and no lost task exception in a process's output."""
    assert "Traceback" not in output, output
    assert NEVER_RETRIEVED not in output, output


def warnings_about(log: str, pattern: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING " in line and re.search(pattern, line)]


def warning_messages(log: str) -> list[str]:
    """The WARNING lines of ``log``, without their time and without the count of lines
    left out that a repeated outage line carries."""
    return [
        re.sub(r" \(\d+ more in the last \d+ s\)$", "", line.split(" WARNING ", 1)[1])
        for line in log.splitlines()
        if " WARNING " in line
    ]


async def until(predicate: Callable[[], bool], what: str, f: Fleet, timeout: float = 20) -> None:
    """Until ``predicate()`` holds (a plain condition, e.g. on a process's log)."""

    async def check() -> bool:
        return predicate()

    await wait_until(check, what, f, timeout)


# -- 1. commands during an outage ----------------------------------------------------------


async def test_commands_during_a_refusal_say_so_in_the_members_language_and_charge_nothing(
    tmp_path: Path,
) -> None:
    """Both processes' database refuses new connections and their open ones are reset:
    /upscale (English, process 0) and /credits (German, process 1) are answered with
    the outage words in the member's language; nothing is recorded or charged; each
    process logs the command's outage as one WARNING line, with no traceback."""
    async with proxied_fleet(tmp_path) as p:
        f = p.fleet
        await p.start()
        before = await f.value("SELECT COUNT(*) FROM ledger_entries")
        p.cut()
        alice = f.members(0, 1)[0]
        bernd = f.members(1, 1)[0]
        upscale = await f.upscale(0, alice)
        credits = await f.discord.slash(
            "credits", member=bernd, channel=f.guilds[1].channel, locale="de"
        )
        assert (await upscale.final())["content"] == DATABASE_UNREACHABLE.render("en-US")
        assert (await credits.final())["content"] == DATABASE_UNREACHABLE.render("de")
        p.heal()
        assert await f.value("SELECT COUNT(*) FROM ledger_entries") == before
        assert await f.value("SELECT COUNT(*) FROM jobs") == 0
        await stop_cleanly(f)
        assert len(warnings_about(f.log(0), "Command upscale .*database did not answer")) == 1
        assert len(warnings_about(f.log(1), "Command credits .*database did not answer")) == 1


# -- 2. a reset while a job is with 1min.ai ------------------------------------------------


async def test_a_reset_while_a_job_is_upscaling_delivers_it_once_with_one_upscale(
    tmp_path: Path,
) -> None:
    """Every database connection is reset while a job's upscale is held at 1min.ai, and
    new ones are refused until the job has tried to record the upscale's result: when
    the database answers again the job goes on from there. It is delivered once and
    charged once, and 1min.ai's upscale was called once."""
    async with proxied_fleet(tmp_path) as p:
        f = p.fleet
        await p.start()
        upscale = f.onemin.hold("upscale")
        it = await f.upscale(0, f.members(0, 1)[0])
        await upscale.reached()
        p.cut()
        upscale.release()
        await until(
            lambda: "while recording a job's stage" in f.logs(),
            "the upscale's result waiting for the database",
            f,
        )
        p.heal()
        final = await it.final(timeout=30)
        assert final.get("attachments")
        await f.settled()
        assert f.onemin.upscales == 1
        assert len(f.footers()) == 1
        assert await f.value("SELECT COUNT(*) FROM jobs WHERE status = 'delivered'") == 1
        assert await f.value("SELECT COUNT(*) FROM ledger_entries WHERE state = 'committed'") == 1
        await stop_cleanly(f)


# -- 3. a stall longer than the lease while delivering ---------------------------------------


async def test_a_worker_stalled_past_its_lease_while_delivering_sends_nothing_after_it(
    tmp_path: Path, arrivals: list[Arrival]
) -> None:
    """The process delivering a job is cut off from its database (a partition) for longer
    than JOB_LEASE_SECONDS while Discord holds its result post (a 429 asking it to try
    again after three leases): its delivery is cut off before its lease lapses, so it
    sends Discord nothing after that (no retry of the post); the other process takes the
    job over and delivers it once, without a second upscale."""
    async with proxied_fleet(tmp_path) as p:
        f = p.fleet
        await p.start(JOB_LEASE_SECONDS=LEASE)
        wait = 3 * float(LEASE)
        f.discord.fail(WEBHOOK_MESSAGE, 429, method="PATCH", files_only=True, retry_after=wait)
        it = await f.upscale(0, f.members(0, 1)[0])
        await f.discord.wait_until(lambda: any(c.status == 429 for c in f.discord.calls), 20)
        owner = await f.value("SELECT lease_owner FROM jobs")
        stale = int(str(owner).rsplit(":", 1)[0].rsplit("/", 1)[1])
        p.proxies[stale].stall()
        # Read once the stall began: no renewal by the stale process lands after this.
        expires = float(await f.value("SELECT lease_expires FROM jobs"))
        lapsed_at = time.monotonic() + (expires - time.time())
        final = await it.final(timeout=30)
        assert final.get("attachments")
        await f.settled()
        await until(lambda: "stopped here" in f.log(stale), "the stale run stopping", f)
        p.heal()
        await stop_cleanly(f)
        sent = sent_by(arrivals, stale)
        assert any(a.method == "PATCH" and a.at < lapsed_at for a in sent)  # the held post
        late = [a for a in sent if a.at >= lapsed_at]
        assert late == [], late
        assert len(f.footers()) == 1
        assert f.onemin.upscales == 1
        assert await f.value("SELECT COUNT(*) FROM ledger_entries WHERE state = 'committed'") == 1


# -- 4. a progress edit held by a 429 while the result is delivered ------------------------


async def test_a_progress_edit_retried_after_a_429_never_replaces_the_result(
    tmp_path: Path,
) -> None:
    """Process 0 took the command and shows the job's place in line; process 1 runs it.
    Discord answers process 0's progress edit with a 429 (retry after 4 s), and process
    0's database goes away, so it cannot read that the job was claimed; meanwhile
    process 1 delivers the result. When the edit's retry is due, the member's reply
    still shows the result: its last version is the result."""
    async with proxied_fleet(tmp_path) as p:
        f = p.fleet
        await p.start(0, RUN_JOBS="0", FIRST_PROGRESS_DELAY="0")
        # Process 1 claims one job and one ahead, and edits no progress of its own.
        await p.start(1, MAX_CONCURRENT_JOBS="1", FIRST_PROGRESS_DELAY="60")
        upscale = f.onemin.hold("upscale")
        for member in f.members(1, 2):
            await f.upscale(1, member)
        await wait_until(
            lambda: f.value("SELECT COUNT(*) = 2 FROM jobs WHERE status = 'running'"),
            "two jobs claimed",
            f,
        )
        retry_after = 4.0
        f.discord.fail(WEBHOOK_MESSAGE, 429, method="PATCH", retry_after=retry_after)
        it = await f.upscale(0, f.members(0, 1)[0])
        await f.discord.wait_until(lambda: any(c.status == 429 for c in f.discord.calls), 20)
        limited = next(c for c in f.discord.calls if c.status == 429)
        p.cut(0)
        upscale.release()
        final = await it.final(timeout=30)
        assert final.get("attachments")
        # The edit's retry, if it still comes, is due now.
        await until(
            lambda: time.monotonic() > limited.at + retry_after + 0.5, "the retry's time", f
        )
        result = next(e for e in it.edits if e.get("attachments"))
        last = it.edits[-1]
        assert (last["content"], last["components"]) == (
            result["content"],
            result["components"],
        ), last
        p.heal()
        await f.settled()
        await stop_cleanly(f)


# -- 5. a process started during an outage -------------------------------------------------


async def test_a_process_started_while_the_database_refuses_starts_when_it_answers(
    tmp_path: Path,
) -> None:
    """A process started while its database refuses connections waits for it (one
    WARNING line per try, no traceback) instead of exiting 5, starts once it answers,
    serves /upscale, and stops with status 0."""
    async with proxied_fleet(tmp_path) as p:
        f = p.fleet
        p.proxies[0].refuse()
        seen = len(f.discord.identify_log)
        proc = f.spawn(0, DATABASE_URL=p.url(0), STARTUP_RETRY_SECONDS="60")
        await until(lambda: "try 2 failed" in f.log(0), "a second try", f)
        assert proc.poll() is None
        p.heal()
        await f.connected((0,), seen)
        it = await f.upscale(0, f.members(0, 1)[0])
        assert (await it.final(timeout=30)).get("attachments")
        await stop_cleanly(f)
        tries = [line for line in f.log(0).splitlines() if "Opening the database" in line]
        assert len(tries) >= 2, f.log(0)
        assert all(" WARNING " in line and "connection refused" in line for line in tries)


# -- side tasks through an outage ------------------------------------------------------------


async def test_a_process_listens_for_wake_ups_again_after_an_outage(tmp_path: Path) -> None:
    """Process 0's database restarts: every connection, its LISTEN connection too, is
    reset under it, and new ones are refused for a moment. At its next look it listens
    for the fleet's wake-ups again, and it stops with status 0."""
    async with proxied_fleet(tmp_path) as p:
        f = p.fleet
        await p.start(0)
        p.cut(0)
        await until(lambda: "Database refused" in f.log(0), "the outage seen", f)
        p.heal()
        await until(lambda: "LISTEN connection restored" in f.log(0), "LISTEN again", f)
        await stop(f)
        assert NEVER_RETRIEVED not in f.log(0)


async def test_a_process_showing_places_through_an_outage_logs_single_lines_and_no_lost_task(
    tmp_path: Path,
) -> None:
    """Process 0 shows the places in line of jobs that wait (process 1 runs them, its
    slot held) while its database is away: for its looks at the line and the circuit,
    and for the first progress edits, due meanwhile, whose check before the edit cannot
    read the job. Each thing it was doing is logged as one WARNING line per outage
    window, without a traceback, and at its stop it prints no "Task exception was never
    retrieved"."""
    first_edit = 2.0  # seconds: process 0's first progress edit of a job
    async with proxied_fleet(tmp_path) as p:
        f = p.fleet
        await p.start(0, RUN_JOBS="0", FIRST_PROGRESS_DELAY=str(first_edit))
        await p.start(1, MAX_CONCURRENT_JOBS="1")
        upscale = f.onemin.hold("upscale")
        its = [await f.upscale(0, member) for member in f.members(0, 3)]
        await upscale.reached()
        await wait_until(
            lambda: f.value("SELECT COUNT(*) = 1 FROM jobs WHERE status = 'queued'"),
            "a job waiting in line",
            f,
        )
        p.cut(0)
        edits_due = its[-1].sent_at + first_edit + 0.5
        await until(
            lambda: (
                time.monotonic() > edits_due
                and all(
                    warnings_about(f.log(0), f" {logger}: ")
                    for logger in ("bot.jobs.positions", "bot.onemin.circuit")
                )
            ),
            "process 0 looking at the line and the circuit, its first edits due",
            f,
        )
        p.heal()
        upscale.release()
        for it in its:
            assert (await it.final(timeout=30)).get("attachments")
        await stop_cleanly(f)
        lines = warning_messages(f.log(0))
        assert len(lines) == len(set(lines)), lines


# -- 6. SQLite: a file locked by another program, a full disk -------------------------------


@dataclass
class Solo:
    """One bot process on a SQLite file, and a connection of the test's own to that file
    (another program: a backup, an owner's sqlite3 shell)."""

    discord: DiscordEmulator
    onemin: OneMinEmulator
    tmp: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def db_path(self) -> Path:
        return self.tmp / "data" / "bot.db"

    @property
    def log_path(self) -> Path:
        return self.tmp / "bot.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self, **extra: str) -> None:
        env = {
            "DISCORD_TOKEN": DISCORD_TOKEN,
            "ONEMIN_API_KEY": ONEMIN_KEY,
            "ONEMIN_API_BASE": self.onemin.base_url,
            "DATABASE_URL": f"sqlite:///{self.db_path}",
            "DISCORD_API_BASE": self.discord.api_base,
            "DISCORD_GATEWAY_URL": self.discord.gateway_url,
            "LOG_LEVEL": "INFO",
            "JOB_LEASE_SECONDS": LEASE,
            **timings_env(SHORT_TIMINGS),
            **extra,
        }
        self.proc = start_bot_process(env, self.log_path)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.discord.global_commands or not self.discord.connected_shards():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the bot did not start:\n{self.log()}")
            await asyncio.sleep(0.05)

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached:\n{self.log()}")
            await asyncio.sleep(0.05)

    async def other(self) -> sqlite3.Connection:
        """A connection of another program to the bot's file (use it through
        :meth:`run`: each call runs in a thread)."""
        return await asyncio.to_thread(
            sqlite3.connect, self.db_path, isolation_level=None, check_same_thread=False
        )

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        def read() -> list[tuple[Any, ...]]:
            with contextlib.closing(sqlite3.connect(self.db_path)) as conn:
                return conn.execute(sql).fetchall()

        return await asyncio.to_thread(read)

    async def settled(self) -> None:
        """Until no job is unfinished and no credit reserved."""
        sql = (
            "SELECT (SELECT COUNT(*) FROM jobs WHERE status IN ('intake', 'queued', 'running'))"
            " + (SELECT COUNT(*) FROM ledger_entries WHERE state = 'reserved')"
        )
        deadline = time.monotonic() + 30
        while await self.query(sql) != [(0,)]:
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs still unfinished:\n{self.log()}")
            await asyncio.sleep(0.1)

    async def stop_cleanly(self, errors: Sequence[str] = ()) -> None:
        """SIGTERM: status 0, no traceback or lost task exception, and no ERROR line
        but those that say one of ``errors`` (a full disk is an ERROR: the owner acts)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert await exited(self.proc) == 0, self.log()
        assert_quiet(self.log())
        unexpected = [
            line
            for line in self.log().splitlines()
            if " ERROR " in line and not any(words in line for words in errors)
        ]
        assert unexpected == [], unexpected


async def run(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """One statement on the other program's connection, in a thread."""
    return await asyncio.to_thread(lambda: conn.execute(sql, params).fetchall())


@asynccontextmanager
async def solo(tmp_path: Path) -> AsyncIterator[Solo]:
    async with DiscordEmulator(token=DISCORD_TOKEN) as d, OneMinEmulator(api_key=ONEMIN_KEY) as o:
        d.identify_interval = identify_window(SHORT_TIMINGS)
        s = Solo(d, o, tmp_path)
        try:
            yield s
        finally:
            if s.proc is not None and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait(timeout=10)


def charged(rows: list[tuple[Any, ...]]) -> dict[str, int]:
    """Ledger entries by state."""
    return {str(state): int(count) for state, count in rows}


LEDGER_STATES = "SELECT state, COUNT(*) FROM ledger_entries GROUP BY state"


async def test_a_sqlite_file_locked_past_the_busy_timeout_refuses_commands_and_holds_jobs(
    tmp_path: Path,
) -> None:
    """Another program holds the SQLite file's write lock for longer than the bot's busy
    timeout (shortened to 0.2 s): /upscale is answered with the outage words and charges
    nothing; a job already accepted, back from 1min.ai meanwhile, waits and is delivered
    once, with one upscale, when the lock is released."""
    async with solo(tmp_path) as s:
        await s.start(SQLITE_BUSY_TIMEOUT_MS="200")
        upscale = s.onemin.hold("upscale")
        first = await s.discord.slash("upscale", {"image": s.discord.attachment(png(), "a.png")})
        await upscale.reached()
        other = await s.other()
        try:
            await run(other, "BEGIN IMMEDIATE")
            second = await s.discord.slash(
                "upscale", {"image": s.discord.attachment(png(), "b.png")}, member=s.discord.bob
            )
            assert (await second.final())["content"] == DATABASE_UNREACHABLE.render("en-US")
            upscale.release()
            await s.until(
                lambda: "locked by another connection while recording a job's stage" in s.log(),
                "the job waiting for the lock",
            )
            await run(other, "ROLLBACK")
        finally:
            await asyncio.to_thread(other.close)
        assert (await first.final(timeout=30)).get("attachments")
        await s.settled()
        assert charged(await s.query(LEDGER_STATES)) == {"committed": 1}
        assert await s.query("SELECT member_id, status FROM jobs") == [
            (s.discord.alice.user.id, "delivered")
        ]
        assert s.onemin.upscales == 1
        await s.stop_cleanly()
        assert len(warnings_about(s.log(), "Command upscale .*database did not answer")) == 1


async def test_a_full_sqlite_disk_is_said_in_words_and_loses_or_double_charges_nothing(
    tmp_path: Path,
) -> None:
    """The bot's SQLite file cannot grow (its disk is full) and another program has taken
    the last free pages. /upscale of an image the bot cannot store is answered with the
    full-disk words ("Nothing was charged"), and nothing is charged for it, even once
    space is freed; a job accepted before, back from 1min.ai meanwhile, is delivered
    once and charged once."""
    async with solo(tmp_path) as s:
        await s.start(SQLITE_NO_GROWTH="1")
        other = await s.other()
        try:
            # Room for the first job: pages the bot may reuse, made by the other program.
            await run(other, "CREATE TABLE filler (data BLOB)")
            await run(other, "INSERT INTO filler VALUES (zeroblob(?))", (4_000_000,))
            await run(other, "DELETE FROM filler")
            upscale = s.onemin.hold("upscale")
            first = await s.discord.slash(
                "upscale", {"image": s.discord.attachment(noise_png((256, 256)), "a.png")}
            )
            await upscale.reached()
            # The disk fills up: the other program takes every free page.
            free = (await run(other, "PRAGMA freelist_count"))[0][0]
            page = (await run(other, "PRAGMA page_size"))[0][0]
            await run(other, "INSERT INTO filler VALUES (zeroblob(?))", (free * page,))
            second = await s.discord.slash(
                "upscale",
                {"image": s.discord.attachment(noise_png((256, 256), seed=2), "b.png")},
                member=s.discord.bob,
            )
            assert (await second.final())["content"] == DATABASE_FULL.render("en-US")
            upscale.release()
            assert (await first.final(timeout=30)).get("attachments")
            await run(other, "DELETE FROM filler")  # the owner frees space
        finally:
            await asyncio.to_thread(other.close)
        await s.settled()
        assert await s.query(
            "SELECT member_id, state, COUNT(*) FROM ledger_entries GROUP BY member_id, state"
            " ORDER BY member_id"
        ) == [(s.discord.alice.user.id, "committed", 1), (s.discord.bob.user.id, "refunded", 1)]
        assert await s.query("SELECT member_id FROM jobs WHERE status = 'delivered'") == [
            (s.discord.alice.user.id,)
        ]
        assert len(results(s.discord)) == 1
        assert s.onemin.upscales == 1
        await s.stop_cleanly(errors=["the database's disk is full", "Database disk full"])


def results(discord: DiscordEmulator) -> list[dict[str, Any]]:
    """Every posted result (a message with an attachment), wherever it was posted."""
    return [m for m in discord.channel_messages() if m.get("attachments")]
