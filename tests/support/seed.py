"""A year of history, written fast: for plan tests (100,000 entries and jobs) and for
benchmarks (a million of each on SQLite).

:func:`seed_ledger` fills a freshly migrated database with what a busy server leaves
behind: ``entries`` reservations over ``days`` days spread over ``members`` members of
one guild (most committed, some refunded, a few still in flight, some marked by resets),
grants, audit rows and budget alerts, then the rollups of migration 0009 computed from
those entries by the migration's own step. Rows go in by ``executemany`` in one
transaction per table on SQLite (its indexes built after the rows) and by ``COPY`` on
PostgreSQL.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from bot.db import Database, PostgresDatabase
from bot.db.steps import backfill_usage_rollups

CHUNK_ROWS = 50_000  # rows per executemany (SQLite), so the rows are made as they go in
SEED_CACHE_KIB = 512 * 1024  # SQLite page cache while seeding: indexes are built in memory
REFUNDED_PERCENT = 8  # the rest is committed
RESET_PERCENT = 3  # entries a moderator's /quota reset marked
IN_FLIGHT = 20  # reservations not yet settled, on the last day
ENTRY_COLUMNS = (
    "id",
    "guild_id",
    "member_id",
    "cost",
    "state",
    "reason",
    "job_id",
    "created_at",
    "settled_at",
    "reset_at",
)


@dataclass(frozen=True, slots=True)
class History:
    """What to seed: sizes, and the guild and the last day they belong to."""

    entries: int = 100_000
    members: int = 2_000
    days: int = 365
    grants: int = 2_000
    audit_rows: int = 2_000
    guild_id: int = 1
    last_day: date = date(2026, 3, 15)
    first_member: int = 10_000  # member ids are first_member, first_member + 1, ...
    random_seed: int = 17
    jobs: int = 0  # finished jobs over the same days (seed_jobs), besides a few unfinished
    crop_days: int = 8  # the last days whose delivered jobs still have Compare crops


def _stamp(day: date, second: int, micro: int) -> str:
    hours, rest = divmod(second, 3600)
    return f"{day.isoformat()} {hours:02d}:{rest // 60:02d}:{rest % 60:02d}.{micro:06d}"


def _entries(h: History, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    first_day = h.last_day - timedelta(days=h.days - 1)
    for i in range(h.entries):
        in_flight = i >= h.entries - IN_FLIGHT
        day = h.last_day if in_flight else first_day + timedelta(days=rng.randrange(h.days))
        created = _stamp(day, rng.randrange(86_400), rng.randrange(1_000_000))
        member = h.first_member + rng.randrange(h.members)
        roll = rng.randrange(100)
        if in_flight:
            state, reason, settled = "reserved", None, None
        elif roll < REFUNDED_PERCENT:
            state, reason, settled = "refunded", "unavailable", created
        else:
            state, reason, settled = "committed", None, created
        reset = created if roll >= 100 - RESET_PERCENT else None
        yield (
            f"{i:032x}",
            h.guild_id,
            member,
            1,
            state,
            reason,
            f"job{i}",
            created,
            settled,
            reset,
        )


def _grants(h: History, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    for _ in range(h.grants):
        day = h.last_day - timedelta(days=rng.randrange(h.days))
        stamp = _stamp(day, rng.randrange(86_400), 0)
        member = h.first_member + rng.randrange(h.members)
        yield (h.guild_id, member, rng.choice((5, 10, -2)), stamp, 99, stamp)


def _audit(h: History, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    for n in range(h.audit_rows):
        day = h.last_day - timedelta(days=h.days - 1 - n * h.days // max(1, h.audit_rows))
        stamp = _stamp(day, rng.randrange(86_400), 0)
        yield (h.guild_id, 99, "member_limit", f"member:{h.first_member + n}", None, "5", stamp)


def _alerts(h: History) -> Iterator[tuple[Any, ...]]:
    for n in range(h.days):
        day = (h.last_day - timedelta(days=n)).isoformat()
        yield (h.guild_id, f"{day} 00:00:00.000000", 80, f"{day} 12:00:00.000000")


async def _copy(db: Database, table: str, columns: Sequence[str], rows: Iterator[Any]) -> None:
    """Write ``rows`` into ``table``: COPY on PostgreSQL, chunked executemany on SQLite."""
    if isinstance(db, PostgresDatabase):
        async with db.pool.acquire() as conn:
            await conn.copy_records_to_table(table, records=list(rows), columns=list(columns))
        return
    # Building an index once after the load costs far less than growing it row by row:
    # the table's own index definitions are dropped, then run again (in one transaction).
    indexes = await db.fetchall(
        "SELECT name, sql FROM sqlite_master"
        " WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
        (table,),
    )
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
    async with db.transaction() as tx:
        for index in indexes:
            await tx.execute(f"DROP INDEX {index['name']}")
        chunk: list[Any] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) == CHUNK_ROWS:
                await tx.executemany(sql, chunk)
                chunk = []
        await tx.executemany(sql, chunk)
        for index in indexes:
            await tx.execute(index["sql"])


async def seed_ledger(db: Database, history: History = History()) -> None:
    """Fill a freshly migrated, empty database with ``history`` (see the module
    docstring), then its rollups; on PostgreSQL, gather statistics for the planner."""
    rng = random.Random(history.random_seed)
    if not isinstance(db, PostgresDatabase):
        cache = await db.fetchone("PRAGMA cache_size")
        await db.write(f"PRAGMA cache_size = -{SEED_CACHE_KIB}")
    created = datetime.combine(history.last_day, datetime.min.time(), UTC) - timedelta(
        days=history.days
    )
    await db.write(
        "INSERT INTO guild_settings (guild_id, default_limit, period, created_at)"
        " VALUES (?, 10, 'daily', ?)",
        (history.guild_id, created.strftime("%Y-%m-%d %H:%M:%S.%f")),
    )
    await _copy(db, "ledger_entries", ENTRY_COLUMNS, _entries(history, rng))
    grant_columns = ("guild_id", "member_id", "amount", "period_start", "actor_id", "created_at")
    await _copy(db, "grants", grant_columns, _grants(history, rng))
    audit_columns = ("guild_id", "actor_id", "action", "target", "old_value", "new_value")
    await _copy(db, "audit_log", (*audit_columns, "created_at"), _audit(history, rng))
    alert_columns = ("guild_id", "period_start", "threshold", "created_at")
    await _copy(db, "budget_alerts", alert_columns, _alerts(history))
    async with db.transaction() as tx:
        await backfill_usage_rollups(tx)
    if not isinstance(db, PostgresDatabase):
        assert cache is not None
        await db.write(f"PRAGMA cache_size = {int(cache[0])}")
    if isinstance(db, PostgresDatabase):
        tables = await db.fetchall(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
        await db.write(f"ANALYZE {', '.join(r[0] for r in tables)}")


# -- jobs ------------------------------------------------------------------------------------

JOB_COLUMNS = (
    "id",
    "guild_id",
    "channel_id",
    "member_id",
    "reservation_id",
    "status",
    "stage",
    "output_format",
    "source_name",
    "source_format",
    "input_format",
    "input_bytes",
    "input_width",
    "input_height",
    "original_width",
    "original_height",
    "notes",
    "context",
    "reply_token",
    "asset_path",
    "record_id",
    "result_url",
    "output_width",
    "output_height",
    "output_bytes",
    "error_kind",
    "message_id",
    "lease_owner",
    "lease_expires",
    "claims",
    "resume_notice",
    "trail",
    "created_at",
    "started_at",
    "finished_at",
)
# Unfinished jobs seeded besides the history: (status, stage, how many).
UNFINISHED_JOBS = (
    ("intake", "receiving", 3),
    ("queued", "queued", 12),
    ("running", "uploading", 2),
    ("running", "upscaling", 2),
)
CHANNEL_ID = 555
PROCESS = "seeded-host/all:1.abcdef"
CROP_BYTES = 4_000  # a stored Compare crop, roughly
RECENT_CALLS = 300  # rows in the 1min.ai rate window


_TRAIL_STAGES = ("receiving", "queued", "claimed", "uploading", "upscaling", "downloading")


def _job_trail(at: float, outcome: str) -> str:
    """A trail as bot.jobs.store.trail_line writes it (formatted directly: a million of
    them are made when seeding a year)."""
    steps = [*((s, n * 0.4) for n, s in enumerate(_TRAIL_STAGES)), ("delivering", 2.6)]
    steps.append((outcome, 3.0))
    return "".join(f'["{s}", {at + d:.3f}, "{PROCESS}", ""]\n' for s, d in steps)


def _jobs(h: History, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    first_day = h.last_day - timedelta(days=h.days - 1)
    for i in range(h.jobs):
        day = first_day + timedelta(days=rng.randrange(h.days))
        second = rng.randrange(86_000)
        created = _stamp(day, second, rng.randrange(1_000_000))
        finished = _stamp(day, second + 3, 0)
        at = datetime.combine(day, datetime.min.time(), UTC).timestamp() + second
        roll = rng.randrange(100)
        status, kind = (
            ("delivered", None)
            if roll < 90
            else ("failed", "unavailable")
            if roll < 98
            else ("cancelled", "cancelled")
        )
        side = rng.choice((256, 512, 640, 1024))
        delivered = status == "delivered"
        yield (
            f"{rng.getrandbits(128):032x}",
            h.guild_id,
            CHANNEL_ID,
            h.first_member + rng.randrange(h.members),
            f"{i:032x}",
            status,
            "done" if delivered else "queued",
            "png",
            "photo.png",
            "png",
            "png",
            side * side,
            side,
            side,
            side,
            side,
            "[]",
            None,
            None,
            "images/seed.png",
            f"{rng.getrandbits(128):032x}",
            None,
            side * 4 if delivered else None,
            side * 4 if delivered else None,
            side * side * 6 if delivered else None,
            kind,
            rng.getrandbits(60) if delivered else None,
            None,
            None,
            1,
            0,
            _job_trail(at, status),
            created,
            created,
            finished,
        )


def _unfinished(h: History, rng: random.Random, now: float) -> Iterator[tuple[Any, ...]]:
    day = h.last_day
    for status, stage, count in UNFINISHED_JOBS:
        for _ in range(count):
            created = _stamp(day, rng.randrange(86_000), 0)
            owned = status != "queued"
            yield (
                f"{rng.getrandbits(128):032x}",
                h.guild_id,
                CHANNEL_ID,
                h.first_member + rng.randrange(h.members),
                f"u{rng.getrandbits(64):x}",
                status,
                stage,
                "png",
                "photo.png",
                *(
                    ("png", "png", 4096, 64, 64, 64, 64, "[]")
                    if status != "intake"
                    else (None,) * 8
                ),
                '{"app": 1, "at": 0}',
                "token",
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                PROCESS if owned else None,
                now + 30 if owned else None,
                1 if status == "running" else 0,
                0,
                "",
                created,
                created if status == "running" else None,
                None,
            )


async def seed_jobs(
    db: Database, history: History, *, now: float | None = None, live: bool = True
) -> None:
    """Add ``history.jobs`` finished jobs over its days (with their trails) and the
    Compare crops of the last ``crop_days`` days' delivered jobs; with ``live``, also
    what a busy moment leaves (a few jobs in each unfinished status, their inputs
    stored, and a full 1min.ai rate window): for plans, not for a bot to start on."""
    rng = random.Random(history.random_seed + 1)
    moment = time.time() if now is None else now
    since = _stamp(history.last_day - timedelta(days=history.crop_days - 1), 0, 0)
    recent: list[tuple[str, str]] = []  # (id, created_at) of delivered jobs with crops

    def finished() -> Iterator[tuple[Any, ...]]:
        for row in _jobs(history, rng):
            if row[5] == "delivered" and row[32] >= since:
                recent.append((row[0], row[32]))
            yield row

    cache = None
    if not isinstance(db, PostgresDatabase):
        cache = await db.fetchone("PRAGMA cache_size")
        await db.write(f"PRAGMA cache_size = -{SEED_CACHE_KIB}")
    await _copy(db, "jobs", JOB_COLUMNS, finished())
    if cache is not None:
        await db.write(f"PRAGMA cache_size = {int(cache[0])}")
    open_jobs = list(_unfinished(history, rng, moment)) if live else []
    await _copy(db, "jobs", JOB_COLUMNS, iter(open_jobs))
    inputs = [(row[0], b"\x89PNG seeded input") for row in open_jobs if row[5] != "intake"]
    await _copy(db, "job_inputs", ("job_id", "data"), iter(inputs))
    crops = (
        (job_id, b"c" * CROP_BYTES, b"", "[[0, 0, 64, 64], [4.0, 4.0]]", created)
        for job_id, created in recent
    )
    crop_columns = ("job_id", "input_crop", "result_crop", "box", "created_at")
    await _copy(db, "compare_crops", crop_columns, crops)
    calls = ((moment - rng.random() * 60,) for _ in range(RECENT_CALLS if live else 0))
    await _copy(db, "onemin_calls", ("at",), calls)
    if isinstance(db, PostgresDatabase):
        await db.write("ANALYZE jobs, job_inputs, compare_crops, onemin_calls")
