"""A year of history against an empty database, in one run: does age cost anything?

The bot runs as its own process (``tests.bot_process``, what ``python -m bot`` runs)
against the emulators in this process, twice on each database: once on an empty one,
once on one seeded with a year of history (tests/support/seed: by default on SQLite a
million finished jobs with their trails and a million ledger entries over 365 days,
25,000 members in one server, 20,000 audit rows; on PostgreSQL a smaller seed). For
each, it measures what the owner and the members feel:

- ``startup_s``: from the process starting to its shard connected and commands synced;
- ``idle_cpu_pct`` and ``idle_round_trips_s``: the idle bot's CPU (its process, from
  /proc) and its database round trips per second (besides lease renewal, which only
  runs while it holds jobs), over ``--idle`` seconds with nothing to do;
- ``burst_s`` and ``ack_p99_ms``: 40 upscales from 20 members at once, until all are
  delivered, and the 99th percentile of their acknowledgements (the medians of five
  such bursts, with 1min.ai's pacing lifted so that they are not spaced by its rate
  window);
- ``credits_p99_ms``, ``quota_show_p99_ms``, ``usage_<period>_p99_ms`` (and p50): the
  commands a moderator or member runs, from the interaction to its answer;
- ``sigterm_s``: from SIGTERM to the process's exit.

The seeded run keeps every finished job (``JOB_RETENTION_DAYS=3650``) so that the
hot paths are measured with the whole year in the tables; ``--purge`` then measures
the housekeeping that trims such a database to the default 30 days.

Run from the project root: ``python -m bench.history [--engine sqlite|postgresql|both]
[--jobs 1000000] [--entries 1000000] [--members 25000] [--pg-scale 0.1]``. Seeding a
million of each on SQLite takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import statistics
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import emit, percentile, table
from bot.db import open_database
from tests.bot_process import start_bot_process
from tests.e2e.test_restart import World, stop, world
from tests.emulators.discord import Member, User
from tests.support.databases import PG_URL
from tests.support.images import png
from tests.support.seed import History, seed_jobs, seed_ledger
from tests.support.timings import REAL_TIMINGS

BURST_MEMBERS = 20
BURST_EACH = 2
BURST_ROUNDS = 5
COMMAND_RUNS = 20  # each command this many times (p99 of 20 is their maximum)
PERIODS = ("daily", "weekly", "monthly", "lifetime")
FIRST_MEMBER = 700_000_000_000_000_000  # seeded member ids (snowflake-sized)
AUDIT_ROWS = 20_000


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


async def seed(url: str, schema: str | None, history: History) -> float:
    """Seed a fresh database; returns the seconds it took."""
    started = time.perf_counter()
    db = await open_database(url, schema=schema)
    try:
        await seed_ledger(db, history)
        await seed_jobs(db, history, live=False)
    finally:
        await db.close()
    return time.perf_counter() - started


async def measure(w: World, env: dict[str, str], idle: float) -> dict[str, Any]:
    """Start the bot on ``env``'s database and measure it (see the module docstring)."""
    probe = w.tmp / f"probe-{uuid.uuid4().hex[:8]}.json"
    env = {**env, "WATCH_PROBE_FILE": str(probe), "LOG_LEVEL": "WARNING"}
    identifies = w.discord.identifies
    started = time.perf_counter()
    proc = start_bot_process(w.env(**env), w.tmp / "bot.log")
    try:
        while w.discord.identifies == identifies or not w.discord.global_commands:
            if proc.poll() is not None or time.perf_counter() - started > 300:
                raise AssertionError(f"bot did not start:\n{w.log()}")
            await asyncio.sleep(0.01)
        await w.discord.wait_connected()
        startup = time.perf_counter() - started
        await asyncio.sleep(2.0)  # let start-up work (recovery, first looks) finish
        cpu_before, idle_from = cpu_seconds(proc.pid), time.time()
        await asyncio.sleep(idle)
        idle_cpu = (cpu_seconds(proc.pid) - cpu_before) / idle * 100
        idle_to = time.time()
        burst = await upscale_burst(w)
        commands = await run_commands(w)
        stopping = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 60)
        sigterm = time.perf_counter() - stopping
    finally:
        stop(proc)
    samples = json.loads(probe.read_text()) if probe.exists() else []
    trips = [s for s in samples if idle_from <= s[0] <= idle_to]
    round_trips = (
        (trips[-1][4] - trips[0][4]) / (trips[-1][0] - trips[0][0]) if len(trips) > 1 else -1.0
    )
    return {
        "startup_s": startup,
        "idle_cpu_pct": idle_cpu,
        "idle_round_trips_s": round_trips,
        **burst,
        **commands,
        "sigterm_s": sigterm,
    }


async def upscale_burst(w: World) -> dict[str, Any]:
    """``BURST_ROUNDS`` bursts, each from new members: the medians of the bursts' times
    and of their acknowledgements' p99 (one 40-job burst's p99, nearly its maximum,
    varies from 13 to 36 ms between rounds on the same database here)."""
    image = png((64, 64))
    times: list[float] = []
    ack_p99s: list[float] = []
    delivered = jobs = 0
    for round_no in range(BURST_ROUNDS):
        members = [w.discord.add_member(f"burst{round_no}-{i}") for i in range(BURST_MEMBERS)]
        started = time.perf_counter()
        its = await asyncio.gather(
            *(
                w.discord.slash(
                    "upscale", {"image": w.discord.attachment(image, f"{n}.png")}, member=m
                )
                for m in members
                for n in range(BURST_EACH)
            )
        )
        finals = await asyncio.gather(*(it.final(timeout=300) for it in its))
        times.append(time.perf_counter() - started)
        ack_p99s.append(percentile([it.ack_latency or 0.0 for it in its], 0.99))
        jobs += len(its)
        delivered += sum(bool(f.get("attachments")) for f in finals)
        await asyncio.sleep(1.0)  # let the round's settlement and edits finish
    return {
        "burst_jobs": jobs,
        "burst_delivered": delivered,
        "burst_s": statistics.median(times),
        "ack_p99_ms": statistics.median(ack_p99s) * 1000,
    }


async def timed(w: World, runs: int, name: str, options: dict[str, Any], **kw: Any) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        it = await w.discord.slash(name, options, **kw)
        await it.final(timeout=60)
        seconds.append(time.perf_counter() - started)
    return seconds


async def run_commands(w: World) -> dict[str, float]:
    """/credits (a member with a year of history), /quota show and /usage per period."""
    member = w.discord.guild.members[-1]  # a seeded member (added last, see run())
    out: dict[str, float] = {}
    credits = await timed(w, COMMAND_RUNS, "credits", {}, member=member)
    quota = await timed(w, COMMAND_RUNS, "quota", {}, subcommand="show", member=w.discord.moderator)
    for key, values in (("credits", credits), ("quota_show", quota)):
        out[f"{key}_p50_ms"] = statistics.median(values) * 1000
        out[f"{key}_p99_ms"] = percentile(values, 0.99) * 1000
    for period in PERIODS:
        values = await timed(
            w, COMMAND_RUNS // 2, "usage", {"period": period}, member=w.discord.moderator
        )
        out[f"usage_{period}_p50_ms"] = statistics.median(values) * 1000
        out[f"usage_{period}_p99_ms"] = percentile(values, 0.99) * 1000
    return out


async def engine_run(engine: str, history: History, idle: float) -> list[dict[str, Any]]:
    """The empty and the seeded measurement on one engine."""
    rows = []
    for seeded in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            async with world(Path(tmp), timings=REAL_TIMINGS) as w:
                guild = w.discord.guild
                h = replace(history, guild_id=guild.id)
                # The member whose /credits is timed: one of the seeded members.
                guild.members.append(Member(User(h.first_member + 7, "seeded"), [guild.everyone]))
                env: dict[str, str] = {
                    "JOB_RETENTION_DAYS": "3650",
                    "ONEMIN_REQUESTS_PER_MINUTE": "100000",  # 5 bursts are 400 calls
                }
                schema = None
                seconds = 0.0
                if engine == "postgresql":
                    schema = f"hist_{uuid.uuid4().hex[:12]}"
                    sep = "&" if "?" in PG_URL else "?"
                    env["DATABASE_URL"] = f"{PG_URL}{sep}search_path={schema}"
                    db_url = PG_URL
                else:
                    db_url = f"sqlite:///{w.db_path}"
                try:
                    if seeded:
                        seconds = await seed(db_url, schema, h)
                        # A year-old file is on disk, not a GB of dirty pages that the
                        # kernel writes back while the bot is measured.
                        await asyncio.to_thread(os.sync)
                    else:
                        db = await open_database(db_url, schema=schema)
                        await db.close()
                    result = await measure(w, env, idle)
                finally:
                    if schema is not None:
                        conn = await asyncpg.connect(PG_URL)
                        try:
                            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                        finally:
                            await conn.close()
                size = w.db_path.stat().st_size if engine == "sqlite" and w.db_path.exists() else 0
            rows.append(
                {
                    "engine": engine,
                    "database": "seeded" if seeded else "empty",
                    "jobs": h.jobs if seeded else 0,
                    "entries": h.entries if seeded else 0,
                    "seed_s": seconds,
                    "db_mb": size / 1e6,
                    **result,
                }
            )
    return rows


FIGURES = (
    "idle_cpu_pct",
    "idle_round_trips_s",
    "burst_s",
    "ack_p99_ms",
    "startup_s",
    "sigterm_s",
    "credits_p99_ms",
    "quota_show_p99_ms",
    *(f"usage_{p}_p99_ms" for p in PERIODS),
    "usage_lifetime_p50_ms",
)


def comparison(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each figure as empty -> seeded -> ratio, per engine."""
    out = []
    for engine in dict.fromkeys(r["engine"] for r in rows):
        empty = next(r for r in rows if r["engine"] == engine and r["database"] == "empty")
        seeded = next(r for r in rows if r["engine"] == engine and r["database"] == "seeded")
        for figure in FIGURES:
            a, b = float(empty[figure]), float(seeded[figure])
            out.append(
                {
                    "engine": engine,
                    "figure": figure,
                    "empty": a,
                    "seeded": b,
                    "ratio": b / a if a else float("nan"),
                }
            )
    return out


async def purge(history: History) -> dict[str, Any]:
    """Trim a seeded SQLite year to 30 days with the bot's housekeeping, timing it."""
    from bot.jobs.recovery import PURGE_BATCH, PURGE_PAUSE
    from bot.jobs.store import JobStore

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "year.db"
        await seed(f"sqlite:///{path}", None, history)
        db = await open_database(f"sqlite:///{path}")
        try:
            store = JobStore(db, owner="bench")
            before = datetime.now(UTC) - timedelta(days=30)
            cutoff = before.strftime("%Y-%m-%d %H:%M:%S.%f")
            started = time.perf_counter()
            deleted = batches = 0
            slowest = 0.0
            while True:
                at = time.perf_counter()
                n = await store.housekeeping.purge_finished(cutoff, PURGE_BATCH)
                slowest = max(slowest, time.perf_counter() - at)
                deleted += n
                batches += 1
                if n < PURGE_BATCH:
                    break
            work = time.perf_counter() - started
        finally:
            await db.close()
        size_before = path.stat().st_size
        vacuum_started = time.perf_counter()
        conn = await asyncio.to_thread(sqlite3.connect, str(path))
        await asyncio.to_thread(conn.execute, "VACUUM")
        await asyncio.to_thread(conn.close)
        vacuum = time.perf_counter() - vacuum_started
        size_after = path.stat().st_size
    return {
        "deleted": deleted,
        "batches": batches,
        "delete_s": work,
        "with_pauses_s": work + batches * PURGE_PAUSE,
        "slowest_batch_ms": slowest * 1000,
        "db_mb_before_vacuum": size_before / 1e6,
        "vacuum_s": vacuum,
        "db_mb_after_vacuum": size_after / 1e6,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--members", type=int, default=25_000)
    parser.add_argument("--pg-scale", type=float, default=0.1, help="PostgreSQL seed / SQLite's")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle measured")
    parser.add_argument("--purge", action="store_true", help="also time the retention purge")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    today = datetime.now(UTC).date()
    history = History(
        entries=args.entries,
        members=args.members,
        days=365,
        grants=2_000,
        audit_rows=AUDIT_ROWS,
        last_day=today,
        first_member=FIRST_MEMBER,
        jobs=args.jobs,
    )
    rows: list[dict[str, Any]] = []
    if args.engine in ("sqlite", "both"):
        rows += await engine_run("sqlite", history, args.idle)
    if args.engine in ("postgresql", "both"):
        small = replace(
            history,
            jobs=int(history.jobs * args.pg_scale),
            entries=int(history.entries * args.pg_scale),
            members=max(1000, int(history.members * args.pg_scale)),
            audit_rows=int(AUDIT_ROWS * args.pg_scale),
        )
        rows += await engine_run("postgresql", small, args.idle)
    result: dict[str, Any] = {"runs": rows, "comparison": comparison(rows)}
    if args.purge:
        result["purge"] = await purge(history)
    text = table(comparison(rows), ["engine", "figure", "empty", "seeded", "ratio"])
    text += "\n\n" + table(
        rows, ["engine", "database", "jobs", "entries", "seed_s", "db_mb", "burst_delivered"]
    )
    if "purge" in result:
        text += "\n\npurge to 30 days (SQLite):\n" + table([result["purge"]], list(result["purge"]))
    emit("history", result, args.json, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
