"""``upscale-bot check``: verify the set-up without starting the bot.

Prints one line per check and exits 0 only when every check passes::

    ✔ Settings: valid (database SQLite data/upscaler.db, 1min.ai at https://api.1min.ai)
    ✔ Discord token: logged in as UpscaleBot#0001 (id 1234567890)
    ✔ Discord servers: in 2 servers, each with Send Messages, Attach Files, Embed Links,
      Read Message History
    ✔ Database: SQLite data/upscaler.db, schema version 5
    ✔ 1min.ai: https://api.1min.ai reachable, API key accepted (test upload of 153 bytes)

A failing check starts with ✘ and says what to do, e.g. ``✘ 1min.ai: the API key was
refused (401): check ONEMIN_API_KEY``. The gateway is never opened: the token is checked
by a REST login (``GET /users/@me``) and the servers by ``GET /users/@me/guilds`` (the
bot's server-wide permissions; channel overrides are not visible there). The database is
opened as the bot opens it (pending migrations are applied). 1min.ai is checked with the
cheapest authenticated call, an asset upload of the 64x64 probe image
(:mod:`bot.images.probe`, the one the bot's own 1min.ai probe sends): uploads are not AI
features and no credit cost is documented for them; it stores one tiny file with the
team's assets. No secret is ever printed.

Exit statuses: 0 all checks passed; 1 at least one failed; 2 the settings are invalid
(nothing else is checked).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp
import discord
import discord.http

from bot import db as db_module
from bot.app import startup
from bot.app.settings import Settings, SettingsError
from bot.db import Database
from bot.images import probe_png
from bot.logs import configure_logging
from bot.onemin.client import (
    OneMinClient,
    OneMinError,
    RateLimited,
    ServiceUnavailable,
    TimedOut,
    Unauthorized,
)

__all__ = [
    "EXIT_CHECK_FAILED",
    "EXIT_OK",
    "NEEDED_PERMISSIONS",
    "CheckLine",
    "check_database",
    "check_discord",
    "check_onemin",
    "run_check",
    "run_checks",
]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # at least one check failed
# EXIT_CONFIG (2): the settings are invalid; see bot.app.startup.

CHECK_TIMEOUT = 15.0  # seconds one network check may take
GUILDS_PAGE = 200  # servers per GET /users/@me/guilds page (Discord's maximum)
MAX_GUILD_PAGES = 50  # pages read at most (10,000 servers)
MAX_SERVER_LINES = 20  # servers listed one per line at most when permissions are missing

ADMINISTRATOR = 1 << 3
# Server-wide permissions the bot needs, in the words of Discord's settings screens.
NEEDED_PERMISSIONS: tuple[tuple[int, str], ...] = (
    (1 << 11, "Send Messages"),
    (1 << 15, "Attach Files"),
    (1 << 14, "Embed Links"),
    (1 << 16, "Read Message History"),
)


@dataclass(frozen=True, slots=True)
class CheckLine:
    """One printed line: passed or not, what was checked, what was found or what to do."""

    ok: bool
    name: str
    detail: str

    def render(self, marks: tuple[str, str] = ("✔", "✘")) -> str:
        return f"{marks[0] if self.ok else marks[1]} {self.name}: {self.detail}"


# -- Discord ---------------------------------------------------------------------------


async def check_discord(settings: Settings) -> list[CheckLine]:
    """The token (a REST login), then the servers the bot is in and their permissions."""
    host = startup.discord_host()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            http, user = await startup.discord_login(settings.discord_token.get())
    except discord.LoginFailure:
        return [
            CheckLine(False, "Discord token", f"Discord rejected it (401): {startup.TOKEN_HINT}")
        ]
    except TimeoutError:
        return [_unreachable(host, f"no answer within {CHECK_TIMEOUT:.0f} s")]
    except (aiohttp.ClientError, OSError, discord.HTTPException) as exc:
        reason = startup.network_reason(exc) or _http_reason(exc)
        return [_unreachable(host, reason)]
    try:
        lines = [CheckLine(True, "Discord token", f"logged in as {_user_name(user)}")]
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                guilds = await _all_guilds(http)
        except (TimeoutError, aiohttp.ClientError, OSError, discord.HTTPException) as exc:
            reason = startup.network_reason(exc) or _http_reason(exc)
            return [*lines, CheckLine(False, "Discord servers", f"could not list them ({reason})")]
        return lines + _server_lines(guilds, settings.allowed_guild_ids)
    finally:
        await http.close()


def _unreachable(host: str, reason: str) -> CheckLine:
    return CheckLine(
        False,
        "Discord",
        f"cannot reach {host} ({reason}): check the network connection, firewall and proxy",
    )


def _http_reason(exc: BaseException) -> str:
    if isinstance(exc, discord.HTTPException):
        return f"Discord answered {exc.status}"
    if isinstance(exc, TimeoutError):
        return f"no answer within {CHECK_TIMEOUT:.0f} s"
    return type(exc).__name__


def _user_name(user: dict[str, Any]) -> str:
    name = str(user.get("username", "?"))
    discriminator = str(user.get("discriminator", "0"))
    if discriminator not in ("", "0"):
        name += f"#{discriminator}"
    return f"{name} (id {user.get('id', '?')})"


async def _all_guilds(http: discord.http.HTTPClient) -> list[dict[str, Any]]:
    guilds: list[dict[str, Any]] = []
    after: int | None = None
    for _ in range(MAX_GUILD_PAGES):
        page = await http.get_guilds(GUILDS_PAGE, after=after, with_counts=False)
        guilds.extend(dict(g) for g in page)
        if len(page) < GUILDS_PAGE:
            break
        after = max(int(g["id"]) for g in page)
    return guilds


def _missing(permissions: int) -> list[str]:
    if permissions & ADMINISTRATOR:
        return []
    return [name for bit, name in NEEDED_PERMISSIONS if not permissions & bit]


def _server_lines(guilds: list[dict[str, Any]], allowed: Iterable[int]) -> list[CheckLine]:
    needed = ", ".join(name for _, name in NEEDED_PERMISSIONS)
    allowed_ids = frozenset(allowed)
    if not guilds:
        return [
            CheckLine(
                True,
                "Discord servers",
                f"in no server yet: invite the bot with the {needed} permissions",
            )
        ]
    lacking: list[CheckLine] = []
    for guild in guilds:
        missing = _missing(int(guild.get("permissions") or 0))
        if missing:
            lacking.append(
                CheckLine(
                    False,
                    f"Discord server {guild.get('name', '?')} (id {guild.get('id', '?')})",
                    f"missing {', '.join(missing)}: give the bot's role"
                    f" {'this permission' if len(missing) == 1 else 'these permissions'}"
                    " in Server Settings > Roles",
                )
            )
    count = f"in {len(guilds)} server{'s' if len(guilds) != 1 else ''}"
    outside = [g for g in guilds if allowed_ids and int(g["id"]) not in allowed_ids]
    note = (
        f"; {len(outside)} not in ALLOWED_GUILD_IDS (commands are refused there)" if outside else ""
    )
    if not lacking:
        return [CheckLine(True, "Discord servers", f"{count}, each with {needed}{note}")]
    shown = lacking[:MAX_SERVER_LINES]
    if len(lacking) > len(shown):
        more = len(lacking) - len(shown)
        shown.append(
            CheckLine(False, "Discord servers", f"{more} more servers lack permissions too")
        )
    summary = CheckLine(
        False, "Discord servers", f"{count}; {len(lacking)} lack permissions the bot needs{note}"
    )
    return [summary, *shown]


# -- the database ----------------------------------------------------------------------


async def open_database(settings: Settings) -> Database:
    """Open (and migrate) the database as the bot does, on either engine."""
    return await db_module.open_database(settings.database_url.get())


async def check_database(settings: Settings) -> CheckLine:
    """Open (and migrate) the database and read its schema version."""
    where = startup.describe_database(settings)
    try:
        with startup.database_errors(settings):
            await startup.probe_database(settings)
            db = await open_database(settings)
            try:
                version = await db.version()
            finally:
                await db.close()
    except startup.StartupError as exc:
        return CheckLine(False, "Database", exc.message)
    return CheckLine(True, "Database", f"{where}, schema version {version}")


# -- 1min.ai ---------------------------------------------------------------------------


async def check_onemin(settings: Settings) -> CheckLine:
    """The API host resolves and answers, and accepts the key (a tiny asset upload)."""
    parts = urlsplit(settings.onemin_api_base)
    base = _public_url(settings.onemin_api_base)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await startup.resolve(host, port)
    except (OSError, TimeoutError) as exc:
        reason = startup.network_reason(exc) or f"no answer within {CHECK_TIMEOUT:.0f} s"
        return CheckLine(
            False,
            "1min.ai",
            f"the host {host} cannot be looked up ({reason}): check ONEMIN_API_BASE and the"
            " network",
        )
    async with aiohttp.ClientSession() as session:
        client = OneMinClient(
            session,
            settings.onemin_api_key.get(),
            base_url=settings.onemin_api_base,
            request_timeout=CHECK_TIMEOUT,
            max_attempts=1,
        )
        try:
            await client.upload(probe_png(), "upscale-bot-check.png", "image/png")
        except OneMinError as err:
            return CheckLine(False, "1min.ai", _onemin_failure(err, base))
    return CheckLine(
        True,
        "1min.ai",
        f"{base} reachable, API key accepted (test upload of {len(probe_png())} bytes)",
    )


def _public_url(url: str) -> str:
    """``url`` without any user or password in it (a relay URL may carry them)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc).geturl()


def _onemin_failure(err: OneMinError, base: str) -> str:
    if isinstance(err, Unauthorized):
        return f"the API key was refused ({err.status}): check ONEMIN_API_KEY"
    if isinstance(err, RateLimited):
        return "rate limited (429): the key works but is busy; try again in a minute"
    if isinstance(err, TimedOut):
        return f"{base} did not answer within {CHECK_TIMEOUT:.0f} s: try again later"
    if isinstance(err, ServiceUnavailable) and err.status is None:
        cause = err.__cause__
        reason = (startup.network_reason(cause) if cause else None) or err.message
        return f"cannot reach {base} ({reason}): check ONEMIN_API_BASE and the network"
    if isinstance(err, ServiceUnavailable):
        return f"{base} is failing ({err.status}): try again later"
    status = f" ({err.status})" if err.status else ""
    return f"unexpected answer to a test upload{status}: {err.message}"


# -- running ---------------------------------------------------------------------------


async def run_checks(settings: Settings, write: Callable[[CheckLine], None]) -> bool:
    """Run every check after the settings, writing each line as it is known."""
    ok = True
    for check in (check_discord, check_database, check_onemin):
        result = await check(settings)
        for line in result if isinstance(result, list) else [result]:
            ok = ok and line.ok
            write(line)
    return ok


def _marks(stream: TextIO) -> tuple[str, str]:
    try:
        "✔✘".encode(stream.encoding or "ascii")
    except (LookupError, UnicodeEncodeError):
        return ("[ok]", "[FAIL]")
    return ("✔", "✘")


def run_check(load: Callable[[], Settings], stream: TextIO | None = None) -> int:
    """``upscale-bot check``: load the settings with ``load``, check, return the status."""
    out = stream or sys.stdout
    marks = _marks(out)

    def write(line: CheckLine) -> None:
        print(line.render(marks), file=out, flush=True)

    try:
        settings = load()
    except SettingsError as exc:
        write(CheckLine(False, "Settings", str(exc)))
        return startup.EXIT_CONFIG
    retry = startup.RetryPolicy.for_settings(settings)
    configure_logging("WARNING", secrets=settings.secret_values())
    write(
        CheckLine(
            True,
            "Settings",
            f"valid (database {startup.describe_database(settings)}, 1min.ai at"
            f" {_public_url(settings.onemin_api_base)}, start-up waits"
            f" {retry.budget:g} s for the network)",
        )
    )
    ok = asyncio.run(run_checks(settings, write))
    return EXIT_OK if ok else EXIT_CHECK_FAILED
