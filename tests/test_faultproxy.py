"""The TCP fault proxy (tests.support.faultproxy) itself: bytes pass; reset, refuse and
stall do what they say; heal restores. Against a small echo server, and once in front of
the PostgreSQL test server.

"No byte passes" is shown without waiting for something not to happen: the proxy counts
the bytes it read and holds (``held_bytes``), and the echo server counts what reached it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from bot.db import open_database
from tests.support.databases import PG_URL, drop_schema, require_postgres
from tests.support.faultproxy import FaultProxy

WAIT = 10.0  # seconds a test waits for a condition before it fails


class Echo:
    """A TCP server on 127.0.0.1 that sends back what it reads, and counts what it sees."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = 0
        self.resets = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.changed = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        self.changed.set()
        try:
            while data := await reader.read(65_536):
                self.received += len(data)
                self.changed.set()
                writer.write(data)
                await writer.drain()
        except ConnectionResetError:
            self.resets += 1
            self.changed.set()
        finally:
            writer.transport.close()

    async def until(self, condition: object) -> None:
        """Wait until ``condition()`` holds."""
        assert callable(condition)
        async with asyncio.timeout(WAIT):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    server = Echo()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def proxy(echo: Echo) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port) as p:
        yield p


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def round_trip(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], data: bytes = b"ping"
) -> bytes:
    reader, writer = conn
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(WAIT):
        return await reader.readexactly(len(data))


async def held(proxy: FaultProxy, count: int) -> None:
    async with asyncio.timeout(WAIT):
        await proxy.wait_for(lambda p: p.held_bytes == count)


# -- bytes pass ------------------------------------------------------------------------------


async def test_bytes_pass_both_ways(proxy: FaultProxy) -> None:
    """What the client sends reaches the server, and the answer comes back."""
    assert await round_trip(await connect(proxy), b"hello through the proxy") == (
        b"hello through the proxy"
    )


async def test_a_client_closing_closes_the_server_side(proxy: FaultProxy, echo: Echo) -> None:
    """A client's end of stream reaches the server as one (not as a reset)."""
    conn = await connect(proxy)
    await round_trip(conn)
    conn[1].close()
    await conn[1].wait_closed()
    async with asyncio.timeout(WAIT):
        await proxy.wait_for(lambda p: p.connections == 0)
    assert echo.resets == 0


# -- reset -----------------------------------------------------------------------------------


async def test_reset_resets_every_open_connection_at_both_ends(
    proxy: FaultProxy, echo: Echo
) -> None:
    """Each client reads a connection reset, and the server sees each reset too."""
    conns = [await connect(proxy) for _ in range(3)]
    for conn in conns:
        await round_trip(conn)
    assert proxy.reset() == 3
    for reader, _ in conns:
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(WAIT):
                await reader.read(1)
    await echo.until(lambda: echo.resets == 3)


async def test_new_connections_pass_after_a_reset(proxy: FaultProxy) -> None:
    """A reset is a moment, not a state: the next connection is forwarded."""
    await round_trip(await connect(proxy))
    proxy.reset()
    assert await round_trip(await connect(proxy)) == b"ping"


# -- refuse ----------------------------------------------------------------------------------


async def test_refuse_refuses_new_connections(proxy: FaultProxy) -> None:
    """While refusing, a new connection gets ECONNREFUSED."""
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        await connect(proxy)


async def test_refuse_leaves_open_connections_working(proxy: FaultProxy) -> None:
    """A connection opened before the refusal still carries bytes."""
    conn = await connect(proxy)
    await round_trip(conn)
    proxy.refuse()
    assert await round_trip(conn, b"still here") == b"still here"


async def test_heal_after_refuse_accepts_again(proxy: FaultProxy) -> None:
    """Healed, the proxy listens on the same port again."""
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        await connect(proxy)
    proxy.heal()
    assert await round_trip(await connect(proxy)) == b"ping"


async def test_a_timed_refusal_ends_by_itself(proxy: FaultProxy) -> None:
    """``refuse(seconds)`` listens again once they are over, without a heal."""
    proxy.refuse(0.2)
    async with asyncio.timeout(WAIT):
        while True:
            try:
                conn = await connect(proxy)
                break
            except ConnectionRefusedError:
                await asyncio.sleep(0.05)
    assert await round_trip(conn) == b"ping"


# -- stall -----------------------------------------------------------------------------------


async def test_stall_passes_no_byte_to_the_server_and_keeps_the_connection_open(
    proxy: FaultProxy, echo: Echo
) -> None:
    """Bytes sent during a stall are held by the proxy; the server gets none of them."""
    reader, writer = conn = await connect(proxy)
    await round_trip(conn, b"12345")
    proxy.stall()
    writer.write(b"x" * 10)
    await writer.drain()
    await held(proxy, 10)
    assert echo.received == 5
    assert proxy.connections == 1
    assert not reader.at_eof()


async def test_stall_passes_no_byte_to_the_client(proxy: FaultProxy, echo: Echo) -> None:
    """Bytes the server sends during a stall are held too."""
    conn = await connect(proxy)
    await round_trip(conn)
    proxy.stall()
    echo.writers[0].write(b"from the server")
    await held(proxy, len(b"from the server"))
    proxy.heal()
    async with asyncio.timeout(WAIT):
        assert await conn[0].readexactly(len(b"from the server")) == b"from the server"


async def test_a_connection_made_during_a_stall_reaches_the_server_only_after_heal(
    proxy: FaultProxy, echo: Echo
) -> None:
    """A new connection is accepted but not forwarded while stalled."""
    proxy.stall()
    conn = await connect(proxy)
    async with asyncio.timeout(WAIT):
        await proxy.wait_for(lambda p: p.accepted == 1)
    assert echo.connections == 0
    proxy.heal()
    assert await round_trip(conn) == b"ping"
    assert echo.connections == 1


async def test_heal_passes_the_held_bytes_on_in_order(proxy: FaultProxy) -> None:
    """Everything sent during the stall arrives after it, in order, nothing lost."""
    reader, writer = conn = await connect(proxy)
    await round_trip(conn)
    proxy.stall()
    writer.write(b"first ")
    await writer.drain()
    await held(proxy, len(b"first "))
    writer.write(b"second")
    await writer.drain()
    proxy.heal()
    async with asyncio.timeout(WAIT):
        assert await reader.readexactly(len(b"first second")) == b"first second"


async def test_a_timed_stall_ends_by_itself(proxy: FaultProxy) -> None:
    """``stall(seconds)`` lets bytes through once they are over, without a heal."""
    reader, writer = await connect(proxy)
    proxy.stall(0.2)
    writer.write(b"later")
    await writer.drain()
    async with asyncio.timeout(WAIT):
        assert await reader.readexactly(5) == b"later"
    assert not proxy.stalled


# -- in front of PostgreSQL ------------------------------------------------------------------


def test_url_points_at_the_proxy_and_keeps_the_rest() -> None:
    """User, password, database and options are kept; host and port are the proxy's."""
    p = FaultProxy("db.example", 5432)
    p.port = 40001
    assert p.url("postgresql://bot:pw@db.example:5432/upscaler?sslmode=disable", "t_x") == (
        "postgresql://bot:pw@127.0.0.1:40001/upscaler?sslmode=disable&search_path=t_x"
    )


async def test_postgresql_answers_through_the_proxy_and_again_after_a_reset() -> None:
    """The bot's database opens through the proxy; after a reset the pool reconnects."""
    await require_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    async with FaultProxy.to(PG_URL) as proxy:
        db = await open_database(proxy.url(PG_URL), schema=schema, migrations=[])
        try:
            assert [tuple(row) for row in await db.fetchall("SELECT 1 AS one")] == [(1,)]
            assert proxy.reset() >= 1
            async with asyncio.timeout(WAIT):
                while True:
                    with contextlib.suppress(Exception):
                        rows = await db.fetchall("SELECT current_schema() AS s")
                        break
            assert rows[0]["s"] == schema
        finally:
            await db.close()
            await drop_schema(schema)
