"""What the rest of the bot sees of the database, whichever the engine.

:class:`Database` and the :class:`Transaction` it yields are the whole surface: SQL is
written once, with ``?`` (positional) or ``:name`` (named) placeholders, and rows are
read by column name (``row["id"]``) or position (``row[0]``). :class:`HotStatement` is how
a module lists the statements that must read through an index at any size;
:class:`Migration` is what :meth:`Database.migrate` applies (:mod:`bot.db.migrations`
loads the shipped ones).

The engines (:mod:`bot.db.sqlite`, :mod:`bot.db.postgres`) and the migrations build on
this module; it imports none of them.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self, TypeAlias

from bot.db.urls import Engine

Params: TypeAlias = Sequence[Any] | dict[str, Any]


class Row(Protocol):
    """A result row: ``row["column"]`` or ``row[0]`` (sqlite3.Row, asyncpg.Record);
    ``tuple(row)`` is its values and ``dict(row)`` its columns, in order."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...

    def keys(self) -> Iterable[str]: ...


@dataclass(frozen=True, slots=True)
class HotStatement:
    """A statement that runs per job, per poll or per command, so it must read through an
    index on both engines however large the history grows.

    Each module that defines such SQL lists it in a module-level ``HOT_STATEMENTS:
    tuple[HotStatement, ...]``; ``tests/test_hot_plans.py`` finds every such list under
    ``bot`` and fails when a plan scans a table that grows with history. ``sql`` is the
    statement's text, or a function of the engine when the text differs (lists of ids);
    ``params`` are example parameters to plan it with (likewise, or a function of the
    engine): values of the right types, the planner needs nothing more.
    """

    name: str  # what runs it, e.g. "reserve: member counters"
    sql: str | Callable[[Engine], str]
    params: Params | Callable[[Engine], Params] = ()

    def text(self, engine: Engine) -> str:
        return self.sql if isinstance(self.sql, str) else self.sql(engine)

    def parameters(self, engine: Engine) -> Params:
        return self.params(engine) if callable(self.params) else self.params


class Transaction(abc.ABC):
    """What :meth:`Database.transaction` yields: statements inside one transaction.

    SQL uses ``?`` (positional) or ``:name`` (named) placeholders. Rows are read by
    column name (``row["id"]``) or position.
    """

    @abc.abstractmethod
    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the rows it changed."""

    @abc.abstractmethod
    async def executemany(self, sql: str, params_seq: Iterable[Params]) -> None:
        """Run one statement once per parameter set, in order (pipelined on PostgreSQL)."""

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    @abc.abstractmethod
    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    @abc.abstractmethod
    async def lock(self, *keys: str) -> None:
        """Serialise this transaction with others that lock any of ``keys``, until it ends.

        A no-op on SQLite (``BEGIN IMMEDIATE`` already serialises every writer).
        """


MigrationStep: TypeAlias = Callable[[Transaction], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema migration: its SQL and, where portable SQL cannot do it, a
    Python step (:data:`bot.db.steps.STEPS`)."""

    version: int
    name: str
    sql: str
    step: MigrationStep | None = None  # run after the SQL, in the same transaction


class RoundTrips:
    """How many times this process waited on the database: each statement sent, each
    ``BEGIN`` and ``COMMIT`` (PostgreSQL: a network round trip; SQLite: a trip to
    aiosqlite's thread), WAL checkpoints included. Benchmarks read it to show what an
    idle or a busy process costs the database."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int = 1) -> None:
        self.count += n


class Database(abc.ABC):
    """The bot's database, whichever the engine (see :mod:`bot.db`).

    ``round_trips`` counts what this process asked of it (:class:`RoundTrips`).
    """

    engine: ClassVar[Engine]
    round_trips: RoundTrips

    @abc.abstractmethod
    def transaction(self, *, urgent: bool = False) -> AbstractAsyncContextManager[Transaction]:
        """``async with db.transaction() as tx``: a write transaction, rolled back if the
        block raises. ``tx`` is for this block only; do not keep it. ``urgent`` (work a
        job waits on before calling 1min.ai) goes ahead of ordinary work where callers
        queue for one connection (SQLite); PostgreSQL has a pool and ignores it."""

    @abc.abstractmethod
    async def write(self, sql: str, params: Params = (), *, urgent: bool = False) -> int:
        """Run one statement atomically on its own; returns the rows changed."""

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    @abc.abstractmethod
    async def version(self) -> int:
        """The schema version (the number of the last migration applied)."""

    @abc.abstractmethod
    async def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        """Apply every pending migration in one transaction; returns the versions applied."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
