"""Run the real bot in its own process against the emulators (restart tests, benchmarks).

``python -m tests.bot_process`` reads the usual settings from the environment, plus
``DISCORD_API_BASE`` and ``DISCORD_GATEWAY_URL`` (the emulator, which also serves the
attachments) and optionally ``TEST_TIMINGS`` (short clocks: :mod:`tests.support.timings`),
points discord.py there, then runs exactly what ``python -m bot`` runs;
``python -m tests.bot_process check`` runs what ``python -m bot check`` runs.
Tests start it with :func:`start_bot_process`, or run it to its end with
:func:`run_bot_process`.

For benchmarks, ``LAG_PROBE_FILE`` names a file: a probe task then runs in the bot's
event loop, sleeping :data:`PROBE_SLEEP` s in a loop and recording how late it wakes,
and when the bot stops, the samples are written there as JSON
(``[[wall-clock time, lag in seconds], ...]``). ``WATCH_PROBE_FILE`` likewise samples,
every :data:`WATCH_SAMPLE` s, the process's resident memory, the jobs its queue shows a
place in line for and the progress displays its front end keeps
and the round trips it made to its database
(``[[time, rss_kb, watched, displays, round_trips], ...]``).

Test knobs (never set by owners): ``RUN_JOBS=0`` makes the process take commands and
show progress but claim no job (the other processes of a fleet run them);
``PROGRESS_INTERVAL`` and ``FIRST_PROGRESS_DELAY`` (seconds) set the progress display's
throttle (over ``TEST_TIMINGS``), so that edits collide with deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.app.check import run_check
from bot.app.cli import load_or_exit, main, serve
from bot.app.settings import Settings, load_settings
from bot.app.startup import StartupError
from bot.logs import configure_logging
from tests.emulators.discord import point_discord_at
from tests.support.timings import TIMINGS_ENV, timings_from

ROOT = Path(__file__).resolve().parents[1]
LAG_PROBE_ENV = "LAG_PROBE_FILE"
PROBE_SLEEP = 0.005  # seconds the lag probe sleeps between wake-ups
WATCH_SAMPLE = 0.25  # seconds between samples of the watch probe
WATCH_PROBE_ENV = "WATCH_PROBE_FILE"


def apply_test_knobs() -> None:
    """The test-only knobs of the module docstring, applied before the bot is built."""
    if os.environ.get("RUN_JOBS") == "0":
        from bot.jobs.queue import JobQueue

        start = JobQueue.start

        def start_without_claims(self: JobQueue, *, claim: bool = True) -> None:
            start(self, claim=False)

        JobQueue.start = start_without_claims  # type: ignore[method-assign]  # in this test process only


def with_test_timings(settings: Settings) -> Settings:
    """``settings`` on the clocks ``TEST_TIMINGS`` and the progress knobs ask for."""
    timings = timings_from(os.environ.get(TIMINGS_ENV)) or settings.timings
    progress = {
        field: float(os.environ[variable])
        for field, variable in (
            ("progress_interval", "PROGRESS_INTERVAL"),
            ("first_progress_delay", "FIRST_PROGRESS_DELAY"),
        )
        if os.environ.get(variable)
    }
    return dataclasses.replace(settings, timings=dataclasses.replace(timings, **progress))


def run() -> None:
    apply_test_knobs()
    api_base = os.environ["DISCORD_API_BASE"]
    point_discord_at(api_base, os.environ["DISCORD_GATEWAY_URL"])
    if sys.argv[1:] == ["check"]:
        sys.exit(run_check(lambda: load_settings(dotenv=False)))
    settings = with_test_timings(load_or_exit(lambda: load_settings(dotenv=False)))
    media_origin = api_base.split("/api/", 1)[0]
    configure_logging(settings.log_level, settings.secret_values())
    options: dict[str, Any] = {
        "media_origins": frozenset({media_origin}),
        "guild_ready_timeout": 0.05,
    }
    probe_file = os.environ.get(LAG_PROBE_ENV)
    watch_file = os.environ.get(WATCH_PROBE_ENV)
    if not probe_file and not watch_file:
        serve(settings, **options)
        return
    bot_main = main(settings, **options)
    if probe_file:
        bot_main = with_lag_probe(bot_main, Path(probe_file))
    if watch_file:
        bot_main = with_watch_probe(bot_main, Path(watch_file))
    try:  # what serve() does, with the probes beside the bot
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(bot_main)
    except StartupError as exc:
        print(exc, file=sys.stderr)
        sys.exit(exc.status)


async def with_lag_probe(bot_main: Awaitable[None], out: Path) -> None:
    """Run ``bot_main`` with the lag probe in the same loop; write its samples at the end."""
    samples: list[tuple[float, float]] = []

    async def probe() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(PROBE_SLEEP)
            samples.append((time.time(), time.perf_counter() - before - PROBE_SLEEP))

    task = asyncio.create_task(probe())
    try:
        await bot_main
    finally:
        task.cancel()
        await asyncio.to_thread(out.write_text, json.dumps(samples))


async def with_watch_probe(bot_main: Awaitable[None], out: Path) -> None:
    """Run ``bot_main`` with the watch probe (see the module docstring)."""
    samples: list[tuple[float, int, int, int, int]] = []

    def found(kind: type) -> Any:
        return next((o for o in gc.get_objects() if isinstance(o, kind)), None)

    async def probe() -> None:
        from bot.db import Database
        from bot.jobs.queue import JobQueue
        from cogs.delivery import DiscordFrontEnd

        queue = front = db = None
        while True:
            await asyncio.sleep(WATCH_SAMPLE)
            queue = queue or found(JobQueue)
            front = front or found(DiscordFrontEnd)
            db = db or found(Database)
            samples.append(
                (
                    time.time(),
                    rss_kb(),
                    queue.count_watched() if queue is not None else -1,
                    front.shown if front is not None else -1,
                    db.round_trips.count if db is not None else -1,
                )
            )

    task = asyncio.create_task(probe())
    try:
        await bot_main
    finally:
        task.cancel()
        await asyncio.to_thread(out.write_text, json.dumps(samples))


def rss_kb() -> int:
    """This process's resident memory (VmRSS), in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def start_bot_process(env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start the bot process with ``env`` (added to PATH only), logging to ``log_path``."""
    full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env}
    log_file = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.bot_process"],
        env=full_env,
        cwd=ROOT,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Finished:
    """A bot process that ran to its end: exit status and what it printed."""

    status: int
    stdout: str
    stderr: str
    seconds: float


async def run_bot_process(env: Mapping[str, str], *args: str, timeout: float = 60.0) -> Finished:
    """Run ``python -m tests.bot_process [args]`` to its end without blocking the loop.

    The emulators keep serving in the caller's event loop meanwhile. ``env`` is added to
    PATH and PYTHONPATH only (no variable of the test process leaks in).
    """
    full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env}
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.bot_process",
        *args,
        env=full_env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"bot process still running after {timeout} s:\n{err.decode(errors='replace')}"
        ) from None
    assert proc.returncode is not None
    return Finished(
        proc.returncode,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        time.monotonic() - started,
    )


if __name__ == "__main__":
    run()
