"""What counts as a database that blinks (bot.db.transient), shown on the real engines.

Each error is the real one, produced the way it happens to the bot: a refused, reset or
stalled connection through the fault proxy (tests.support.faultproxy), a backend ended by
``pg_terminate_backend`` from another connection, two transactions in conflict, a SQLite
file held locked by another connection or out of pages, a write to ``/dev/full``. Only
errors the test server cannot be made to send (57P03 while starting up, 53100 disk full)
are built by hand. The last part shows that the PostgreSQL driver gives up on a stalled
server in bounded time (bot.db.postgres's timeouts) and that asyncpg's pool does not log
a traceback per reconnection attempt.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.db import PostgresDatabase, SqliteDatabase
from bot.db import outages as outages_module
from bot.db.outages import OutageReporter
from bot.db.transient import DbOutageKind, db_outage, is_transient
from tests.support.databases import PG_URL, drop_schema, require_postgres
from tests.support.faultproxy import FaultProxy

WAIT = 15.0  # seconds a test waits for a condition before it fails
SHORT = 0.5  # seconds: the driver timeouts of the tests that stall the proxy
# How long a statement through a stalled proxy may take to fail, at SHORT timeouts: far
# above what it takes (about 2 x SHORT), far below forever.
BOUND = 10.0


async def raised(call: Awaitable[Any], within: float = WAIT) -> BaseException:
    """The exception ``call`` raises within ``within`` seconds (the test fails if it
    returns, or is still waiting then: that TimeoutError would be the test's own)."""
    try:
        async with asyncio.timeout(within) as limit:
            await call
    except Exception as exc:
        if limit.expired():
            pytest.fail(f"still waiting after {within} s")
        return exc
    pytest.fail("no error was raised")


def assert_outage(exc: BaseException, kind: DbOutageKind, *, transient: bool = True) -> None:
    assert db_outage(exc) is kind, repr(exc)
    assert is_transient(exc) is transient, repr(exc)


def assert_bug(exc: BaseException) -> None:
    assert db_outage(exc) is None, repr(exc)
    assert not is_transient(exc), repr(exc)


# -- PostgreSQL fixtures ---------------------------------------------------------------------


@pytest.fixture
async def pg() -> None:
    await require_postgres()


@pytest.fixture
async def proxy(pg: None) -> AsyncIterator[FaultProxy]:
    async with FaultProxy.to(PG_URL) as p:
        yield p


@pytest.fixture
async def schema(pg: None) -> AsyncIterator[str]:
    """A fresh schema with a table ``t`` of two rows (id 1 and 2, v 0)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"CREATE SCHEMA {name}")
        await conn.execute(f"CREATE TABLE {name}.t (id INT PRIMARY KEY, v INT NOT NULL)")
        await conn.execute(f"INSERT INTO {name}.t VALUES (1, 0), (2, 0)")
    finally:
        await conn.close()
    yield name
    await drop_schema(name)


@pytest.fixture
async def connect(
    pg: None,
) -> AsyncIterator[Callable[..., Awaitable[asyncpg.Connection]]]:
    """Opens direct connections (to ``PG_URL`` unless ``url=``), closed at the end."""
    opened: list[asyncpg.Connection] = []

    async def open_one(url: str = PG_URL, **kwargs: Any) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(url, **kwargs)
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        if not conn.is_closed():
            conn.terminate()


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(WAIT):
        while not await condition():  # noqa: ASYNC110 - the state is in the server
            await asyncio.sleep(0.02)


async def backend_waits(observer: asyncpg.Connection, pid: int, event_type: str) -> None:
    """Wait until backend ``pid`` runs a statement that waits on ``event_type``
    (``Timeout``: pg_sleep; ``Lock``: another transaction's lock)."""

    async def waiting() -> bool:
        found = await observer.fetchval(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
        )
        return bool(found == event_type)

    await until(waiting)


async def closed(conn: asyncpg.Connection) -> None:
    async def is_closed() -> bool:
        return conn.is_closed()

    await until(is_closed)


# -- PostgreSQL: refused ---------------------------------------------------------------------


async def test_connecting_while_the_server_refuses_is_refused(proxy: FaultProxy) -> None:
    """ECONNREFUSED from a new connection (a server down or restarting)."""
    proxy.refuse()
    exc = await raised(asyncpg.connect(proxy.url(PG_URL), timeout=WAIT))
    assert isinstance(exc, ConnectionRefusedError)
    assert_outage(exc, DbOutageKind.REFUSED)


async def test_a_query_on_the_pool_while_the_server_refuses_is_refused(
    proxy: FaultProxy, schema: str
) -> None:
    """Once the pool's connections were reset, a query opens a new one: refused."""
    db = await PostgresDatabase.connect(proxy.url(PG_URL), schema=schema, migrations=[])
    try:
        proxy.refuse()
        proxy.reset()

        async def pool_empty() -> bool:
            return db.pool.get_size() == 0

        await until(pool_empty)
        assert_outage(await raised(db.fetchall("SELECT 1")), DbOutageKind.REFUSED)
    finally:
        await db.close()


async def test_every_address_of_a_host_refusing_is_refused(
    proxy: FaultProxy, connect: Callable[..., Awaitable[asyncpg.Connection]]
) -> None:
    """A host with two addresses (``localhost`` as ::1 and 127.0.0.1) that both refuse:
    asyncio raises one OSError with no errno, "Multiple exceptions: ..."."""
    proxy.refuse()
    loop = asyncio.get_running_loop()

    async def two_addresses(host: str, port: int, **_: Any) -> list[Any]:
        # Name resolution only: both connection attempts are real.
        assert host == "db.example"
        tcp = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
        return [(*tcp, ("127.0.0.1", port)), (*tcp, ("127.0.0.2", port))]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "getaddrinfo", two_addresses)
        exc = await raised(connect(f"postgresql://postgres@db.example:{proxy.port}/test"))
    assert isinstance(exc, OSError) and exc.errno is None
    assert str(exc).startswith("Multiple exceptions: ")
    assert_outage(exc, DbOutageKind.REFUSED)


def test_cannot_connect_now_is_refused() -> None:
    """57P03 (the server is starting up or shutting down); built by hand: the test server
    cannot be made to answer it."""
    exc = asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
    assert_outage(exc, DbOutageKind.REFUSED)


# -- PostgreSQL: reset -----------------------------------------------------------------------


async def test_a_statement_running_when_the_connection_resets_is_reset(
    proxy: FaultProxy, connect: Callable[..., Awaitable[asyncpg.Connection]]
) -> None:
    """An RST under a running statement: asyncpg's ConnectionDoesNotExistError (08003),
    raised from the ConnectionResetError."""
    observer = await connect()
    conn = await connect(proxy.url(PG_URL))
    running = asyncio.ensure_future(conn.fetch("SELECT pg_sleep(30)"))
    await backend_waits(observer, conn.get_server_pid(), "Timeout")
    proxy.reset()
    exc = await raised(running)
    assert isinstance(exc, asyncpg.exceptions.ConnectionDoesNotExistError)
    assert isinstance(exc.__cause__, ConnectionResetError)
    assert_outage(exc, DbOutageKind.RESET)


async def test_a_statement_on_a_connection_reset_while_idle_is_reset(
    proxy: FaultProxy, connect: Callable[..., Awaitable[asyncpg.Connection]]
) -> None:
    """An idle connection that was reset: "connection is closed" (InterfaceError)."""
    conn = await connect(proxy.url(PG_URL))
    proxy.reset()
    await closed(conn)
    exc = await raised(conn.fetch("SELECT 1"))
    assert isinstance(exc, asyncpg.exceptions.InterfaceError)
    assert_outage(exc, DbOutageKind.RESET)


async def test_a_backend_terminated_during_a_statement_is_reset(
    connect: Callable[..., Awaitable[asyncpg.Connection]],
) -> None:
    """pg_terminate_backend (a restart, a failover): the statement fails with
    ConnectionDoesNotExistError raised from PostgreSQL's admin_shutdown (57P01)."""
    observer = await connect()
    conn = await connect()
    running = asyncio.ensure_future(conn.fetch("SELECT pg_sleep(30)"))
    await backend_waits(observer, conn.get_server_pid(), "Timeout")
    await observer.fetchval("SELECT pg_terminate_backend($1)", conn.get_server_pid())
    exc = await raised(running)
    assert isinstance(exc.__cause__, asyncpg.exceptions.AdminShutdownError)
    assert exc.__cause__.sqlstate == "57P01"
    assert_outage(exc, DbOutageKind.RESET)
    assert_outage(exc.__cause__, DbOutageKind.RESET)


async def test_a_statement_after_the_backend_was_terminated_while_idle_is_reset(
    connect: Callable[..., Awaitable[asyncpg.Connection]],
) -> None:
    """The next statement on a connection whose backend was terminated while idle."""
    observer = await connect()
    conn = await connect()
    await observer.fetchval("SELECT pg_terminate_backend($1)", conn.get_server_pid())
    await closed(conn)
    assert_outage(await raised(conn.fetch("SELECT 1")), DbOutageKind.RESET)


async def test_a_write_on_a_read_only_server_is_reset(
    connect: Callable[..., Awaitable[asyncpg.Connection]], schema: str
) -> None:
    """read_only_sql_transaction (25006), as on a primary turned standby by a failover:
    the next connection may reach the new primary."""
    conn = await connect(server_settings={"default_transaction_read_only": "on"})
    exc = await raised(conn.execute(f"UPDATE {schema}.t SET v = 1"))
    assert isinstance(exc, asyncpg.exceptions.ReadOnlySQLTransactionError)
    assert_outage(exc, DbOutageKind.RESET)


# -- PostgreSQL: timeout ---------------------------------------------------------------------


async def test_a_statement_through_a_stall_times_out(
    proxy: FaultProxy, connect: Callable[..., Awaitable[asyncpg.Connection]]
) -> None:
    """No answer within the command timeout (a partition): TimeoutError."""
    conn = await connect(proxy.url(PG_URL), command_timeout=SHORT)
    proxy.stall()
    exc = await raised(conn.fetch("SELECT 1"))
    assert isinstance(exc, TimeoutError)
    assert_outage(exc, DbOutageKind.TIMEOUT)


async def test_connecting_through_a_stall_times_out(proxy: FaultProxy) -> None:
    """A connection accepted but never answered: TimeoutError at the connect timeout."""
    proxy.stall()
    exc = await raised(asyncpg.connect(proxy.url(PG_URL), timeout=SHORT))
    assert isinstance(exc, TimeoutError)
    assert_outage(exc, DbOutageKind.TIMEOUT)


# -- PostgreSQL: serialization and deadlock --------------------------------------------------


async def test_a_serialization_failure_is_serialization(
    connect: Callable[..., Awaitable[asyncpg.Connection]], schema: str
) -> None:
    """Two SERIALIZABLE transactions update the row both read: the second fails, 40001."""
    first, second = await connect(), await connect()
    one = first.transaction(isolation="serializable")
    two = second.transaction(isolation="serializable")
    await one.start()
    await two.start()
    await first.fetchval(f"SELECT v FROM {schema}.t WHERE id = 1")
    await second.fetchval(f"SELECT v FROM {schema}.t WHERE id = 1")
    await first.execute(f"UPDATE {schema}.t SET v = 1 WHERE id = 1")
    await one.commit()
    exc = await raised(second.execute(f"UPDATE {schema}.t SET v = 2 WHERE id = 1"))
    await two.rollback()
    assert isinstance(exc, asyncpg.exceptions.SerializationError)
    assert_outage(exc, DbOutageKind.SERIALIZATION)


async def test_a_deadlock_is_deadlock(
    connect: Callable[..., Awaitable[asyncpg.Connection]], schema: str
) -> None:
    """Two transactions each wait for the other's row: PostgreSQL ends one, 40P01."""
    observer, first, second = await connect(), await connect(), await connect()
    await first.execute("SET deadlock_timeout = '60s'")  # the second one detects it
    await second.execute("SET deadlock_timeout = '50ms'")
    one, two = first.transaction(), second.transaction()
    await one.start()
    await two.start()
    await first.execute(f"UPDATE {schema}.t SET v = 1 WHERE id = 1")
    await second.execute(f"UPDATE {schema}.t SET v = 2 WHERE id = 2")
    waiting = asyncio.ensure_future(first.execute(f"UPDATE {schema}.t SET v = 1 WHERE id = 2"))
    await backend_waits(observer, first.get_server_pid(), "Lock")
    exc = await raised(second.execute(f"UPDATE {schema}.t SET v = 2 WHERE id = 1"))
    await two.rollback()
    await waiting
    await one.rollback()
    assert isinstance(exc, asyncpg.exceptions.DeadlockDetectedError)
    assert_outage(exc, DbOutageKind.DEADLOCK)


def test_postgresql_disk_full_is_disk_full_and_not_transient() -> None:
    """53100 (built by hand): an owner must act; retrying helps nobody."""
    exc = asyncpg.exceptions.DiskFullError("could not extend file: No space left on device")
    assert_outage(exc, DbOutageKind.DISK_FULL, transient=False)


# -- PostgreSQL: bugs ------------------------------------------------------------------------


async def test_a_constraint_violation_on_postgresql_is_not_transient(
    connect: Callable[..., Awaitable[asyncpg.Connection]], schema: str
) -> None:
    conn = await connect()
    exc = await raised(conn.execute(f"INSERT INTO {schema}.t VALUES (1, 0)"))
    assert isinstance(exc, asyncpg.UniqueViolationError)
    assert_bug(exc)


async def test_bad_sql_on_postgresql_is_not_transient(
    connect: Callable[..., Awaitable[asyncpg.Connection]],
) -> None:
    conn = await connect()
    assert_bug(await raised(conn.execute("SELEC 1")))
    assert_bug(await raised(conn.execute("SELECT * FROM closed_jobs_that_do_not_exist")))


async def test_two_statements_at_once_on_one_connection_is_not_transient(
    connect: Callable[..., Awaitable[asyncpg.Connection]],
) -> None:
    """asyncpg's "another operation is in progress" (an InterfaceError) is a bug."""
    conn = await connect()
    running = asyncio.ensure_future(conn.fetch("SELECT pg_sleep(0.5)"))
    await asyncio.sleep(0)  # the first statement is sent
    exc = await raised(conn.fetch("SELECT 1"))
    await running
    assert isinstance(exc, asyncpg.exceptions.InterfaceError)
    assert_bug(exc)


# -- causes ----------------------------------------------------------------------------------


async def test_an_error_raised_from_an_outage_is_that_outage(proxy: FaultProxy) -> None:
    """``raise ... from`` keeps the kind: a wrapper of a refused connection is refused."""
    proxy.refuse()
    try:
        try:
            await asyncpg.connect(proxy.url(PG_URL), timeout=WAIT)
        except OSError as exc:
            raise RuntimeError("could not reach the database") from exc
    except RuntimeError as wrapper:
        assert_outage(wrapper, DbOutageKind.REFUSED)


async def test_a_bug_in_an_outage_handler_is_a_bug(proxy: FaultProxy) -> None:
    """A KeyError raised while handling a refused connection is not an outage."""
    proxy.refuse()
    details: dict[str, str] = {}
    try:
        try:
            await asyncpg.connect(proxy.url(PG_URL), timeout=WAIT)
        except OSError:
            details["missing"].upper()
    except KeyError as bug:
        assert isinstance(bug.__context__, ConnectionRefusedError)
        assert_bug(bug)


# -- SQLite ----------------------------------------------------------------------------------


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    """A SQLite database with a table ``t``, waiting 50 ms for another connection's lock."""
    db = await SqliteDatabase.open_file(tmp_path / "bot.db", migrations=[], busy_timeout_ms=50)
    await db.write("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)")
    yield db
    await db.close()


@pytest.fixture
async def other_writer(tmp_path: Path, sqlite_db: SqliteDatabase) -> AsyncIterator[None]:
    """Another connection to the same file, holding its write lock (an owner's shell)."""

    def hold() -> sqlite3.Connection:
        conn = sqlite3.connect(tmp_path / "bot.db", isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")
        return conn

    conn = await asyncio.to_thread(hold)
    yield
    await asyncio.to_thread(conn.close)


@pytest.mark.usefixtures("other_writer")
async def test_a_write_on_a_file_locked_by_another_connection_raises_locked(
    sqlite_db: SqliteDatabase,
) -> None:
    """Past the busy timeout: "database is locked" (SQLITE_BUSY)."""
    exc = await raised(sqlite_db.write("INSERT INTO t (b) VALUES (x'00')"))
    assert isinstance(exc, sqlite3.OperationalError)
    assert exc.sqlite_errorname == "SQLITE_BUSY"
    assert_outage(exc, DbOutageKind.LOCKED)


@pytest.mark.usefixtures("other_writer")
async def test_a_transaction_on_a_file_locked_by_another_connection_raises_locked(
    sqlite_db: SqliteDatabase,
) -> None:
    """``BEGIN IMMEDIATE`` waits for the lock as long as a write does, then gives up."""

    async def transaction() -> None:
        async with sqlite_db.transaction() as tx:
            await tx.execute("INSERT INTO t (b) VALUES (x'00')")

    assert_outage(await raised(transaction()), DbOutageKind.LOCKED)


async def test_the_file_answers_again_once_the_other_connection_lets_go(
    tmp_path: Path, sqlite_db: SqliteDatabase
) -> None:
    """A lock is a moment: the same write succeeds once it is released."""
    conn = sqlite3.connect(tmp_path / "bot.db", isolation_level=None, check_same_thread=False)
    try:
        await asyncio.to_thread(conn.execute, "BEGIN IMMEDIATE")
        await raised(sqlite_db.write("INSERT INTO t (b) VALUES (x'00')"))
        await asyncio.to_thread(conn.execute, "ROLLBACK")
        assert await sqlite_db.write("INSERT INTO t (b) VALUES (x'00')") == 1
    finally:
        await asyncio.to_thread(conn.close)


async def test_a_full_sqlite_database_is_disk_full_and_not_transient(
    sqlite_db: SqliteDatabase,
) -> None:
    """No page left (``max_page_count`` reached): "database or disk is full"."""
    rows = await sqlite_db.fetchall("PRAGMA page_count")
    await sqlite_db.write(f"PRAGMA max_page_count = {int(rows[0][0])}")
    exc = await raised(sqlite_db.write("INSERT INTO t (b) VALUES (?)", (b"x" * 100_000,)))
    assert isinstance(exc, sqlite3.OperationalError)
    assert exc.sqlite_errorname == "SQLITE_FULL"
    assert_outage(exc, DbOutageKind.DISK_FULL, transient=False)


def test_a_write_to_a_full_disk_is_disk_full_and_not_transient() -> None:
    """ENOSPC from the file system (``/dev/full`` is always full)."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    with pytest.raises(OSError) as info, open("/dev/full", "wb", buffering=0) as full:
        full.write(b"x")
    assert info.value.errno == errno.ENOSPC
    assert_outage(info.value, DbOutageKind.DISK_FULL, transient=False)


async def test_a_constraint_violation_on_sqlite_is_not_transient(
    sqlite_db: SqliteDatabase,
) -> None:
    await sqlite_db.write("INSERT INTO t (id, b) VALUES (1, x'00')")
    exc = await raised(sqlite_db.write("INSERT INTO t (id, b) VALUES (1, x'00')"))
    assert isinstance(exc, sqlite3.IntegrityError)
    assert_bug(exc)


async def test_bad_sql_naming_a_locked_table_on_sqlite_is_not_transient(
    sqlite_db: SqliteDatabase,
) -> None:
    """ "no such table: locked_jobs" says "locked" but is bad SQL (SQLITE_ERROR)."""
    exc = await raised(sqlite_db.fetchall("SELECT * FROM locked_jobs"))
    assert "locked" in str(exc)
    assert_bug(exc)
    assert_bug(await raised(sqlite_db.fetchall("SELEC 1")))


# -- the PostgreSQL driver gives up in time --------------------------------------------------


@pytest.fixture
async def short_db(proxy: FaultProxy, schema: str) -> AsyncIterator[PostgresDatabase]:
    """The bot's PostgreSQL database through the proxy, every timeout ``SHORT``."""
    db = await PostgresDatabase.connect(
        proxy.url(PG_URL),
        schema=schema,
        migrations=[],
        command_timeout=SHORT,
        connect_timeout=SHORT,
        acquire_timeout=SHORT,
        close_timeout=SHORT,
        idle_in_transaction_timeout=SHORT,
    )
    yield db
    await db.close()


async def bounded(call: Awaitable[Any]) -> BaseException:
    """The exception ``call`` raises within :data:`BOUND` seconds."""
    return await raised(call, BOUND)


async def test_a_query_through_a_stalled_proxy_raises_a_transient_timeout_within_the_bound(
    proxy: FaultProxy, short_db: PostgresDatabase
) -> None:
    """A partition does not hang a read: TimeoutError from the command timeout."""
    await short_db.fetchall("SELECT v FROM t")
    proxy.stall()
    exc = await bounded(short_db.fetchall("SELECT v FROM t"))
    assert_outage(exc, DbOutageKind.TIMEOUT)


async def test_a_write_through_a_stalled_proxy_raises_a_transient_timeout_within_the_bound(
    proxy: FaultProxy, short_db: PostgresDatabase
) -> None:
    await short_db.write("UPDATE t SET v = 1")
    proxy.stall()
    exc = await bounded(short_db.write("UPDATE t SET v = 2"))
    assert_outage(exc, DbOutageKind.TIMEOUT)


async def test_a_transaction_through_a_stalled_proxy_raises_a_transient_error_within_the_bound(
    proxy: FaultProxy, short_db: PostgresDatabase
) -> None:
    """BEGIN, a statement, and the ROLLBACK after it: none of them hangs."""

    async def transaction() -> None:
        async with short_db.transaction() as tx:
            await tx.execute("UPDATE t SET v = 1")
            proxy.stall()
            await tx.execute("UPDATE t SET v = 2")

    exc = await bounded(transaction())
    assert is_transient(exc), repr(exc)


async def test_a_transaction_cut_off_by_a_stall_releases_its_locks_on_the_server(
    proxy: FaultProxy,
    short_db: PostgresDatabase,
    connect: Callable[..., Awaitable[asyncpg.Connection]],
    schema: str,
) -> None:
    """The server ends a session idle in its transaction (the bot cannot finish it), so
    another process can take the row it had locked."""
    other = await connect(command_timeout=BOUND)

    async def cut_off() -> None:
        async with short_db.transaction() as tx:
            await tx.execute("UPDATE t SET v = 1 WHERE id = 1")
            proxy.stall()
            await tx.execute("SELECT 1")

    await bounded(cut_off())
    assert await other.execute(f"UPDATE {schema}.t SET v = 3 WHERE id = 1") == "UPDATE 1"


async def test_a_new_connection_through_a_stalled_proxy_times_out_within_the_bound(
    proxy: FaultProxy, short_db: PostgresDatabase
) -> None:
    """With the pool's connection gone (reset) and the server silent, acquiring a new
    one gives up at the connect timeout."""
    proxy.refuse()  # until the pool is empty: it reconnects at once otherwise
    proxy.reset()

    async def pool_empty() -> bool:
        return short_db.pool.get_size() == 0

    await until(pool_empty)
    proxy.heal()
    proxy.stall()  # in the same step: no connection gets through in between
    exc = await bounded(short_db.fetchall("SELECT v FROM t"))
    assert_outage(exc, DbOutageKind.TIMEOUT)


async def test_waiting_for_a_pooled_connection_gives_up_at_the_acquire_timeout(
    proxy: FaultProxy, schema: str
) -> None:
    """Every connection busy: a caller waits the acquire timeout, not forever."""
    db = await PostgresDatabase.connect(
        proxy.url(PG_URL), schema=schema, migrations=[], max_size=1, acquire_timeout=SHORT
    )
    try:
        async with db.transaction():
            exc = await bounded(db.fetchall("SELECT v FROM t"))
        assert_outage(exc, DbOutageKind.TIMEOUT)
    finally:
        await db.close()


async def test_opening_the_database_through_a_stalled_proxy_times_out(
    proxy: FaultProxy, schema: str
) -> None:
    proxy.stall()
    exc = await bounded(
        PostgresDatabase.connect(
            proxy.url(PG_URL), schema=schema, migrations=[], connect_timeout=SHORT
        )
    )
    assert_outage(exc, DbOutageKind.TIMEOUT)


async def test_the_database_answers_again_once_the_stall_heals(
    proxy: FaultProxy, short_db: PostgresDatabase
) -> None:
    """After a timed-out statement the pool recovers by itself: the next query works."""
    proxy.stall()
    await bounded(short_db.fetchall("SELECT v FROM t"))
    proxy.heal()
    async with asyncio.timeout(WAIT):
        while True:
            try:
                rows = await short_db.fetchall("SELECT v FROM t ORDER BY id")
                break
            except Exception as exc:
                assert is_transient(exc), repr(exc)
                await asyncio.sleep(0.05)
    assert [row["v"] for row in rows] == [0, 0]


# -- asyncpg's pool is quiet -----------------------------------------------------------------


@pytest.fixture
def reporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[OutageReporter]:
    """A reporter of this test's own (nothing reported by earlier tests held back)."""
    fresh = OutageReporter()
    monkeypatch.setattr(outages_module, "_REPORTER", fresh)
    yield fresh


@pytest.mark.usefixtures("reporter")
async def test_the_pool_failing_to_reconnect_logs_one_line_without_a_traceback(
    proxy: FaultProxy, short_db: PostgresDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncpg's "Failed to restore the pool connection floor" (a traceback per attempt)
    becomes one WARNING line of the outage reporter."""
    caplog.set_level(logging.INFO)
    proxy.refuse()
    proxy.reset()

    async def reported() -> bool:
        return any("reconnecting the pool's idle connection" in r.message for r in caplog.records)

    await until(reported)
    line = next(r for r in caplog.records if "reconnecting the pool" in r.message)
    assert line.levelno == logging.WARNING
    assert line.name == "bot.db.postgres"
    assert line.exc_info is None
    assert line.message.startswith("Database refused the connection while reconnecting")
    assert not [r for r in caplog.records if r.name == "asyncpg.pool"]
