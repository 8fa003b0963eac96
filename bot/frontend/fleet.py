"""What the processes of a fleet coordinate through the database besides jobs and pacing.

A fleet is several bot processes on one PostgreSQL database, each running some of the
bot's shards (``SHARD_COUNT``/``SHARD_IDS``). Two things must happen once per fleet,
not once per process, and are decided here:

* IDENTIFY pacing (:class:`IdentifyGate`). Discord accepts one IDENTIFY per concurrency
  bucket (``shard_id % max_concurrency``, ``max_concurrency`` from ``GET /gateway/bot``)
  every 5 seconds for the whole bot, and answers overlapping ones with an invalid
  session; too many session starts reset the token. Before each IDENTIFY a process takes
  its bucket's turn: under the lock ``identify:<bucket>`` it reads the bucket's row in
  ``identify_slots``, waits until its ``not_before`` and moves it
  :data:`bot.timings.IDENTIFY_SPACING` seconds on. On SQLite (one process) the same table paces
  restarts, which would otherwise identify again too soon.

* Command sync (:func:`sync_once`). The process that finds the stored hash of the command
  set differ from its own (or older than :data:`SYNC_MAX_AGE`) syncs, under the lock
  ``commands:<scope>``, and stores the hash only once Discord accepted the commands.
  Processes starting together wait on the lock, then find the hash stored and skip; if
  the syncing process dies first, its lock goes with its connection and the next one
  syncs. A deploy that changes the commands is synced by its first process, whichever
  shard it runs. (Syncing only from the process of shard 0 was the alternative: it never
  syncs while that process is down, and re-syncs on every restart.)

Times in these tables are Unix seconds from each process's clock: keep the fleet's
machines on NTP (the job leases assume it too).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from bot.db import Database, parse_ts, ts, utc_now
from bot.timings import IDENTIFY_SPACING

log = logging.getLogger(__name__)

SYNC_MAX_AGE = timedelta(days=1)  # a sync older than this is repeated (drift repair)

_T = TypeVar("_T")


def identify_bucket(shard_id: int | None, max_concurrency: int) -> int:
    """The concurrency bucket of ``shard_id`` (an unsharded client is shard 0)."""
    return (shard_id or 0) % max(1, max_concurrency)


class IdentifyGate:
    """Fleet-wide turns for IDENTIFY, one per bucket every ``spacing`` seconds."""

    def __init__(
        self,
        db: Database,
        *,
        spacing: float = IDENTIFY_SPACING,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.spacing = spacing
        self._clock = clock

    async def wait_turn(self, shard_id: int | None, max_concurrency: int) -> float:
        """Wait for the bucket's turn and take it; returns the seconds waited."""
        bucket = identify_bucket(shard_id, max_concurrency)
        waited = 0.0
        while True:
            wait = await self._take(bucket)
            if wait <= 0:
                if waited:
                    log.info(
                        "Shard %s identifies after waiting %.1f s for its turn", shard_id, waited
                    )
                return waited
            waited += wait
            await asyncio.sleep(wait)

    async def _take(self, bucket: int) -> float:
        """Take the bucket's turn if it has come (returns 0), else the seconds to wait."""
        async with self._db.transaction() as tx:
            await tx.lock(f"identify:{bucket}")
            row = await tx.fetchone(
                "SELECT not_before FROM identify_slots WHERE bucket = ?", (bucket,)
            )
            now = self._clock()
            if row is not None and float(row["not_before"]) > now:
                return float(row["not_before"]) - now
            await tx.execute(
                "INSERT INTO identify_slots (bucket, not_before) VALUES (?, ?)"
                " ON CONFLICT (bucket) DO UPDATE SET not_before = excluded.not_before",
                (bucket, now + self.spacing),
            )
        return 0.0


def command_digest(payload: Any) -> str:
    """A stable hash of a command-sync payload (what would be sent to Discord)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


async def sync_once(
    db: Database,
    scope: str,
    digest: str,
    sync: Callable[[], Awaitable[_T]],
    *,
    instance: str,
    max_age: timedelta = SYNC_MAX_AGE,
) -> _T | None:
    """Run ``sync`` unless ``digest`` was synced for ``scope`` less than ``max_age`` ago.

    Returns what ``sync`` returned, or None when it was skipped. On PostgreSQL the check,
    the sync and the record happen under one lock, so of processes starting together
    exactly one syncs; on SQLite (one process) no transaction is held across the call.
    """
    lock = f"commands:{scope}"
    if db.engine == "sqlite":
        if await _synced(db, scope, digest, max_age):
            return None
        result = await sync()
        await db.write(*_record(scope, digest, instance))
        return result
    async with db.transaction() as tx:
        await tx.lock(lock)
        row = await tx.fetchone(
            "SELECT digest, synced_at FROM command_syncs WHERE scope = ?", (scope,)
        )
        if _fresh(row, digest, max_age):
            return None
        result = await sync()
        await tx.execute(*_record(scope, digest, instance))
    return result


async def _synced(db: Database, scope: str, digest: str, max_age: timedelta) -> bool:
    row = await db.fetchone("SELECT digest, synced_at FROM command_syncs WHERE scope = ?", (scope,))
    return _fresh(row, digest, max_age)


def _fresh(row: Any, digest: str, max_age: timedelta) -> bool:
    if row is None or row["digest"] != digest:
        return False
    return bool(utc_now() - parse_ts(row["synced_at"]) < max_age)


def _record(scope: str, digest: str, instance: str) -> tuple[str, tuple[str, str, str, str]]:
    return (
        "INSERT INTO command_syncs (scope, digest, synced_at, synced_by) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (scope) DO UPDATE SET digest = excluded.digest,"
        " synced_at = excluded.synced_at, synced_by = excluded.synced_by",
        (scope, digest, ts(utc_now()), instance),
    )
