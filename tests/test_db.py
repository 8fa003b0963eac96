"""The database layer on both engines: migrations, transactions, locks, placeholders, types.

Tests taking ``db`` or ``databases`` run on SQLite and on a fresh PostgreSQL schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.db import Database, Migration, SqliteDatabase, open_database, parse_ts, ts
from bot.db.migrations import load_migrations, split_statements
from bot.db.sqlite import BUSY_TIMEOUT_MS
from bot.db.sqltext import pg_ddl, pg_placeholders
from tests.support.databases import INTEGRITY_ERRORS, Databases

TABLE_T = Migration(1, "0001_t.sql", "CREATE TABLE t (x INTEGER);")
LATEST = load_migrations()[-1].version


async def pragma(db: Database, name: str) -> object:
    row = await db.fetchone(f"PRAGMA {name}")
    assert row is not None
    return row[0]


async def table_names(db: Database) -> list[str]:
    if db.engine == "sqlite":
        rows = await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = await db.fetchall(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    return sorted(r[0] for r in rows)


async def count(db: Database, table: str) -> int:
    row = await db.fetchone(f"SELECT COUNT(*) FROM {table}")
    assert row is not None
    return int(row[0])


# -- SQLite specifics ------------------------------------------------------------------


async def test_open_creates_the_directory(tmp_path: Path) -> None:
    """Opening a path in a missing directory creates the directory and the file."""
    async with await open_database(f"sqlite:///{tmp_path / 'a' / 'b' / 'x.db'}") as db:
        assert db.engine == "sqlite"
        assert (tmp_path / "a" / "b" / "x.db").exists()


async def test_relative_sqlite_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite:///data/x.db opens data/x.db under the current directory."""
    monkeypatch.chdir(tmp_path)
    async with await open_database("sqlite:///data/x.db"):
        assert (tmp_path / "data" / "x.db").exists()


async def test_unknown_database_url_is_refused() -> None:
    """A URL that is neither sqlite:/// nor postgresql:// raises ValueError."""
    with pytest.raises(ValueError, match="unsupported database URL"):
        await open_database("mysql://u:secret@h/db")


async def test_open_sets_the_pragmas(tmp_path: Path) -> None:
    """WAL, a busy timeout, foreign keys and synchronous=NORMAL are on."""
    async with await SqliteDatabase.open_file(tmp_path / "x.db") as db:
        assert await pragma(db, "journal_mode") == "wal"
        assert await pragma(db, "busy_timeout") == BUSY_TIMEOUT_MS
        assert await pragma(db, "foreign_keys") == 1
        assert await pragma(db, "synchronous") == 1  # NORMAL


async def test_wal_is_checkpointed_in_the_background_not_by_commits(tmp_path: Path) -> None:
    """The bot's connection never checkpoints at a commit (which would stall every caller
    queued behind it); a background connection moves the WAL into the database file."""
    path = tmp_path / "wal.db"
    async with await SqliteDatabase.open_file(path) as db:
        assert await pragma(db, "wal_autocheckpoint") == 0
        async with db.transaction() as tx:
            await tx.execute("UPDATE service_circuit SET state = 'closed'")
            await tx.execute("INSERT INTO onemin_calls (at) VALUES (1.0), (2.0), (3.0)")
        # The database file alone (WAL ignored) has the rows once a checkpoint ran.
        file_only = f"file:{path}?immutable=1"
        deadline = asyncio.get_running_loop().time() + 5
        while True:
            plain = sqlite3.connect(file_only, uri=True)
            try:
                (rows,) = plain.execute("SELECT COUNT(*) FROM onemin_calls").fetchone()
            except sqlite3.OperationalError:  # not even the table is in the file yet
                rows = 0
            finally:
                plain.close()
            if rows == 3 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
        assert rows == 3


async def test_urgent_transactions_go_ahead_of_ordinary_work(tmp_path: Path) -> None:
    """While the connection is busy, an urgent transaction that arrives later is served
    before ordinary ones already waiting; ordinary ones keep their order."""
    async with await SqliteDatabase.open_file(tmp_path / "turns.db") as db:
        order: list[str] = []
        release = asyncio.Event()

        async def hold() -> None:
            async with db.transaction():
                await release.wait()

        async def run(name: str, urgent: bool) -> None:
            async with db.transaction(urgent=urgent):
                order.append(name)

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.05)
        waiting = [
            asyncio.create_task(run("first", False)),
            asyncio.create_task(run("second", False)),
        ]
        await asyncio.sleep(0.01)
        waiting.append(asyncio.create_task(run("urgent", True)))
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(holder, *waiting)
        assert order == ["urgent", "first", "second"]


async def test_an_urgent_write_hurries_the_group_it_joins(tmp_path: Path) -> None:
    """A grouped write waiting behind a busy connection is moved ahead of ordinary
    transactions as soon as an urgent write joins its group."""
    async with await SqliteDatabase.open_file(tmp_path / "group.db") as db:
        order: list[str] = []
        release = asyncio.Event()

        async def hold() -> None:
            async with db.transaction():
                await release.wait()

        async def ordinary() -> None:
            async with db.transaction():
                order.append("transaction")

        async def write(urgent: bool) -> None:
            await db.write("UPDATE service_circuit SET state = 'closed'", urgent=urgent)
            order.append("urgent write" if urgent else "write")

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.05)
        tasks = [asyncio.create_task(write(False))]
        await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(ordinary()))
        await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(write(True)))
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(holder, *tasks)
        assert order.index("urgent write") < order.index("transaction")
        assert order.index("write") < order.index("transaction")


async def test_a_cancelled_waiter_does_not_keep_the_connection(tmp_path: Path) -> None:
    """A caller cancelled while it waits for the connection never holds it: the next
    caller gets it when the current holder is done."""
    async with await SqliteDatabase.open_file(tmp_path / "cancel-wait.db") as db:
        release = asyncio.Event()

        async def hold() -> None:
            async with db.transaction():
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.05)
        waiter = asyncio.create_task(db.fetchall("SELECT 1"))
        await asyncio.sleep(0.01)
        waiter.cancel()
        release.set()
        await holder
        async with asyncio.timeout(2):
            assert await db.fetchall("SELECT 2")


# -- both engines ----------------------------------------------------------------------


async def test_version_is_the_last_migration(db: Database) -> None:
    """The schema version equals the highest migration number after opening."""
    assert await db.version() == LATEST


async def test_migrations_apply_once(databases: Databases) -> None:
    """Reopening a migrated database applies nothing and keeps the data."""
    first = await databases.open()
    await first.write(
        "INSERT INTO audit_log (guild_id, actor_id, action, created_at) VALUES (1,2,'x','t')"
    )
    await databases.close_all()
    second = await databases.open()
    assert await second.migrate(load_migrations()) == []
    assert await count(second, "audit_log") == 1


async def test_failing_migration_rolls_back_entirely(databases: Databases) -> None:
    """If one pending migration fails, none of them is applied and the version stays."""
    migrations = [
        Migration(1, "0001_a.sql", "CREATE TABLE a (x INTEGER);"),
        Migration(2, "0002_b.sql", "CREATE TABLE b (x INTEGER);\nTHIS IS NOT SQL;"),
    ]
    with pytest.raises(Exception, match="syntax"):
        await databases.open(migrations=migrations)
    db = await databases.open(migrations=[])
    assert await db.version() == 0
    assert await table_names(db) == []


async def test_two_openers_at_once_apply_the_migrations_once(databases: Databases) -> None:
    """Two connections migrating a fresh database at once: one applies all, the other none."""
    first, second = await databases.open(migrations=[]), await databases.open(migrations=[])
    applied = await asyncio.gather(
        first.migrate(load_migrations()), second.migrate(load_migrations())
    )
    assert sorted(applied, key=len) == [[], list(range(1, LATEST + 1))]
    assert await first.version() == await second.version() == LATEST


async def test_two_processes_opening_a_new_database_both_succeed(databases: Databases) -> None:
    """Opening the same fresh database twice at once succeeds for both, at the last version."""
    first, second = await asyncio.gather(databases.open(), databases.open())
    assert await first.version() == await second.version() == LATEST


async def test_transaction_rolls_back_when_the_block_raises(databases: Databases) -> None:
    """Nothing written inside a failing transaction block stays."""
    db = await databases.open(migrations=[TABLE_T])
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (x) VALUES (1)")
            raise RuntimeError("boom")
    assert await db.fetchall("SELECT x FROM t") == []


async def test_failed_commit_is_rolled_back_and_the_connection_stays_usable(
    databases: Databases,
) -> None:
    """A COMMIT refused by a deferred foreign key leaves no open transaction behind."""
    schema = Migration(
        1,
        "0001_fk.sql",
        "CREATE TABLE parent (id INTEGER PRIMARY KEY);\n"
        "CREATE TABLE child (parent_id INTEGER REFERENCES parent (id)"
        " DEFERRABLE INITIALLY DEFERRED);",
    )
    db = await databases.open(migrations=[schema])
    with pytest.raises(INTEGRITY_ERRORS):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO child (parent_id) VALUES (42)")
    assert await db.write("INSERT INTO parent (id) VALUES (1)") == 1
    assert await db.fetchall("SELECT parent_id FROM child") == []


async def test_grouped_writes_isolate_a_failing_statement(db: Database) -> None:
    """Concurrent writes (grouped on SQLite) each get their own result or error: one
    failing statement neither undoes nor blocks the others."""
    insert = (
        "INSERT INTO audit_log (id, guild_id, actor_id, action, created_at)"
        " VALUES (?, 1, 2, 'x', 't')"
    )
    results = await asyncio.gather(
        db.write(insert, (1,)),
        db.write(insert, (1,)),  # duplicate primary key
        db.write(insert, (2,)),
        return_exceptions=True,
    )
    assert sorted(r for r in results if isinstance(r, int)) == [1, 1]
    assert sum(isinstance(r, INTEGRITY_ERRORS) for r in results) == 1
    assert await count(db, "audit_log") == 2


async def test_execute_returns_the_rows_changed(db: Database) -> None:
    """execute and write report how many rows an UPDATE touched."""
    for actor in (1, 2, 3):
        await db.write(
            "INSERT INTO audit_log (guild_id, actor_id, action, created_at)"
            " VALUES (7, ?, 'a', 't')",
            (actor,),
        )
    async with db.transaction() as tx:
        assert await tx.execute("UPDATE audit_log SET action = 'b' WHERE actor_id < 3") == 2
    assert await db.write("DELETE FROM audit_log WHERE guild_id = 8") == 0


async def test_rows_are_read_by_name_and_by_position(db: Database) -> None:
    """A row answers row["column"] and row[0] alike, inside and outside a transaction."""
    await db.write(
        "INSERT INTO audit_log (guild_id, actor_id, action, created_at) VALUES (1, 2, 'x', 't')"
    )
    row = await db.fetchone("SELECT action, actor_id FROM audit_log")
    assert row is not None and (row["action"], row[1]) == ("x", 2)
    async with db.transaction() as tx:
        inner = await tx.fetchone("SELECT action, actor_id FROM audit_log")
        assert inner is not None and (inner[0], inner["actor_id"]) == ("x", 2)
        assert await tx.fetchone("SELECT action FROM audit_log WHERE guild_id = 9") is None


async def test_named_placeholders_may_repeat_and_ignore_extra_names(db: Database) -> None:
    """:name may appear twice; names the statement does not use are ignored."""
    row = await db.fetchone(
        "SELECT CAST(:a AS BIGINT) + CAST(:a AS BIGINT) AS twice, ':a' AS literal",
        {"a": 21, "unused": "x"},
    )
    assert row is not None and (row["twice"], row["literal"]) == (42, ":a")


async def test_question_marks_inside_literals_are_not_placeholders(db: Database) -> None:
    """A ? inside a string literal is text; the real ? placeholders are bound in order."""
    row = await db.fetchone(
        "SELECT 'who?' AS q, CAST(? AS BIGINT) AS a, CAST(? AS TEXT) AS b", (1, "two")
    )
    assert row is not None and tuple(row) == ("who?", 1, "two")


async def test_discord_ids_round_trip_as_64_bit_integers(db: Database) -> None:
    """The largest snowflake-sized integer is stored and read back unchanged."""
    big = 2**63 - 1
    await db.write(
        "INSERT INTO audit_log (guild_id, actor_id, action, created_at) VALUES (?, ?, 'x', 't')",
        (big, big - 1),
    )
    row = await db.fetchone("SELECT guild_id, actor_id FROM audit_log")
    assert row is not None and (row[0], row[1]) == (big, big - 1)


async def test_bytes_round_trip(databases: Databases) -> None:
    """Every byte value survives a BLOB column (BYTEA on PostgreSQL), and NULL stays NULL."""
    schema = Migration(1, "0001_b.sql", "CREATE TABLE b (id INTEGER PRIMARY KEY, data BLOB);")
    db = await databases.open(migrations=[schema])
    payload = bytes(range(256)) * 3
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO b (id, data) VALUES (?, ?)", (1, payload))
        await tx.execute("INSERT INTO b (id, data) VALUES (:id, :data)", {"id": 2, "data": None})
    rows = await db.fetchall("SELECT data FROM b ORDER BY id")
    assert bytes(rows[0]["data"]) == payload and isinstance(rows[0]["data"], bytes)
    assert rows[1]["data"] is None


async def test_integer_primary_key_numbers_new_rows(databases: Databases) -> None:
    """INTEGER PRIMARY KEY hands out ids when none is given (an identity on PostgreSQL)."""
    schema = Migration(1, "0001_n.sql", "CREATE TABLE n (id INTEGER PRIMARY KEY, v TEXT);")
    db = await databases.open(migrations=[schema])
    for value in ("a", "b"):
        await db.write("INSERT INTO n (v) VALUES (?)", (value,))
    rows = await db.fetchall("SELECT id, v FROM n ORDER BY id")
    assert [(r["id"], r["v"]) for r in rows] == [(1, "a"), (2, "b")]


async def test_every_integer_column_of_the_migrations_holds_64_bits(db: Database) -> None:
    """Ids and counts are BIGINT on PostgreSQL; on SQLite only a rowid alias (an
    INTEGER PRIMARY KEY, 64-bit too) is still spelled INTEGER."""
    if db.engine == "postgresql":
        rows = await db.fetchall(
            "SELECT table_name || '.' || column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND data_type IN ('integer', 'smallint')"
        )
        assert [r[0] for r in rows] == []
        return
    narrow = []
    for table in await table_names(db):
        columns = await db.fetchall(f"PRAGMA table_info({table})")
        keys = [c for c in columns if c["pk"]]
        for column in columns:
            rowid_alias = column["pk"] and len(keys) == 1
            if column["type"].upper() == "INTEGER" and not rowid_alias:
                narrow.append(f"{table}.{column['name']}")
    assert narrow == []


@pytest.mark.parametrize(
    ("table", "columns", "values"),
    [
        ("audit_log", "guild_id, actor_id, action, created_at", "1, 2, 'x', 't'"),
        (
            "grants",
            "guild_id, member_id, amount, period_start, actor_id, created_at",
            "1, 2, 3, 't', 4, 't'",
        ),
        ("onemin_calls", "at", "1.5"),
    ],
)
async def test_autoincrement_keys_of_the_migrations_number_new_rows(
    db: Database, table: str, columns: str, values: str
) -> None:
    """The shipped INTEGER PRIMARY KEY ids are handed out 1, 2 when a row gives none."""
    if table == "grants":
        await db.write(
            "INSERT INTO guild_settings (guild_id, default_limit, period, created_at)"
            " VALUES (1, 5, 'daily', 't')"
        )
    for _ in range(2):
        await db.write(f"INSERT INTO {table} ({columns}) VALUES ({values})")
    rows = await db.fetchall(f"SELECT id FROM {table} ORDER BY id")
    assert [r[0] for r in rows] == [1, 2]


async def test_locked_transactions_never_lose_an_update(db: Database) -> None:
    """50 read-then-write increments under tx.lock of one key all count."""
    await db.write(
        "INSERT INTO audit_log (id, guild_id, actor_id, action, created_at)"
        " VALUES (1, 0, 0, '0', 't')"
    )

    async def increment() -> None:
        async with db.transaction() as tx:
            await tx.lock("counter")
            row = await tx.fetchone("SELECT action FROM audit_log WHERE id = 1")
            assert row is not None
            await asyncio.sleep(0)
            await tx.execute(
                "UPDATE audit_log SET action = ? WHERE id = 1", (str(int(row[0]) + 1),)
            )

    await asyncio.gather(*(increment() for _ in range(50)))
    row = await db.fetchone("SELECT action FROM audit_log WHERE id = 1")
    assert row is not None and row[0] == "50"


async def test_old_resets_are_carried_over_to_reset_marks(databases: Databases) -> None:
    """Migration 3 marks entries up to a member's old reset time as reset, and no others."""
    db = await databases.open(migrations=load_migrations()[:2])
    for rid, when in (
        ("before", "2026-03-15 10:00:00.000000"),
        ("after", "2026-03-15 12:00:00.000000"),
    ):
        await db.write(
            "INSERT INTO ledger_entries (id, guild_id, member_id, cost, state, created_at)"
            " VALUES (?, 1, 11, 1, 'committed', ?)",
            (rid, when),
        )
    await db.write(
        "INSERT INTO usage_resets (guild_id, member_id, reset_at)"
        " VALUES (1, 11, '2026-03-15 11:00:00.000000')"
    )
    await databases.close_all()
    db = await databases.open()
    rows = await db.fetchall("SELECT id, reset_at FROM ledger_entries ORDER BY id")
    assert [tuple(r) for r in rows] == [
        ("after", None),
        ("before", "2026-03-15 11:00:00.000000"),
    ]


async def test_job_timestamps_are_converted_to_the_ledger_format(databases: Databases) -> None:
    """Migration 4 rewrites isoformat job times as 'YYYY-MM-DD HH:MM:SS.ffffff'."""
    db = await databases.open(migrations=load_migrations()[:3])
    await db.write(
        "INSERT INTO jobs (id, guild_id, channel_id, member_id, output_format, source_name,"
        " created_at, started_at, finished_at)"
        " VALUES ('j', 1, 2, 3, 'png', 'a.png', ?, ?, NULL)",
        ("2026-03-15T10:00:00.123+00:00", "2026-03-15T10:00:01.500+00:00"),
    )
    await databases.close_all()
    db = await databases.open()
    row = await db.fetchone("SELECT created_at, started_at, finished_at FROM jobs")
    assert row is not None
    assert tuple(row) == ("2026-03-15 10:00:00.123000", "2026-03-15 10:00:01.500000", None)
    assert parse_ts(row[0]) == datetime(2026, 3, 15, 10, 0, 0, 123000, tzinfo=UTC)


async def test_log_channel_and_budget_alerts_exist_after_migration_4(db: Database) -> None:
    """guild_settings has log_channel_id and the budget_alerts table exists."""
    await db.write(
        "INSERT INTO guild_settings (guild_id, default_limit, period, created_at,"
        " log_channel_id) VALUES (1, 5, 'daily', 't', ?)",
        (2**62,),
    )
    assert "budget_alerts" in await table_names(db)
    row = await db.fetchone("SELECT log_channel_id FROM guild_settings")
    assert row is not None and row[0] == 2**62


# -- pure functions --------------------------------------------------------------------


def test_timestamps_round_trip_in_the_one_stored_format() -> None:
    """ts writes 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC and parse_ts reads it back."""
    moment = datetime(2026, 3, 15, 10, 0, 0, 5, tzinfo=UTC)
    assert ts(moment) == "2026-03-15 10:00:00.000005"
    assert parse_ts(ts(moment)) == moment


def test_naive_timestamps_are_refused() -> None:
    """ts of a datetime without a time zone raises ValueError."""
    with pytest.raises(ValueError):
        ts(datetime(2026, 3, 15))


def test_placeholders_become_numbered_outside_literals_casts_and_comments() -> None:
    """:name and ? become $n; '::' casts, string literals and comments stay as written."""
    sql, names = pg_placeholders(
        "SELECT :a::text, ':b', \"c:d\", :a -- :e ?\n/* ? */ FROM t WHERE x = :f"
    )
    assert sql == "SELECT $1::text, ':b', \"c:d\", $1 -- :e ?\n/* ? */ FROM t WHERE x = $2"
    assert names == ("a", "f")
    assert pg_placeholders("SELECT ?, 'it''s ?', ?") == ("SELECT $1, 'it''s ?', $2", 2)


def test_mixed_placeholder_styles_are_refused() -> None:
    """One statement may use ? or :name, not both."""
    with pytest.raises(ValueError, match="mixes"):
        pg_placeholders("SELECT ?, :a")


def test_ddl_is_translated_for_postgresql() -> None:
    """INTEGER PRIMARY KEY (SQLite's rowid alias) becomes an identity and BLOB BYTEA; other
    types stay as written (migrations say BIGINT where 64 bits are needed); DML and
    literals are left alone."""
    assert pg_ddl("CREATE TABLE t (id INTEGER PRIMARY KEY, n BIGINT, b BLOB, s TEXT)") == (
        "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
        " n BIGINT, b BYTEA, s TEXT)"
    )
    assert pg_ddl("ALTER TABLE t ADD COLUMN c BLOB DEFAULT 'BLOB'") == (
        "ALTER TABLE t ADD COLUMN c BYTEA DEFAULT 'BLOB'"
    )
    assert pg_ddl("UPDATE t SET s = 'INTEGER PRIMARY KEY'") == (
        "UPDATE t SET s = 'INTEGER PRIMARY KEY'"
    )


def test_split_statements_keeps_semicolons_in_strings() -> None:
    """A ';' inside a string literal does not split the statement."""
    script = "INSERT INTO t VALUES ('a;b');\n-- comment\nCREATE TABLE u (x);\n"
    assert split_statements(script) == [
        "INSERT INTO t VALUES ('a;b');",
        "-- comment\nCREATE TABLE u (x);",
    ]


def test_migration_numbers_are_unique_and_ordered() -> None:
    """The shipped migrations are numbered 1, 2, ... without gaps or repeats."""
    versions = [m.version for m in load_migrations()]
    assert versions == list(range(1, len(versions) + 1))


async def test_a_transaction_cancelled_mid_statement_leaves_none_open(tmp_path: Path) -> None:
    """Cancelling a task inside a transaction (as a shutdown does) never leaves the shared
    connection in a transaction: the next one begins normally."""
    db = await SqliteDatabase.open_file(tmp_path / "cancel.db")
    try:
        for delay in (0, 0.0005, 0.001, 0.002):

            async def write() -> None:
                async with db.transaction() as tx:
                    await tx.execute("UPDATE service_circuit SET state = 'closed'")
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(write())
            await asyncio.sleep(delay)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            async with db.transaction() as tx:
                assert await tx.execute("DELETE FROM service_circuit") == 0
    finally:
        await db.close()
