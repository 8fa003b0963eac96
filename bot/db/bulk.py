"""Many rows written by one statement, on either engine.

SQLite runs an ``INSERT ... VALUES`` once per row in-process (``executemany``), which is
as fast as it gets there. PostgreSQL would plan and run that statement once per row on
the server; one ``INSERT ... SELECT * FROM unnest(...)`` of column arrays writes them all
in one execution, several times cheaper for a batch of tens of rows.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bot.db.interface import HotStatement, Params, Transaction
from bot.db.urls import Engine

SqlType = Literal["BIGINT", "TEXT"]


@dataclass(frozen=True, slots=True)
class RowsInsert:
    """``INSERT INTO table (columns) ... tail`` for many rows at once (see the module
    docstring). ``columns`` are names and types; ``tail`` follows the rows (an
    ``ON CONFLICT`` clause, without placeholders). The rows written by one call must not
    share a conflict key: PostgreSQL refuses to update one row twice in a statement."""

    table: str
    columns: tuple[tuple[str, SqlType], ...]
    tail: str = ""

    def sql(self, engine: Engine) -> str:
        return _insert_sql(self, engine)

    def params(self, engine: Engine, rows: Sequence[Sequence[Any]]) -> Params:
        """The parameters of :meth:`sql` for ``rows`` on PostgreSQL (one array per column);
        on SQLite, those of the first row (what ``executemany`` takes once per row)."""
        if engine == "postgresql":
            return {name: [row[i] for row in rows] for i, (name, _) in enumerate(self.columns)}
        return rows[0]

    def hot(self, name: str, example: Sequence[Any]) -> HotStatement:
        """This insert as a :class:`HotStatement`, planned with one ``example`` row."""
        return HotStatement(name, self.sql, lambda engine: self.params(engine, [example]))

    async def run(self, tx: Transaction, engine: Engine, rows: Sequence[Sequence[Any]]) -> None:
        """Write ``rows`` (tuples in the order of :attr:`columns`) in ``tx``."""
        if not rows:
            return
        if engine == "postgresql":
            await tx.execute(self.sql(engine), self.params(engine, rows))
        else:
            await tx.executemany(self.sql(engine), rows)


@functools.lru_cache(maxsize=64)
def _insert_sql(insert: RowsInsert, engine: Engine) -> str:
    names = ", ".join(name for name, _ in insert.columns)
    if engine == "postgresql":
        arrays = ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in insert.columns)
        rows = f"SELECT * FROM unnest({arrays})"
    else:
        rows = f"VALUES ({', '.join('?' for _ in insert.columns)})"
    return f"INSERT INTO {insert.table} ({names}) {rows} {insert.tail}".rstrip()
