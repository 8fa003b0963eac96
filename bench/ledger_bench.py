"""Ledger throughput: reserve+commit pairs per second and latency, on SQLite and PostgreSQL.

Run: ``python -m bench.ledger_bench [--pairs N] [--pg URL] [--json PATH]``.

Prints two tables:

- one process on a SQLite file at concurrency 1 and 50 (each pair is one ``reserve``
  then one ``commit``, as a delivered upscale does);
- two processes at concurrency 50 each, one guild, 500 members, on a SQLite file and on
  PostgreSQL (a fresh schema, dropped afterwards), racing either the members' limits
  (each member's limit is 90 % of their share of the attempts) or a server budget (90 %
  of all attempts). *overspend* is how many credits went past a limit (must be 0) and
  *granted* must equal the sum of the limits. Reservations read usage counters (two rows)
  rather than summing the period's entries, so the figures do not fall as they grow.

PostgreSQL is skipped with a note when the server (``--pg``, default the test server)
cannot be reached. The URL is never printed (it may hold a password).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bot.db import PostgresDatabase, SqliteDatabase, open_database
from bot.ledger import Ledger, Reservation

GUILD = 1
MEMBERS = 500  # spread over many members, as in a busy server
PROCESSES = 2
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def _summary(latencies: list[float]) -> dict[str, float]:
    latencies = sorted(latencies)
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
    }


async def _pairs(ledger: Ledger, concurrency: int, pairs: int) -> tuple[int, list[float]]:
    """Run ``pairs`` reserve+commit attempts on ``concurrency`` tasks; granted, latencies."""
    latencies: list[float] = []
    counter = iter(range(pairs))
    granted = 0

    async def worker() -> None:
        nonlocal granted
        for i in counter:
            start = time.perf_counter()
            outcome = await ledger.reserve(GUILD, 10_000 + i % MEMBERS, (501, 502), 1)
            if isinstance(outcome, Reservation):
                await ledger.commit(outcome.id)
                granted += 1
                latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return granted, latencies


async def run_single(concurrency: int, pairs: int, path: Path) -> dict[str, Any]:
    db = await SqliteDatabase.open_file(path)
    ledger = Ledger(db, default_limit=1_000_000, default_period="daily")
    began = time.perf_counter()
    _, latencies = await _pairs(ledger, concurrency, pairs)
    elapsed = time.perf_counter() - began
    await db.close()
    return {
        "engine": "sqlite",
        "processes": 1,
        "concurrency": concurrency,
        "pairs": pairs,
        "pairs_per_s": pairs / elapsed,
        **_summary(latencies),
    }


async def worker_main(
    url: str, schema: str | None, concurrency: int, pairs: int, limit: int
) -> None:
    """One of the racing processes: waits for "go" on stdin, prints its figures as JSON."""
    db = await open_database(url, schema=schema)
    ledger = Ledger(db, default_limit=limit, default_period="daily")
    await ledger.guild_settings(GUILD)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    began = time.time()
    granted, latencies = await _pairs(ledger, concurrency, pairs)
    ended = time.time()
    await db.close()
    print(json.dumps({"began": began, "ended": ended, "granted": granted, "lat": latencies}))


async def run_two_processes(
    engine: str, url: str, schema: str | None, concurrency: int, pairs: int, race: str
) -> dict[str, Any]:
    """PROCESSES processes, ``pairs`` attempts each, racing member limits or a budget."""
    db = await open_database(url, schema=schema)
    attempts = PROCESSES * pairs
    if race == "member":
        limit = attempts * 9 // 10 // MEMBERS
        budget = limit * MEMBERS
    else:
        limit, budget = 1_000_000, attempts * 9 // 10
    try:
        ledger = Ledger(db, default_limit=limit, default_period="daily")
        if race == "server":
            await ledger.set_server_budget(GUILD, 0, budget)
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.ledger_bench",
                "--worker",
                url,
                schema or "",
                str(concurrency),
                str(pairs),
                str(limit),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            for _ in range(PROCESSES)
        ]
        for proc in procs:
            assert proc.stdout is not None
            if (await proc.stdout.readline()).strip() != b"ready":
                raise RuntimeError("a bench worker did not start")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        results = [json.loads((await proc.communicate())[0]) for proc in procs]
        used = (await ledger.server_usage(GUILD)).used
        over_members = await db.fetchone(
            "SELECT CAST(COALESCE(SUM(used - ?), 0) AS BIGINT) FROM (SELECT member_id,"
            " SUM(cost) AS used FROM ledger_entries WHERE state IN ('reserved', 'committed')"
            " GROUP BY member_id) m WHERE used > ?",
            (limit, limit),
        )
        assert over_members is not None
    finally:
        if isinstance(db, PostgresDatabase) and schema:
            await db.drop_schema()
        await db.close()
    elapsed = max(r["ended"] for r in results) - min(r["began"] for r in results)
    granted = sum(r["granted"] for r in results)
    return {
        "engine": engine,
        "race": race,
        "processes": PROCESSES,
        "concurrency": concurrency,
        "pairs": granted,
        "attempts": PROCESSES * pairs,
        "pairs_per_s": granted / elapsed,
        "budget": budget,
        "granted": granted,
        "overspend": max(0, used - budget) + int(over_members[0]),
        **_summary([lat for r in results for lat in r["lat"]]),
    }


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=4000, help="attempts per process")
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL URL (never printed)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        url, schema, concurrency, pairs, limit = args.worker
        await worker_main(url, schema or None, int(concurrency), int(pairs), int(limit))
        return 0
    single: list[dict[str, Any]] = []
    fleet: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for concurrency in (1, 50):
            path = Path(tmp) / f"ledger-{concurrency}.db"
            single.append(await run_single(concurrency, args.pairs, path))
        for race in ("member", "server"):
            sqlite_url = f"sqlite:///{Path(tmp) / f'fleet-{race}.db'}"
            fleet.append(await run_two_processes("sqlite", sqlite_url, None, 50, args.pairs, race))
            schema = f"bench_{uuid.uuid4().hex[:12]}"
            try:
                fleet.append(
                    await run_two_processes("postgresql", args.pg, schema, 50, args.pairs, race)
                )
            except (OSError, ConnectionError) as exc:
                print(f"PostgreSQL skipped: cannot connect ({type(exc).__name__})")
    print("One process, SQLite file")
    print(f"{'concurrency':>11} {'pairs':>7} {'pairs/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for r in single:
        print(
            f"{r['concurrency']:>11} {r['pairs']:>7} {r['pairs_per_s']:>9.0f}"
            f" {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
        )
    print(f"\n{PROCESSES} processes x concurrency 50, one guild, {MEMBERS} members")
    print(
        f"{'engine':>10} {'race':>6} {'attempts':>8} {'granted':>7} {'budget':>6} {'overspend':>9}"
        f" {'pairs/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
    )
    for r in fleet:
        print(
            f"{r['engine']:>10} {r['race']:>6} {r['attempts']:>8} {r['granted']:>7}"
            f" {r['budget']:>6}"
            f" {r['overspend']:>9} {r['pairs_per_s']:>8.0f} {r['p50_ms']:>7.2f}"
            f" {r['p99_ms']:>7.2f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"ledger": single, "ledger_fleet": fleet}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
