"""Start-up that explains itself: one line and a documented exit status per problem.

``python -m bot`` runs its start-up in phases; each phase turns the failures an owner can
fix into a :class:`StartupError`, which ``bot.app.cli`` prints as one line on stderr
(never a traceback, never a secret) before exiting with the error's status:

=====  =========================================================================
 2     configuration: a missing or malformed setting (:data:`EXIT_CONFIG`)
 3     Discord rejected ``DISCORD_TOKEN`` (:data:`EXIT_TOKEN_REJECTED`)
 4     Discord could not be reached (:data:`EXIT_DISCORD_UNREACHABLE`)
 5     the database (or the spool beside it) cannot be opened, or did not answer within
       ``STARTUP_RETRY_SECONDS`` (:data:`EXIT_DATABASE`)
 6     the 1min.ai host in ``ONEMIN_API_BASE`` does not resolve
       (:data:`EXIT_ONEMIN_UNRESOLVABLE`)
 7     ``METRICS_PORT`` cannot be opened on ``METRICS_HOST`` (in use, or not an address
       of this machine) (:data:`EXIT_METRICS_PORT`)
=====  =========================================================================

A network that is not up yet (the machine just booted, a container started before its
network) is waited for: name lookups and the Discord login are retried with exponential
backoff for ``STARTUP_RETRY_SECONDS`` in all (:attr:`~bot.app.settings.Settings.startup_retry`),
one log line per failed try. So is a database that blinks (:func:`bot.db.transient.db_outage`:
a PostgreSQL restarting or failing over, a partition, a SQLite file locked by another
program): a process started by a service manager during a failover waits for it instead
of exiting (:func:`open_database_or_exit`).

The bot has no voice: :func:`quiet_voice_warnings` turns off discord.py's warnings about
the missing voice libraries (PyNaCl, davey) through the flags discord.py reads.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import discord
import discord.http

from bot.app.settings import Settings
from bot.db.transient import DbOutageKind, db_outage
from bot.retry import Backoff, retry
from bot.timings import STARTUP_FIRST_RETRY, STARTUP_MAX_RETRY

__all__ = [
    "DATABASE_ERRORS",
    "EXIT_CONFIG",
    "EXIT_DATABASE",
    "EXIT_DISCORD_UNREACHABLE",
    "EXIT_METRICS_PORT",
    "EXIT_ONEMIN_UNRESOLVABLE",
    "EXIT_TOKEN_REJECTED",
    "GaveUp",
    "RetryPolicy",
    "StartupError",
    "database_errors",
    "database_reason",
    "describe_database",
    "discord_errors",
    "discord_host",
    "discord_login",
    "network_or_exit",
    "network_reason",
    "open_database_or_exit",
    "prepare_spool",
    "probe_database",
    "quiet_voice_warnings",
    "resolve",
    "resolve_onemin",
    "retrying",
    "wait_for_discord",
]

log = logging.getLogger(__name__)

# Exit statuses of ``python -m bot`` (documented for owners and service managers).
EXIT_CONFIG = 2  # a setting is missing or malformed
EXIT_TOKEN_REJECTED = 3  # Discord refused DISCORD_TOKEN
EXIT_DISCORD_UNREACHABLE = 4  # no answer from Discord within the retry time
EXIT_DATABASE = 5  # the database or the spool directory cannot be opened
EXIT_ONEMIN_UNRESOLVABLE = 6  # ONEMIN_API_BASE's host does not resolve
EXIT_METRICS_PORT = 7  # METRICS_PORT cannot be opened (in use, or a foreign METRICS_HOST)

TRY_TIMEOUT = 10.0  # seconds one try (a lookup or a login) may take
MIN_RETRY_WAIT = 0.05  # seconds; with less time left than this, start-up gives up

# What opening the database can raise that an owner fixes (paths, permissions, a damaged
# file). A PostgreSQL engine adds its driver's connection errors here.
# What opening either engine raises when it cannot (asyncpg's errors, including a refused
# connection or an unknown database, all derive from these two).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    sqlite3.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)

TOKEN_HINT = (
    "copy the token again from the Developer Portal (your application > Bot > Reset Token)"
    " into DISCORD_TOKEN"
)

_T = TypeVar("_T")


class StartupError(Exception):
    """A start-up problem the owner can fix: ``str()`` is the one line to print.

    ``status`` is the process exit status; ``message`` says what is wrong and what to do.
    """

    def __init__(self, status: int, message: str, *, prefix: str = "Cannot start") -> None:
        super().__init__(f"{prefix}: {message}")
        self.status = status
        self.message = message


class GaveUp(Exception):
    """:func:`retrying` ran out of time; ``reason`` describes the last failure."""

    def __init__(self, reason: str, tries: int, elapsed: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tries = tries
        self.elapsed = elapsed

    @property
    def after(self) -> str:
        """``after 5 tries in 31 s`` (or ``after 1 try``) for the final message."""
        if self.tries == 1:
            return "after 1 try"
        return f"after {self.tries} tries in {self.elapsed:.0f} s"


# -- retries ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long start-up waits for the network: ``budget`` seconds in all (0: one try)."""

    budget: float
    first_delay: float = STARTUP_FIRST_RETRY  # seconds before the second try; doubles
    max_delay: float = STARTUP_MAX_RETRY  # seconds, the longest wait between two tries
    try_timeout: float = TRY_TIMEOUT

    @classmethod
    def for_settings(cls, settings: Settings) -> RetryPolicy:
        """``STARTUP_RETRY_SECONDS`` in all, on the waits of ``settings.timings``."""
        return cls(
            budget=settings.startup_retry,
            first_delay=settings.timings.startup_first_retry,
            max_delay=settings.timings.startup_max_retry,
        )

    @property
    def backoff(self) -> Backoff:
        """The waits between tries: ``first_delay``, doubling up to ``max_delay``."""
        return Backoff(base=self.first_delay, cap=self.max_delay, jitter=False)


async def retrying(
    what: str,
    attempt: Callable[[], Awaitable[_T]],
    transient: Callable[[BaseException], str | None],
    policy: RetryPolicy,
    *,
    bounded: bool = True,
) -> _T:
    """Call ``attempt()`` until it succeeds or ``policy.budget`` seconds are spent.

    ``transient(exc)`` returns a short reason for a failure worth retrying (anything else
    is raised at once). Each failed try is logged as one line; when time runs out,
    :class:`GaveUp` carries the last reason. Each try is bounded by ``policy.try_timeout``
    (and by the time left), and a try that times out counts as a transient failure;
    without ``bounded`` the attempt bounds itself (the database: its driver's connect and
    statement timeouts, so that a long migration is not cut short).
    """
    started = time.monotonic()
    deadline = started + policy.budget
    time_limit = policy.try_timeout

    async def timed() -> _T:
        nonlocal time_limit
        if not bounded:
            return await attempt()
        time_limit = max(1.0, min(policy.try_timeout, deadline - time.monotonic()))
        async with asyncio.timeout(time_limit):
            return await attempt()

    def wait(exc: Exception, tries: int) -> float | None:
        if isinstance(exc, TimeoutError):
            reason: str | None = f"no answer within {time_limit:.0f} s"
        else:
            reason = transient(exc)
        if reason is None:
            return None
        left = deadline - time.monotonic()
        if left < MIN_RETRY_WAIT:
            raise GaveUp(reason, tries, time.monotonic() - started)
        delay = min(policy.backoff.delay(tries), left)
        log.warning("%s: try %d failed (%s); trying again in %.1f s", what, tries, reason, delay)
        return delay

    return await retry(timed, Exception, wait)


async def network_or_exit(
    what: str,
    attempt: Callable[[], Awaitable[object]],
    policy: RetryPolicy,
    status: int,
    explain: Callable[[str], str],
) -> None:
    """:func:`retrying` on network failures; out of time, :class:`StartupError` with
    ``status`` and ``explain("(<last reason>) after <n> tries in <s> s")``."""
    try:
        await retrying(what, attempt, network_reason, policy)
    except GaveUp as gave_up:
        raise StartupError(status, explain(f"({gave_up.reason}) {gave_up.after}")) from None


def network_reason(exc: BaseException) -> str | None:
    """A short reason for a network failure worth retrying, or None for anything else."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"name lookup failed: {_gai_text(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _os_text(exc.os_error)
    if isinstance(exc, socket.gaierror):
        return f"name lookup failed: {_gai_text(exc)}"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "the connection was dropped"
    if isinstance(exc, discord.DiscordServerError):
        return f"Discord answered {exc.status}"
    if isinstance(exc, aiohttp.ClientOSError | ConnectionError):
        return _os_text(exc)
    return None


def _os_text(exc: OSError) -> str:
    # asyncio words a refused connect as "Connect call failed (addr)"; the errno says more.
    if exc.errno and exc.errno > 0:
        return os.strerror(exc.errno).lower()
    return (exc.strerror or type(exc).__name__).lower()


def _gai_text(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


# -- 1min.ai ---------------------------------------------------------------------------


async def resolve(host: str, port: int) -> None:
    """Look ``host`` up (getaddrinfo in a thread); raises :class:`socket.gaierror`.

    Callers bound the wait with a timeout; a lookup thread left behind ends on its own.
    """
    await asyncio.to_thread(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)


async def resolve_onemin(base_url: str, policy: RetryPolicy) -> None:
    """Wait until the host of ``ONEMIN_API_BASE`` resolves, or raise :class:`StartupError`."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)

    async def attempt() -> None:
        await resolve(host, port)

    await network_or_exit(
        f"Looking up 1min.ai host {host}",
        attempt,
        policy,
        EXIT_ONEMIN_UNRESOLVABLE,
        lambda why: (
            f"the 1min.ai host {host} (ONEMIN_API_BASE) cannot be looked up {why}:"
            " check ONEMIN_API_BASE for typos, and the machine's network and DNS"
        ),
    )


# -- Discord ---------------------------------------------------------------------------


def discord_host() -> str:
    """Where discord.py sends REST calls (``discord.com``, or a test emulator)."""
    return urlsplit(discord.http.Route.BASE).netloc or discord.http.Route.BASE


async def discord_login(token: str) -> tuple[discord.http.HTTPClient, dict[str, object]]:
    """Log in over REST (``GET /users/@me``) as discord.py does; no gateway.

    Returns the logged-in :class:`discord.http.HTTPClient` (close it) and the bot user.
    Raises :class:`discord.LoginFailure` for a rejected token, aiohttp or discord.py
    errors when Discord cannot be reached.
    """
    http = discord.http.HTTPClient(asyncio.get_running_loop())
    try:
        user = await http.static_login(token)
    except BaseException:
        await http.close()
        raise
    return http, dict(user)


async def wait_for_discord(token: str, policy: RetryPolicy) -> None:
    """Wait until Discord answers a login, or raise :class:`StartupError`.

    A rejected token is not retried (status 3); a network that is not up yet is, for
    ``policy.budget`` seconds (then status 4).
    """

    async def attempt() -> None:
        http, _ = await discord_login(token)
        await http.close()

    host = discord_host()
    with discord_errors():
        await network_or_exit(
            f"Connecting to Discord ({host})",
            attempt,
            policy,
            EXIT_DISCORD_UNREACHABLE,
            lambda why: (
                f"cannot reach Discord at {host} {why}: check the machine's network"
                " connection, firewall and proxy, or set STARTUP_RETRY_SECONDS to wait longer"
            ),
        )


@contextmanager
def discord_errors() -> Iterator[None]:
    """Turn a rejected token or an unreachable Discord into a :class:`StartupError`.

    Wraps the bot's own login and gateway connection too: a token reset while the bot
    runs closes the gateway with code 4004, which is the same problem.
    """
    try:
        yield
    except discord.LoginFailure:
        raise StartupError(
            EXIT_TOKEN_REJECTED, f"Discord rejected DISCORD_TOKEN (401): {TOKEN_HINT}"
        ) from None
    except discord.ConnectionClosed as exc:
        if exc.code != 4004:
            raise
        raise StartupError(
            EXIT_TOKEN_REJECTED,
            f"Discord closed the connection: the token is no longer valid (4004): {TOKEN_HINT}",
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        reason = network_reason(exc)
        if reason is None:
            raise
        raise StartupError(
            EXIT_DISCORD_UNREACHABLE,
            f"cannot reach Discord at {discord_host()} ({reason}): check the machine's"
            " network connection, firewall and proxy",
        ) from None


# -- the database ----------------------------------------------------------------------


def describe_database(settings: Settings) -> str:
    """The database for messages: the SQLite path, or PostgreSQL without its password."""
    path = settings.database_path
    if path is not None:
        return f"SQLite {path}"
    parts = urlsplit(settings.database_url.get())
    where = parts.hostname or "?"
    if parts.port:
        where += f":{parts.port}"
    return f"PostgreSQL {where}/{parts.path.strip('/')}"


def _storage_reason(exc: BaseException) -> str:
    if isinstance(exc, NotADirectoryError | FileExistsError):
        return f"{exc.filename or 'a part of the path'} is a file, not a directory"
    if isinstance(exc, PermissionError):
        return f"permission denied on {exc.filename or 'the path'}"
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return f"{exc.filename or 'the path'} is on a read-only file system"
    if isinstance(exc, OSError):
        text = exc.strerror or type(exc).__name__
        return f"{text}: {exc.filename}" if exc.filename else text
    return str(exc) or type(exc).__name__


def database_reason(exc: BaseException) -> str | None:
    """A short reason for a database that did not answer (worth waiting for), or None
    for anything else (a wrong path, password or database name: the owner must act)."""
    kind = db_outage(exc)
    if kind is None or kind is DbOutageKind.DISK_FULL:
        return None
    if kind is DbOutageKind.LOCKED:
        return "the database file is locked by another program"
    if isinstance(exc, TimeoutError):
        return "no answer"
    if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
        return _os_text(exc)
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _unreachable_hint(settings: Settings) -> str:
    if settings.database_path is not None:
        return "close the program holding the database file (a backup, a sqlite3 shell)"
    return (
        "check that the PostgreSQL server is running and reachable from this machine, and"
        " the host and port in DATABASE_URL"
    )


def database_unreachable(settings: Settings, reason: str) -> str:
    """The one line for a database that did not answer: engine, where, and the error."""
    return (
        f"cannot reach the database ({describe_database(settings)}): {reason}:"
        f" {_unreachable_hint(settings)}"
    )


@contextmanager
def database_errors(settings: Settings) -> Iterator[None]:
    """Turn a database that cannot be opened or migrated into a :class:`StartupError`.

    A database that did not answer is said as such (engine, host:port, the error); on
    SQLite anything else is about the file's path; on PostgreSQL about the URL's user,
    password and database (never about directories)."""
    try:
        yield
    except DATABASE_ERRORS as exc:
        reason = database_reason(exc)
        if reason is not None:
            message = database_unreachable(settings, reason)
        elif db_outage(exc) is DbOutageKind.DISK_FULL:
            message = (
                f"the database's disk is full ({describe_database(settings)}): free some"
                " space on it"
            )
        elif settings.database_path is None:
            message = (
                f"cannot open the database ({describe_database(settings)}):"
                f" {_storage_reason(exc)}: check DATABASE_URL (user, password, database"
                " name) and the server's access rules"
            )
        else:
            message = (
                f"cannot open the database ({describe_database(settings)}):"
                f" {_storage_reason(exc)}: check DATABASE_URL, and that its directory exists"
                " or can be created and is writable by the bot"
            )
        raise StartupError(EXIT_DATABASE, message) from None


async def open_database_or_exit(
    settings: Settings, attempt: Callable[[], Awaitable[_T]], policy: RetryPolicy
) -> _T:
    """``attempt()`` (open the database and what is built on it), waiting up to
    ``STARTUP_RETRY_SECONDS`` for a database that does not answer, with one line per
    failed try; then :class:`StartupError` (status 5) naming the outage. A database
    that cannot be opened for another reason stops start-up at once."""

    async def opened() -> _T:
        await probe_database(settings)
        return await attempt()

    with database_errors(settings):
        try:
            return await retrying(
                f"Opening the database ({describe_database(settings)})",
                opened,
                database_reason,
                policy,
                bounded=False,
            )
        except GaveUp as gave_up:
            raise StartupError(
                EXIT_DATABASE,
                database_unreachable(settings, f"{gave_up.reason} {gave_up.after}"),
            ) from None


async def probe_database(settings: Settings) -> None:
    """Check that SQLite can create and open the database file, before aiosqlite does.

    aiosqlite 0.22 leaves its worker thread reporting a failed connect to the event loop
    after it closed, which prints a thread traceback at exit; a plain ``sqlite3`` open
    (in a thread) fails the same way, cleanly. A no-op on PostgreSQL.
    """
    path = settings.database_path
    if path is None:
        return

    def probe() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        sqlite3.connect(path).close()

    await asyncio.to_thread(probe)


def prepare_spool(settings: Settings) -> None:
    """Create the spool directory now, so a bad ``SPOOL_DIR`` stops start-up with one line."""
    try:
        settings.spool_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(
            EXIT_DATABASE,
            f"cannot create the spool directory {settings.spool_dir}: {_storage_reason(exc)}:"
            " check SPOOL_DIR (default: a spool folder beside the database)",
        ) from None


# -- voice -----------------------------------------------------------------------------


def quiet_voice_warnings() -> None:
    """Stop discord.py warning that voice is unsupported: the bot never uses voice.

    discord.py 2.7 logs "PyNaCl is not installed, voice will NOT be supported" and the
    same for davey when a client is built while ``VoiceClient.warn_nacl`` /
    ``warn_dave`` are true; it clears them itself after warning once.
    """
    discord.VoiceClient.warn_nacl = False
    if hasattr(discord.VoiceClient, "warn_dave"):
        discord.VoiceClient.warn_dave = False
