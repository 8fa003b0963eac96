"""A TCP fault proxy: a database that blinks, on command.

:class:`FaultProxy` listens on 127.0.0.1 (an ephemeral port) and forwards every
connection to a real server (the PostgreSQL test server). Between the bot and its
database it plays what a managed PostgreSQL does to its clients:

- :meth:`FaultProxy.reset`: every open connection is reset at once (an RST to both ends,
  through ``SO_LINGER`` 0), as when the server restarts or fails over;
- :meth:`FaultProxy.refuse`: new connections are refused (``ECONNREFUSED``: nothing
  listens on the port) for a while or until healed, as while the server starts again;
  open connections carry on;
- :meth:`FaultProxy.stall`: no byte passes either way, for a while or until healed, and
  every connection stays open, as in a network partition. A connection made during a
  stall is accepted and held: its server side is opened only when bytes flow again;
- :meth:`FaultProxy.heal`: back to forwarding, at once.

It runs in the event loop that starts it: a test's, or a stand-alone benchmark's
(``asyncio.run``), with no test framework needed::

    async with FaultProxy.to(PG_URL) as proxy:
        db = await open_database(proxy.url(PG_URL), schema="t_abc")
        proxy.stall(10.0)          # the next ten seconds, nothing passes
        ...

While the port is refused it stays bound to the proxy (a second socket holds it with
``SO_REUSEPORT``), so nothing else can take it before the proxy listens again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from types import TracebackType
from typing import Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["FaultProxy"]

HOST = "127.0.0.1"
CHUNK = 65_536  # bytes read from one side before they are passed to the other
BACKLOG = 128


def _bound_socket(port: int) -> socket.socket:
    """A non-blocking TCP socket bound to ``HOST:port`` (0: any free port), not listening.

    A bound socket that does not listen answers a connection with RST, which is what a
    client sees as "connection refused".
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
        sock.bind((HOST, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _set_rst_on_close(sock: socket.socket | None) -> None:
    """Make closing ``sock`` send an RST instead of a FIN (``SO_LINGER`` on, 0 s)."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Link:
    """One client connection and, once bytes may flow, its connection to the server."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock  # the client's, until its stream is opened
        self.client: asyncio.StreamWriter | None = None
        self.server: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def abort(self) -> None:
        """Reset both ends at once."""
        if self.client is None:
            _set_rst_on_close(self.sock)
            self.sock.close()
        for writer in (self.client, self.server):
            if writer is not None:
                _set_rst_on_close(writer.get_extra_info("socket"))
                writer.transport.abort()

    def close(self) -> None:
        """Close both ends (a FIN), unless already closed."""
        if self.client is None:
            self.sock.close()
        for writer in (self.client, self.server):
            if writer is not None and not writer.transport.is_closing():
                writer.transport.close()


class FaultProxy:
    """Forwards TCP connections from ``127.0.0.1:port`` to ``target``; see the module
    docstring for the faults. Use it as an async context manager (or :meth:`start` and
    :meth:`close`) in the event loop whose connections it carries."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0  # known once started
        self.accepted = 0  # client connections accepted so far
        self.held_bytes = 0  # bytes read from one side and not yet passed on
        self._links: set[_Link] = set()
        self._spare: socket.socket | None = None  # bound, not listening: holds the port
        self._listener: socket.socket | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._changed = asyncio.Condition()
        self._refusing = False
        self._heal_later: asyncio.TimerHandle | None = None
        self._closed = False

    @classmethod
    def to(cls, url: str) -> FaultProxy:
        """A proxy to the server a ``postgresql://`` URL names (port 5432 by default)."""
        parts = urlsplit(url)
        return cls(parts.hostname or HOST, parts.port or 5432)

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._spare = _bound_socket(0)
        self.port = self._spare.getsockname()[1]
        self._listen()

    async def close(self) -> None:
        """Stop listening, reset every open connection, free the port."""
        self._closed = True
        self._cancel_heal()
        self._stop_listening()
        if self._spare is not None:
            self._spare.close()
            self._spare = None
        self._flowing.set()
        links = list(self._links)
        for link in links:
            link.abort()
        tasks = [link.task for link in links if link.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- what the bot connects to ------------------------------------------------------------

    def url(self, base_url: str, schema: str | None = None) -> str:
        """``base_url`` (a ``postgresql://`` URL) through this proxy: same user, password
        and database, host and port replaced; with ``schema``, every connection's
        ``search_path`` (as a bot process under test gets it in ``DATABASE_URL``)."""
        parts = urlsplit(base_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{HOST}:{self.port}" if userinfo else f"{HOST}:{self.port}"
        query = parse_qsl(parts.query)
        if schema is not None:
            query = [(k, v) for k, v in query if k != "search_path"] + [("search_path", schema)]
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))

    @property
    def connections(self) -> int:
        """Client connections open through the proxy now."""
        return len(self._links)

    async def wait_for(self, condition: Callable[[FaultProxy], bool]) -> None:
        """Return once ``condition(self)`` holds (checked whenever a connection opens or
        closes, or bytes are held); the caller bounds the wait."""
        async with self._changed:
            await self._changed.wait_for(lambda: condition(self))

    # -- faults ------------------------------------------------------------------------------

    def reset(self) -> int:
        """Reset every open connection at once (both ends get an RST); new connections
        are forwarded as before. Returns how many were reset."""
        links = list(self._links)
        for link in links:
            link.abort()
            if link.task is not None:
                link.task.cancel()
        return len(links)

    def refuse(self, seconds: float | None = None) -> None:
        """Refuse new connections, for ``seconds`` or until :meth:`heal`. Connections
        already open carry on; any waiting to be accepted are reset."""
        self._refusing = True
        self._schedule_heal(seconds)
        self._stop_listening()

    def stall(self, seconds: float | None = None) -> None:
        """Pass no byte either way, for ``seconds`` or until :meth:`heal`; connections
        stay open and new ones are accepted but held."""
        self._flowing.clear()
        self._schedule_heal(seconds)

    def heal(self) -> None:
        """Forward again: accept new connections, pass every held byte on, in order."""
        self._cancel_heal()
        if self._closed:
            return
        self._flowing.set()
        if self._refusing:
            self._refusing = False
            self._listen()

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    @property
    def refusing(self) -> bool:
        return self._refusing

    # -- inside ------------------------------------------------------------------------------

    def _schedule_heal(self, seconds: float | None) -> None:
        self._cancel_heal()
        if seconds is not None:
            self._heal_later = asyncio.get_running_loop().call_later(seconds, self.heal)

    def _cancel_heal(self) -> None:
        if self._heal_later is not None:
            self._heal_later.cancel()
            self._heal_later = None

    def _listen(self) -> None:
        """Make the spare socket the listener, and bind a new spare to hold the port for
        the next refusal."""
        assert self._spare is not None and self._listener is None
        listener, self._spare = self._spare, _bound_socket(self.port)
        listener.listen(BACKLOG)
        self._listener = listener
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, listener)

    def _stop_listening(self) -> None:
        # The reader is removed before the socket is closed (not left to a cancelled
        # task), so a socket that reuses its file number is not unregistered later.
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()  # the spare still holds the port: connections are refused
            self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            self.accepted += 1
            link = _Link(sock)
            self._links.add(link)
            link.task = asyncio.get_running_loop().create_task(
                self._carry(link), name="faultproxy-link"
            )

    async def _carry(self, link: _Link) -> None:
        """Open the server side once bytes may flow, then pump both ways. An end of
        stream from either side closes both (a FIN); a reset from either side resets
        the other."""
        try:
            client, link.client = await asyncio.open_connection(sock=link.sock)
            await self._notify()
            await self._flowing.wait()
            try:
                server, link.server = await asyncio.open_connection(*self.target)
            except OSError:
                link.abort()  # the server refused: so does the proxy, to this client
                return
            pumps = [
                asyncio.ensure_future(self._pump(client, link.server)),
                asyncio.ensure_future(self._pump(server, link.client)),
            ]
            try:
                done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
            if any(pump.exception() is not None for pump in done):
                link.abort()
        finally:
            self._links.discard(link)
            link.close()
            await self._notify()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Pass bytes from ``reader`` to ``writer`` until the end of the stream. Bytes
        (and the end) read during a stall are held until it ends."""
        while True:
            data = await reader.read(CHUNK)
            if not self._flowing.is_set():
                self.held_bytes += len(data)
                await self._notify()
                try:
                    await self._flowing.wait()
                finally:
                    self.held_bytes -= len(data)
            if not data:
                return
            writer.write(data)
            await writer.drain()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
