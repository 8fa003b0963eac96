"""Group commit: concurrent requests that may share a transaction run as one batch.

A transaction costs far more than the small statements in it (a ``COMMIT`` on SQLite, a
round trip and a commit on PostgreSQL). When many callers ask at once, the first one's
request starts a batch and whatever arrives while it runs forms the next one, so the
cost of a transaction is shared by everyone who waited for it. Used by the ledger
(reservations of one guild, settlements of one outcome) and by SQLite's
``Database.write`` (single statements).

``run(key, items)`` handles a whole batch (one transaction) and returns one result per
item, in order. If a batch fails, each of its items is run alone, so one bad item fails
only its own caller and never undoes another caller's work.

A batch may have to wait for a :class:`Gate` before it runs (SQLite's one connection):
the batch then takes every item that arrived while it waited, and an urgent item hurries
the batch it joins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")


class Gate(Protocol):
    """A lock taken in turns (SQLite's :class:`bot.db.sqlite.TurnLock`)."""

    def enqueue(self, urgent: bool) -> asyncio.Future[None]:
        """A place in line; await it with :meth:`wait`, then :meth:`release`."""

    def hurry(self, turn: asyncio.Future[None]) -> None:
        """Move a waiting place among the urgent ones."""

    async def wait(self, turn: asyncio.Future[None]) -> None: ...

    def release(self) -> None: ...


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    urgent: bool


class GroupCommit(Generic[K, T, R]):
    """Batches of concurrent items with the same key, each run by ``run`` (see the module
    docstring). ``name`` names the flushing tasks; ``gate``, if given, is held while a
    batch runs."""

    def __init__(
        self,
        run: Callable[[K, list[T]], Awaitable[list[R]]],
        *,
        name: str,
        gate: Gate | None = None,
    ) -> None:
        self._run = run
        self._name = name
        self._gate = gate
        self._queues: dict[K, list[_Pending[T, R]]] = {}
        self._flushers: dict[K, asyncio.Task[None]] = {}
        self._turns: dict[K, asyncio.Future[None]] = {}  # a flusher waiting for the gate

    async def submit(self, key: K, item: T, *, urgent: bool = False) -> R:
        """Run ``item`` in the next batch of ``key``; its result (or its exception)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append(_Pending(item, future, urgent))
        turn = self._turns.get(key)
        if urgent and turn is not None and self._gate is not None:
            self._gate.hurry(turn)
        flusher = self._flushers.get(key)
        if flusher is None or flusher.done():
            self._flushers[key] = asyncio.create_task(self._flush(key), name=self._name)
        return await future

    async def join(self) -> None:
        """Wait until every batch submitted so far has run."""
        while running := [f for f in self._flushers.values() if not f.done()]:
            await asyncio.gather(*running, return_exceptions=True)

    async def _flush(self, key: K) -> None:
        batch: list[_Pending[T, R]] = []
        try:
            while self._queues.get(key):
                if self._gate is None:
                    batch = self._queues.pop(key)
                    await self._run_batch(key, batch)
                    batch = []
                    continue
                turn = self._gate.enqueue(any(p.urgent for p in self._queues[key]))
                self._turns[key] = turn
                try:
                    await self._gate.wait(turn)
                finally:
                    del self._turns[key]
                try:
                    batch = self._queues.pop(key)  # with what came while waiting
                    await self._run_batch(key, batch)
                    batch = []
                finally:
                    self._gate.release()
        finally:
            # Only reached with work left if this task was cancelled: nobody must wait
            # forever for a batch that will not run.
            for pending in [*batch, *self._queues.pop(key, [])]:
                if not pending.future.done():
                    pending.future.cancel()

    async def _run_batch(self, key: K, batch: list[_Pending[T, R]]) -> None:
        """Run a batch and answer each caller; after a failure, each item alone."""
        try:
            results = await self._run(key, [p.item for p in batch])
        except Exception:
            for pending in batch:
                try:
                    (result,) = await self._run(key, [pending.item])
                except Exception as exc:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                else:
                    if not pending.future.done():
                        pending.future.set_result(result)
        else:
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
