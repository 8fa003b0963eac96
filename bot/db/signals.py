"""Wake-ups across the fleet, so processes wait for a change instead of polling for it.

What wakes whom:

* :attr:`Signal.QUEUED`: a job waits in line (taken in, handed back, released): idle
  processes look for work.
* :attr:`Signal.SLOT`: an upscale slot was freed: jobs waiting for one look again.
* :attr:`Signal.CLAIMED` / :attr:`Signal.ENDED` (payload: the job id): a job left the
  line or ended: processes showing places in line refresh them, and stop showing a job
  another process took.
* :attr:`Signal.CANCELLED` (payload: the job id): a member cancelled a job: the process
  running it stops (an upload in flight is cut off).
* :attr:`Signal.CIRCUIT`: 1min.ai's circuit opened or closed: processes read it again.

On PostgreSQL a signal is a ``NOTIFY`` on a channel of the schema: sent inside the
transaction that makes the change, it reaches every process (this one included) when
that transaction commits, through one ``LISTEN`` connection per process. On SQLite
(one process) it is delivered in-process at once; the woken task then waits for the
connection, so it reads what the sender committed.

A lost notification (a dropped connection, a restart of PostgreSQL) costs latency,
never work: every waiter also looks again after :data:`FALLBACK_POLL` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import asyncpg

from bot.db import Database, PostgresDatabase, Transaction
from bot.db.outages import report_db_outage
from bot.db.transient import is_transient
from bot.retry import Backoff
from bot.timings import FALLBACK_POLL as FALLBACK_POLL  # re-exported: the queue and circuit use it

log = logging.getLogger(__name__)

# Seconds before re-LISTENing: 1 after the first failed try, doubling up to 30.
RECONNECT_BACKOFF = Backoff(base=1.0, cap=30.0, jitter=False)


class Signal(StrEnum):
    QUEUED = "queued"
    SLOT = "slot"
    CLAIMED = "claimed"
    ENDED = "ended"
    CANCELLED = "cancelled"
    CIRCUIT = "circuit"


Listener = Callable[[Signal, str], None]


def channel_for(schema: str) -> str:
    """The NOTIFY channel of a schema (channels are database-wide: one per schema)."""
    return "upscale_bot_" + hashlib.sha1(schema.encode()).hexdigest()[:16]


class Signals:
    """Sends and receives the fleet's wake-ups (see the module docstring).

    Listeners are plain callables run on the event loop; they must not block (set an
    event, schedule a task).
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._listeners: list[Listener] = []
        self._channel: str | None = None
        self._conn: Any = None  # the held LISTEN connection (PostgreSQL)
        self._keeper: asyncio.Task[None] | None = None
        self._closed = False
        self.received = 0  # notifications received (for tests and benchmarks)

    @property
    def remote(self) -> bool:
        """True when signals cross processes (PostgreSQL)."""
        return isinstance(self._db, PostgresDatabase)

    @property
    def listening(self) -> bool:
        """True when this process hears the fleet's wake-ups (always on SQLite)."""
        return not self.remote or not self._lost()

    def _lost(self) -> bool:
        """True when there is no LISTEN connection, or it was closed under this process.

        asyncpg hands a pooled connection that closed back to its pool and detaches the
        proxy it lent: every call on that proxy, ``is_closed()`` too, then raises
        ``InterfaceError`` ("released back to the pool"). That is a lost connection.
        """
        if self._conn is None:
            return True
        try:
            return bool(self._conn.is_closed())
        except asyncpg.InterfaceError:
            return True

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        """Start listening (PostgreSQL); a no-op on SQLite. Safe to call twice."""
        if not self.remote or self._keeper is not None:
            return
        self._closed = False
        try:
            await self._listen()
        except Exception as exc:
            # Polling until it can (the keeper below listens again).
            report_db_outage(log, "starting to listen for wake-ups", exc)
        self._keeper = asyncio.create_task(self._keep_listening(), name="signals-listen")

    async def close(self) -> None:
        self._closed = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        await self._drop_connection()

    async def send(
        self, signal: Signal, payload: str = "", *, tx: Transaction | None = None
    ) -> None:
        """Wake the fleet. Inside ``tx`` it is delivered when that transaction commits;
        outside one, a database outage loses the wake-up (the fallback polls make up for
        it) instead of failing the caller."""
        if not self.remote:
            self._deliver(signal, payload)
            return
        message = f"{signal.value}:{payload}"
        if tx is not None:
            await tx.execute("SELECT pg_notify(?, ?)", (await self._channel_name(), message))
            return
        try:
            channel = await self._channel_name()
            await self._db.fetchone("SELECT pg_notify(?, ?)", (channel, message))
        except Exception as exc:
            if not is_transient(exc):
                raise
            # A wake-up is a hint: whoever misses it looks again on its fallback poll.
            report_db_outage(log, "sending a wake-up", exc)

    # -- receiving ---------------------------------------------------------------------

    def _deliver(self, signal: Signal, payload: str) -> None:
        self.received += 1
        for listener in list(self._listeners):
            try:
                listener(signal, payload)
            except Exception:
                log.warning("A wake-up listener failed", exc_info=True)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, message: object) -> None:
        kind, _, payload = str(message).partition(":")
        try:
            signal = Signal(kind)
        except ValueError:
            return
        self._deliver(signal, payload)

    async def _channel_name(self) -> str:
        if self._channel is None:
            row = await self._db.fetchone("SELECT current_schema() AS s")
            self._channel = channel_for(str(row["s"]) if row else "public")
        return self._channel

    async def _listen(self) -> None:
        assert isinstance(self._db, PostgresDatabase)
        channel = await self._channel_name()
        conn = await self._db.pool.acquire()
        try:
            await conn.add_listener(channel, self._on_notify)
        except BaseException:
            await self._db.pool.release(conn)
            raise
        self._conn = conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            await conn.remove_listener(await self._channel_name(), self._on_notify)
        with contextlib.suppress(Exception):
            assert isinstance(self._db, PostgresDatabase)
            await self._db.pool.release(conn)

    async def _keep_listening(self) -> None:
        """Re-LISTEN when the connection is lost; wake everyone after (they may have
        missed something meanwhile)."""
        failures = 0
        while not self._closed:
            await asyncio.sleep(FALLBACK_POLL)
            if not self._lost():
                failures = 0
                continue
            await self._drop_connection()
            try:
                await self._listen()
            except Exception:
                failures += 1
                wait = RECONNECT_BACKOFF.delay(failures)
                log.info("LISTEN connection still down; trying again in %.0f s", wait)
                await asyncio.sleep(wait)
                continue
            log.info("LISTEN connection restored")
            for signal in Signal:
                self._deliver(signal, "")
