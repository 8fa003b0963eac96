"""Start-up that explains itself: real bot processes against the emulators.

Each failure prints one line on stderr (besides log lines), no traceback and no secret,
and exits with its documented status. The bot runs as ``python -m tests.bot_process``,
which is ``python -m bot`` with discord.py pointed at the Discord emulator.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import startup
from bot.app.settings import Secret, Settings, SettingsError, load_settings
from bot.app.startup import (
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_DISCORD_UNREACHABLE,
    EXIT_ONEMIN_UNRESOLVABLE,
    EXIT_TOKEN_REJECTED,
    GaveUp,
    RetryPolicy,
)
from tests.bot_process import ROOT, Finished, closed_port, run_bot_process, start_bot_process
from tests.emulators.discord import DiscordEmulator
from tests.emulators.onemin import OneMinEmulator
from tests.harness import DISCORD_TOKEN, ONEMIN_KEY
from tests.support.timings import SHORT_TIMINGS, timings_env

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")  # bot.logs.LOG_FORMAT
VOICE_WARNING = "voice will NOT be supported"
START_TIMEOUT = 30.0  # seconds for a bot process to log in and sync its commands


def the_one_line(run: Finished) -> str:
    """The single stderr line that is not a log line; fails on tracebacks or secrets."""
    everything = run.stdout + run.stderr
    assert "Traceback" not in everything, everything
    assert DISCORD_TOKEN not in everything and ONEMIN_KEY not in everything
    lines = [line for line in run.stderr.splitlines() if line and not LOG_LINE.match(line)]
    assert len(lines) == 1, run.stderr
    return lines[0]


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Settings for a bot process on short clocks (first retry after 0.3 s, not 1 s; a
    0.3 s retry budget unless a test sets one); Discord and 1min.ai point at closed ports
    by default."""
    dead = f"http://127.0.0.1:{closed_port()}"
    return {
        "DISCORD_TOKEN": DISCORD_TOKEN,
        "ONEMIN_API_KEY": ONEMIN_KEY,
        "ONEMIN_API_BASE": dead,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'bot.db'}",
        "DISCORD_API_BASE": f"{dead}/api/v10",
        "DISCORD_GATEWAY_URL": f"ws://{dead.removeprefix('http://')}/gateway",
        "LOG_LEVEL": "INFO",
        "STARTUP_RETRY_SECONDS": "0.3",
        **timings_env(),
        **extra,
    }


@pytest.fixture
async def emulators() -> AsyncIterator[tuple[DiscordEmulator, OneMinEmulator]]:
    async with DiscordEmulator(token=DISCORD_TOKEN) as d, OneMinEmulator(api_key=ONEMIN_KEY) as o:
        yield d, o


def pointed_at(
    tmp_path: Path, emus: tuple[DiscordEmulator, OneMinEmulator], **extra: str
) -> dict[str, str]:
    discord_emu, onemin_emu = emus
    return base_env(
        tmp_path,
        ONEMIN_API_BASE=onemin_emu.base_url,
        DISCORD_API_BASE=discord_emu.api_base,
        DISCORD_GATEWAY_URL=discord_emu.gateway_url,
        **extra,
    )


# -- failures, one line each -------------------------------------------------------------


async def test_a_rejected_token_prints_one_line_and_exits_3(
    tmp_path: Path, emulators: tuple[DiscordEmulator, OneMinEmulator]
) -> None:
    """Discord answers 401: one line naming DISCORD_TOKEN, status 3, no retry."""
    env = pointed_at(tmp_path, emulators, DISCORD_TOKEN="a-token-discord-rejects-Zy81")
    run = await run_bot_process(env)
    assert run.status == EXIT_TOKEN_REJECTED
    line = the_one_line(run)
    assert line.startswith("Cannot start: Discord rejected DISCORD_TOKEN (401)")
    assert "Reset Token" in line
    assert "a-token-discord-rejects-Zy81" not in run.stdout + run.stderr
    assert "try 1 failed" not in run.stderr
    assert emulators[0].identifies == 0


async def test_an_unreachable_discord_is_retried_with_backoff_then_exits_4(
    tmp_path: Path,
) -> None:
    """A closed port: one log line per try for the retry time, then one line and status 4.

    On short clocks: the first wait is 0.3 s (1 s for owners), doubling, within 0.9 s."""
    assert SHORT_TIMINGS.startup_first_retry == 0.3
    env = base_env(tmp_path, ONEMIN_API_BASE="http://127.0.0.1:1", STARTUP_RETRY_SECONDS="0.9")
    run = await run_bot_process(env)
    assert run.status == EXIT_DISCORD_UNREACHABLE
    line = the_one_line(run)
    assert line.startswith("Cannot start: cannot reach Discord at 127.0.0.1:")
    assert "connection refused" in line and "after 3 tries in 1 s" in line
    tries = re.findall(r"Connecting to Discord \(127\.0\.0\.1:\d+\): try (\d) failed", run.stderr)
    assert tries == ["1", "2"]  # waits of 0.3 s then 0.6 s (the rest of the 0.9 s), then give up
    assert "trying again in 0.3 s" in run.stderr
    assert re.search(r"try 2 failed .*trying again in 0\.[4-6] s", run.stderr)
    assert 0.9 <= run.seconds < 20.0


@pytest.mark.parametrize(
    "problem", ["path under a regular file", "path is a directory", "not a database"]
)
async def test_a_database_that_cannot_be_opened_prints_one_line_and_exits_5(
    tmp_path: Path, problem: str
) -> None:
    """No network is tried: the database fails first with one line naming DATABASE_URL.

    Tests run as root, where a chmod-ed read-only directory still accepts writes, so an
    unwritable directory is made as a path under a regular file (``file.txt/db.sqlite``:
    the directory cannot be created), which fails the same way for every user.
    """
    if problem == "path under a regular file":
        (tmp_path / "file.txt").write_text("not a directory")
        db = tmp_path / "file.txt" / "db.sqlite"
        reason = f"{tmp_path / 'file.txt'} is a file, not a directory"
    elif problem == "path is a directory":
        db = tmp_path / "adir"
        db.mkdir()
        reason = "unable to open database file"
    else:
        db = tmp_path / "junk.db"
        db.write_bytes(b"this is not SQLite" * 100)
        reason = "file is not a database"
    run = await run_bot_process(base_env(tmp_path, DATABASE_URL=f"sqlite:///{db}"))
    assert run.status == EXIT_DATABASE
    line = the_one_line(run)
    assert line.startswith(f"Cannot start: cannot open the database (SQLite {db}): {reason}")
    assert "check DATABASE_URL" in line
    assert "Connecting to Discord" not in run.stderr


async def test_an_unreachable_postgresql_is_waited_for_then_exits_5_naming_the_outage(
    tmp_path: Path,
) -> None:
    """A PostgreSQL that refuses connections (a restart, a failover) is waited for like the
    network, one log line per try; out of time, one line with the engine, host:port and
    the error, status 5, and not a word about directories."""
    port = closed_port()
    env = base_env(
        tmp_path,
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/test",
        STARTUP_RETRY_SECONDS="0.9",
    )
    run = await run_bot_process(env)
    assert run.status == EXIT_DATABASE
    line = the_one_line(run)
    where = f"PostgreSQL 127.0.0.1:{port}/test"
    assert line.startswith(f"Cannot start: cannot reach the database ({where}): ")
    assert "connection refused" in line and "after 3 tries in 1 s" in line
    assert "PostgreSQL server is running" in line
    assert "director" not in line
    tries = re.findall(rf"Opening the database \({re.escape(where)}\): try (\d) failed", run.stderr)
    assert tries == ["1", "2"]
    assert "Connecting to Discord" not in run.stderr


async def test_an_unusable_spool_dir_prints_one_line_and_exits_5(tmp_path: Path) -> None:
    """SPOOL_DIR under a regular file: one line naming SPOOL_DIR, before any network."""
    (tmp_path / "file.txt").write_text("not a directory")
    spool = tmp_path / "file.txt" / "spool"
    run = await run_bot_process(base_env(tmp_path, SPOOL_DIR=str(spool)))
    assert run.status == EXIT_DATABASE
    line = the_one_line(run)
    assert line.startswith(f"Cannot start: cannot create the spool directory {spool}:")
    assert "check SPOOL_DIR" in line
    assert "Connecting to Discord" not in run.stderr


async def test_an_unresolvable_onemin_host_prints_one_line_and_exits_6(tmp_path: Path) -> None:
    """ONEMIN_API_BASE on a .invalid host: looked up with retries, then one line, status 6."""
    env = base_env(tmp_path, ONEMIN_API_BASE="https://api.example.invalid")
    run = await run_bot_process(env)
    assert run.status == EXIT_ONEMIN_UNRESOLVABLE
    line = the_one_line(run)
    assert line.startswith(
        "Cannot start: the 1min.ai host api.example.invalid (ONEMIN_API_BASE) cannot be looked up"
    )
    assert "check ONEMIN_API_BASE" in line
    assert "Looking up 1min.ai host api.example.invalid: try 1 failed" in run.stderr
    assert "Connecting to Discord" not in run.stderr


async def test_a_malformed_retry_time_is_a_configuration_error(tmp_path: Path) -> None:
    """STARTUP_RETRY_SECONDS=soon: one configuration line naming it, status 2."""
    run = await run_bot_process(base_env(tmp_path, STARTUP_RETRY_SECONDS="soon"))
    assert run.status == EXIT_CONFIG
    assert the_one_line(run).startswith("Configuration error: STARTUP_RETRY_SECONDS:")


def test_python_m_bot_with_a_missing_token_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    """The real ``python -m bot`` entry point keeps its configuration error and status 2."""
    env = {"PATH": "", "PYTHONPATH": str(ROOT), "DISCORD_TOKEN": "", "ONEMIN_API_KEY": "k"}
    run = subprocess.run(
        [sys.executable, "-m", "bot"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == EXIT_CONFIG
    assert run.stderr.strip().splitlines() == [
        "Configuration error: DISCORD_TOKEN: is required but not set"
        " (put it in .env or the environment)"
    ]


# -- a good start, without voice warnings ------------------------------------------------


async def test_the_bot_starts_against_the_emulators_without_voice_warnings(
    tmp_path: Path, emulators: tuple[DiscordEmulator, OneMinEmulator]
) -> None:
    """A full start logs in, syncs and connects, and never mentions voice support."""
    discord_emu, _ = emulators
    log_path = tmp_path / "bot.log"
    proc = start_bot_process(pointed_at(tmp_path, emulators), log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        # Ready, not just connected: a SIGTERM inside discord.py's ready delay is another
        # matter (its _delay_ready task logs a traceback when the client closes under it).
        while "Ready as UpscaleBot" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.05)
        assert discord_emu.identifies == 1 and discord_emu.global_commands
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 20)
    log = log_path.read_text()
    assert proc.returncode == 0, log
    assert VOICE_WARNING not in log and "PyNaCl" not in log and "davey" not in log
    assert "Traceback" not in log


def test_discord_py_warns_about_voice_unless_quieted() -> None:
    """Without the fix discord.py warns twice (no PyNaCl, no davey); with it, not at all."""
    script = (
        "import logging, discord, bot.app.startup as s\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "if {quiet}: s.quiet_voice_warnings()\n"
        "discord.Client(intents=discord.Intents.none())\n"
    )
    env = {"PATH": "", "PYTHONPATH": str(ROOT)}
    loud, quiet = (
        subprocess.run(
            [sys.executable, "-c", script.format(quiet=flag)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        for flag in (False, True)
    )
    assert loud.count(VOICE_WARNING) == 2, loud  # the test would be vacuous otherwise
    assert VOICE_WARNING not in quiet, quiet


# -- the retry loop ----------------------------------------------------------------------


async def test_retrying_logs_one_line_per_failed_try_and_gives_up_after_the_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Transient failures are retried with doubling waits until the time is spent."""
    calls: list[float] = []

    async def attempt() -> None:
        calls.append(time.monotonic())
        raise ConnectionRefusedError(111, "Connection refused")

    policy = RetryPolicy(budget=0.3, first_delay=0.1, max_delay=1.0)
    with caplog.at_level(logging.WARNING, "bot.app.startup"), pytest.raises(GaveUp) as info:
        await startup.retrying("Reaching it", attempt, startup.network_reason, policy)
    assert info.value.tries == 3 and info.value.reason == "connection refused"
    waits = [b - a for a, b in itertools.pairwise(calls)]
    assert 0.09 <= waits[0] < 0.2 and 0.19 <= waits[1] < 0.3
    assert [r.getMessage().split(":")[1].split("(")[0].strip() for r in caplog.records] == [
        "try 1 failed",
        "try 2 failed",
    ]


async def test_retrying_raises_a_non_network_error_at_once() -> None:
    """A failure that is not about the network (a rejected token) is never retried."""
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("not a network problem")

    policy = RetryPolicy(budget=60.0)
    with pytest.raises(ValueError):
        await startup.retrying("Reaching it", attempt, startup.network_reason, policy)
    assert calls == 1


async def test_retrying_waits_double_from_the_first_delay_up_to_the_longest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Waits between tries: first_delay, doubling, never above max_delay (no jitter)."""
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", record)
    failures = 5

    async def attempt() -> str:
        nonlocal failures
        failures -= 1
        if failures >= 0:
            raise ConnectionRefusedError(111, "Connection refused")
        return "up"

    policy = RetryPolicy(budget=3600.0, first_delay=1.0, max_delay=5.0)
    assert await startup.retrying("Reaching it", attempt, startup.network_reason, policy) == "up"
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_the_retry_time_defaults_to_a_minute_and_rejects_nonsense() -> None:
    """STARTUP_RETRY_SECONDS: 60 s by default, 0 means one try, negatives are refused."""
    secrets = {"DISCORD_TOKEN": DISCORD_TOKEN, "ONEMIN_API_KEY": ONEMIN_KEY}
    assert load_settings(secrets).startup_retry == 60.0
    assert load_settings({**secrets, "STARTUP_RETRY_SECONDS": "0"}).startup_retry == 0.0
    for bad in ("-1", "soon", "7200"):
        with pytest.raises(SettingsError) as info:
            load_settings({**secrets, "STARTUP_RETRY_SECONDS": bad})
        assert info.value.variable == "STARTUP_RETRY_SECONDS"
        assert str(info.value) == (
            "STARTUP_RETRY_SECONDS: expected a number of seconds from 0 to 3600"
        )


def test_the_retry_policy_takes_its_time_and_waits_from_the_settings() -> None:
    """RetryPolicy.for_settings: STARTUP_RETRY_SECONDS in all, on the settings' timings."""
    settings = Settings(
        discord_token=Secret(DISCORD_TOKEN),
        onemin_api_key=Secret(ONEMIN_KEY),
        startup_retry=7.5,
        timings=SHORT_TIMINGS,
    )
    assert RetryPolicy.for_settings(settings) == RetryPolicy(
        budget=7.5,
        first_delay=SHORT_TIMINGS.startup_first_retry,
        max_delay=SHORT_TIMINGS.startup_max_retry,
    )
