"""``upscale-bot check``: real processes against the emulators, all green and each part broken.

The check runs as ``python -m tests.bot_process check`` (``python -m bot check`` with
discord.py pointed at the Discord emulator). It never opens the gateway.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app.check import EXIT_CHECK_FAILED
from bot.app.startup import EXIT_CONFIG
from bot.db.migrations import load_migrations
from bot.images import probe_png
from tests.bot_process import ROOT, Finished, closed_port, run_bot_process
from tests.emulators.discord import ATTACH_FILES, BOT_PERMISSIONS, DiscordEmulator
from tests.emulators.onemin import OneMinEmulator
from tests.harness import DISCORD_TOKEN, ONEMIN_KEY

Emulators = tuple[DiscordEmulator, OneMinEmulator]
ADMINISTRATOR = 1 << 3


@pytest.fixture
async def emulators() -> AsyncIterator[Emulators]:
    async with DiscordEmulator(token=DISCORD_TOKEN) as d, OneMinEmulator(api_key=ONEMIN_KEY) as o:
        yield d, o


def check_env(tmp_path: Path, emus: Emulators, **extra: str) -> dict[str, str]:
    discord_emu, onemin_emu = emus
    return {
        "DISCORD_TOKEN": DISCORD_TOKEN,
        "ONEMIN_API_KEY": ONEMIN_KEY,
        "ONEMIN_API_BASE": onemin_emu.base_url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'bot.db'}",
        "DISCORD_API_BASE": discord_emu.api_base,
        "DISCORD_GATEWAY_URL": discord_emu.gateway_url,
        **extra,
    }


async def check(tmp_path: Path, emus: Emulators, **extra: str) -> tuple[Finished, list[str]]:
    """Run the check; returns the run and its stdout lines (after the secret checks)."""
    run = await run_bot_process(check_env(tmp_path, emus, **extra), "check", timeout=60)
    everything = run.stdout + run.stderr
    assert "Traceback" not in everything, everything
    for secret in (DISCORD_TOKEN, ONEMIN_KEY, *extra.values()):
        if "secret" in secret:
            assert secret not in everything
    assert DISCORD_TOKEN not in everything and ONEMIN_KEY not in everything
    return run, run.stdout.splitlines()


def line(lines: list[str], start: str) -> str:
    found = [x for x in lines if x.startswith(start)]
    assert len(found) == 1, lines
    return found[0]


async def test_check_is_all_green_against_the_emulators(
    tmp_path: Path, emulators: Emulators
) -> None:
    """Every part works: five ✔ lines, exit 0, one test upload, no gateway connection."""
    discord_emu, onemin_emu = emulators
    run, lines = await check(tmp_path, emulators)
    assert run.status == 0, run.stdout + run.stderr
    assert [x.split(":")[0] for x in lines] == [
        "✔ Settings",
        "✔ Discord token",
        "✔ Discord servers",
        "✔ Database",
        "✔ 1min.ai",
    ]
    bot_id = discord_emu.bot_user.id
    assert line(lines, "✔ Discord token") == (
        f"✔ Discord token: logged in as UpscaleBot (id {bot_id})"
    )
    assert line(lines, "✔ Discord servers") == (
        "✔ Discord servers: in 1 server, each with Send Messages, Attach Files, Embed Links,"
        " Read Message History"
    )
    db = tmp_path / "data" / "bot.db"
    latest = load_migrations()[-1].version
    assert line(lines, "✔ Database") == f"✔ Database: SQLite {db}, schema version {latest}"
    assert line(lines, "✔ 1min.ai") == (
        f"✔ 1min.ai: {onemin_emu.base_url} reachable, API key accepted"
        f" (test upload of {len(probe_png())} bytes)"
    )
    assert run.stderr == ""
    assert onemin_emu.calls["upload"] == 1 and onemin_emu.calls["upscale"] == 0
    assert onemin_emu.credits_spent == 0
    assert discord_emu.identifies == 0
    assert [c.path for c in discord_emu.calls] == [
        "/api/v10/users/@me",
        "/api/v10/users/@me/guilds",
    ]


async def test_check_with_a_bad_token_fails_on_the_token_line(
    tmp_path: Path, emulators: Emulators
) -> None:
    """Discord refuses the token: a ✘ token line saying what to do; the rest still runs."""
    run, lines = await check(tmp_path, emulators, DISCORD_TOKEN="bad-secret-token-Qa19")
    assert run.status == EXIT_CHECK_FAILED
    assert line(lines, "✘ Discord token") == (
        "✘ Discord token: Discord rejected it (401): copy the token again from the Developer"
        " Portal (your application > Bot > Reset Token) into DISCORD_TOKEN"
    )
    assert not any(x.startswith(("✔ Discord servers", "✘ Discord servers")) for x in lines)
    assert line(lines, "✔ Database") and line(lines, "✔ 1min.ai")


async def test_check_names_a_server_where_the_bot_lacks_attach_files(
    tmp_path: Path, emulators: Emulators
) -> None:
    """A server-wide permission missing: the server is named with what to grant."""
    discord_emu, _ = emulators
    discord_emu.guild.bot_permissions = BOT_PERMISSIONS & ~ATTACH_FILES
    run, lines = await check(tmp_path, emulators)
    assert run.status == EXIT_CHECK_FAILED
    guild = discord_emu.guild
    assert line(lines, "✘ Discord servers") == (
        "✘ Discord servers: in 1 server; 1 lack permissions the bot needs"
    )
    assert line(lines, "✘ Discord server Test Server") == (
        f"✘ Discord server Test Server (id {guild.id}): missing Attach Files: give the bot's"
        " role this permission in Server Settings > Roles"
    )
    assert line(lines, "✔ Discord token")


async def test_check_counts_administrator_as_every_permission(
    tmp_path: Path, emulators: Emulators
) -> None:
    """A bot whose role is Administrator lacks nothing, whatever the other bits say."""
    emulators[0].guild.bot_permissions = ADMINISTRATOR
    run, lines = await check(tmp_path, emulators)
    assert run.status == 0, run.stdout
    assert line(lines, "✔ Discord servers")


async def test_check_notes_servers_outside_allowed_guild_ids(
    tmp_path: Path, emulators: Emulators
) -> None:
    """Servers the owner did not allow are counted on the servers line (not a failure)."""
    run, lines = await check(tmp_path, emulators, ALLOWED_GUILD_IDS="123456789")
    assert run.status == 0, run.stdout
    assert line(lines, "✔ Discord servers").endswith(
        "; 1 not in ALLOWED_GUILD_IDS (commands are refused there)"
    )


async def test_check_with_discord_unreachable_fails_on_the_discord_line(
    tmp_path: Path, emulators: Emulators
) -> None:
    """Nothing listens at the Discord address: one ✘ line naming the host, no retries."""
    port = closed_port()
    run, lines = await check(
        tmp_path, emulators, DISCORD_API_BASE=f"http://127.0.0.1:{port}/api/v10"
    )
    assert run.status == EXIT_CHECK_FAILED
    assert line(lines, "✘ Discord") == (
        f"✘ Discord: cannot reach 127.0.0.1:{port} (connection refused): check the network"
        " connection, firewall and proxy"
    )


async def test_check_with_an_unopenable_database_fails_on_the_database_line(
    tmp_path: Path, emulators: Emulators
) -> None:
    """The database path is under a regular file: a ✘ line naming it and DATABASE_URL."""
    (tmp_path / "file.txt").write_text("not a directory")
    db = tmp_path / "file.txt" / "db.sqlite"
    run, lines = await check(tmp_path, emulators, DATABASE_URL=f"sqlite:///{db}")
    assert run.status == EXIT_CHECK_FAILED
    assert line(lines, "✘ Database") == (
        f"✘ Database: cannot open the database (SQLite {db}): {tmp_path / 'file.txt'} is a"
        " file, not a directory: check DATABASE_URL, and that its directory exists or can be"
        " created and is writable by the bot"
    )
    assert line(lines, "✔ Discord token") and line(lines, "✔ 1min.ai")


async def test_check_with_an_unreachable_postgresql_names_the_outage_on_the_database_line(
    tmp_path: Path, emulators: Emulators
) -> None:
    """A PostgreSQL that refuses connections: the ✘ line says what start-up says (engine,
    host:port, the error), not a word about directories."""
    port = closed_port()
    url = f"postgresql://postgres@127.0.0.1:{port}/test"
    run, lines = await check(tmp_path, emulators, DATABASE_URL=url)
    assert run.status == EXIT_CHECK_FAILED
    assert line(lines, "✘ Database") == (
        f"✘ Database: cannot reach the database (PostgreSQL 127.0.0.1:{port}/test): connection"
        " refused: check that the PostgreSQL server is running and reachable from this"
        " machine, and the host and port in DATABASE_URL"
    )
    assert line(lines, "✔ Discord token") and line(lines, "✔ 1min.ai")


async def test_check_with_a_refused_1min_key_fails_on_the_1min_line(
    tmp_path: Path, emulators: Emulators
) -> None:
    """1min.ai answers 401 to the test upload: the key is named, never shown."""
    run, lines = await check(tmp_path, emulators, ONEMIN_API_KEY="wrong-secret-key-Lm30")
    assert run.status == EXIT_CHECK_FAILED
    assert line(lines, "✘ 1min.ai") == (
        "✘ 1min.ai: the API key was refused (401): check ONEMIN_API_KEY"
    )


async def test_check_with_1min_unreachable_fails_on_the_1min_line(
    tmp_path: Path, emulators: Emulators
) -> None:
    """Nothing listens at ONEMIN_API_BASE: a ✘ line saying the connection was refused."""
    base = f"http://127.0.0.1:{closed_port()}"
    run, lines = await check(tmp_path, emulators, ONEMIN_API_BASE=base)
    assert run.status == EXIT_CHECK_FAILED
    assert line(lines, "✘ 1min.ai") == (
        f"✘ 1min.ai: cannot reach {base} (connection refused): check ONEMIN_API_BASE and the"
        " network"
    )


async def test_check_with_an_unresolvable_1min_host_fails_on_the_1min_line(
    tmp_path: Path, emulators: Emulators
) -> None:
    """ONEMIN_API_BASE on a .invalid host: the lookup fails, nothing is uploaded."""
    run, lines = await check(tmp_path, emulators, ONEMIN_API_BASE="https://api.example.invalid")
    assert run.status == EXIT_CHECK_FAILED
    assert line(lines, "✘ 1min.ai").startswith(
        "✘ 1min.ai: the host api.example.invalid cannot be looked up (name lookup failed:"
    )
    assert emulators[1].calls["upload"] == 0


async def test_check_falls_back_to_ascii_marks_on_an_ascii_terminal(
    tmp_path: Path, emulators: Emulators
) -> None:
    """Where ✔ cannot be printed, [ok] and [FAIL] are used instead of crashing."""
    run, lines = await check(tmp_path, emulators, PYTHONIOENCODING="ascii")
    assert run.status == 0, run.stdout + run.stderr
    assert all(x.startswith("[ok] ") for x in lines), lines


def test_python_m_bot_check_with_bad_settings_prints_the_setting_and_exits_2(
    tmp_path: Path,
) -> None:
    """The real entry point: a missing token is the one ✘ Settings line, status 2."""
    env = {"PATH": "", "PYTHONPATH": str(ROOT), "DISCORD_TOKEN": "", "ONEMIN_API_KEY": "k"}
    run = subprocess.run(
        [sys.executable, "-m", "bot", "check"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == EXIT_CONFIG
    assert run.stdout.splitlines() == [
        "✘ Settings: DISCORD_TOKEN: is required but not set (put it in .env or the environment)"
    ]
