"""Throughput and the bot's CPU per job: N jobs at once, 1min.ai answering after L s, K at once.

Run: ``python -m bench.throughput [--jobs 24] [--latency 1.0] [--concurrency 4]
[--size 64] [--noise] [--profile PATH] [--json PATH]``, or ``python -m bench.throughput
--burst`` for the CPU figure: 200 jobs of 64x64 images at once (``--jobs 200``; L = 1 s,
K = 4 as by default).

The bot runs as its own process (``tests.bot_process``, what ``python -m bot`` runs, on
a SQLite database in a temporary directory; :mod:`bench.botproc`), against the Discord
emulator in this process and the 1min.ai emulator in another one. ``jobs`` members each
run ``/upscale`` with a ``size`` x ``size`` PNG at the same moment; the bench waits until
every result is posted.

Reported:

* ``elapsed_s``: from sending the commands until the last result is posted;
  ``ideal_s`` = N*L/K counts only the upscales; ``share_of_ideal`` = ideal / elapsed
  (target: at least 95% for the default 24 jobs, L = 1 s, K = 4, on a quiet machine).
  With L = 0 the run is bound by the bot's CPU and the ideal is 0: ``jobs_per_s`` is
  the figure then.
* ``cpu_ms_per_job``: the CPU time (user + system, from /proc; :class:`bench.common.
  TreeCpu`) of the bot's process and its descendants (the image worker) from sending the
  commands until every job is settled, divided by N; split into ``bot_cpu_ms_per_job``
  and ``worker_cpu_ms_per_job``; ``loop_cpu_ms_per_job`` is the part of the bot's own
  that its main thread (the event loop) spent, the rest went to its threads (the
  database driver's, image checks). Neither emulator is counted. Target: at most 35 ms in
  the burst. The idle bot's CPU (``idle_cpu_ms_per_s``, read over :data:`IDLE_WINDOW`
  before the commands) is included in the figure, not subtracted: it is ~1% of it.
* ``discord_calls_per_job``: REST requests the bot made to Discord per job, of which
  ``edits_per_job`` edited a message (progress, results): most of the bot's work per job
  is answering Discord.

With ``--profile PATH`` (py-spy installed), py-spy samples the bot's process and its
worker while the jobs run and writes their stacks to PATH (collapsed, one line a
stack: ``py-spy``'s raw format, for flame graph tools or ``sort | uniq``).

Pacing is lifted (``ONEMIN_REQUESTS_PER_MINUTE`` 100000): 200 jobs are 400 calls, two
windows at the default; pacing has its own benchmark (:mod:`bench.rate_burst`).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from bench.botproc import BotProcess, bot_process
from bench.common import EMULATOR_PIDS, TreeCpu, emit, process_cpu
from tests.support.images import noise_png, png

BURST_JOBS = 200  # --burst: 200 jobs of 64x64 images at once, L = 1 s, K = 4
IDLE_WINDOW = 1.0  # seconds of the idle bot's CPU read before the commands
SETTLE_TIMEOUT = 60.0  # seconds for the last jobs to be settled after their results
FINAL_TIMEOUT = 600.0  # seconds for every result to be posted
NO_PACING = "100000"  # requests per minute: pacing never waits in this benchmark
PROFILE_RATE = 100  # py-spy samples per second (it pauses the process for each)


@contextmanager
def profiled(pid: int, out: Path) -> Iterator[None]:
    """py-spy samples ``pid`` and its subprocesses (on-CPU only) until the block ends."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    command = [spy, "record", "--pid", str(pid), "--subprocesses", "--gil", "--format", "raw"]
    proc = subprocess.Popen(
        [*command, "--rate", str(PROFILE_RATE), "--output", str(out)],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)  # py-spy attaches
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes what it sampled, then exits
        proc.wait(timeout=60)


def unsettled(db_path: Path) -> int:
    """Jobs unfinished (taken in, queued or running), plus credits still reserved, in the
    bot's database."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as conn:
        row = conn.execute(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE status IN ('intake', 'queued', 'running'))"
            " + (SELECT COUNT(*) FROM ledger_entries WHERE state = 'reserved')"
        ).fetchone()
    return int(row[0])


async def wait_settled(bot: BotProcess, db_path: Path) -> None:
    """Until every job is settled (its credit committed after the result was posted)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while await asyncio.to_thread(unsettled, db_path):
        if time.monotonic() > deadline or bot.proc.poll() is not None:
            raise AssertionError(f"jobs left unsettled:\n{bot.log()}")
        await asyncio.sleep(0.01)


async def run(
    jobs: int = 24,
    latency: float = 1.0,
    concurrency: int = 4,
    size: int = 64,
    env: Mapping[str, str] | None = None,
    *,
    noise: bool = False,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One run; ``env`` adds settings to the bot's (e.g. ``METRICS_PORT``); ``noise``
    sends noise images instead of solid colour; ``profile``: see ``--profile``."""
    image = noise_png((size, size)) if noise else png((size, size))
    settings = {
        "MAX_CONCURRENT_JOBS": str(concurrency),
        "ONEMIN_REQUESTS_PER_MINUTE": NO_PACING,
        **(env or {}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        async with bot_process(tmp_path, settings, upscale_delay=latency) as bot:
            emu = bot.discord
            members = [emu.add_member(f"t{i}") for i in range(jobs)]
            calls_before = len(emu.calls)
            cpu = TreeCpu(bot.pid, exclude=EMULATOR_PIDS)
            idle_start = cpu.read()
            await asyncio.sleep(IDLE_WINDOW)
            with profiled(bot.pid, profile) if profile else nullcontext():
                start_cpu, start_loop = cpu.read(), process_cpu(bot.pid, bot.pid)[0]
                idle_ms = sum(TreeCpu.spent(idle_start, start_cpu)) * 1000 / IDLE_WINDOW
                start = time.perf_counter()
                its = await asyncio.gather(
                    *(
                        emu.slash("upscale", {"image": emu.attachment(image, "a.png")}, member=m)
                        for m in members
                    )
                )
                finals = await asyncio.gather(*(it.final(timeout=FINAL_TIMEOUT) for it in its))
                elapsed = time.perf_counter() - start
                await wait_settled(bot, tmp_path / "data" / "bot.db")
                own, worker = TreeCpu.spent(start_cpu, cpu.read())
                loop = process_cpu(bot.pid, bot.pid)[0] - start_loop
            delivered = sum(bool(f.get("attachments")) for f in finals)
            calls = emu.calls[calls_before:]
            edits = sum(c.method == "PATCH" for c in calls)
    ideal = jobs * latency / concurrency
    return {
        "jobs": jobs,
        "size_px": size,
        "latency_s": latency,
        "concurrency": concurrency,
        "delivered": delivered,
        "elapsed_s": elapsed,
        "ideal_s": ideal,
        "share_of_ideal": ideal / elapsed,
        "jobs_per_s": jobs / elapsed,
        "cpu_ms_per_job": (own + worker) * 1000 / jobs,
        "bot_cpu_ms_per_job": own * 1000 / jobs,
        "worker_cpu_ms_per_job": worker * 1000 / jobs,
        "loop_cpu_ms_per_job": loop * 1000 / jobs,
        "idle_cpu_ms_per_s": idle_ms,
        "discord_calls_per_job": len(calls) / jobs,
        "edits_per_job": edits / jobs,
    }


async def burst(*, noise: bool = False, profile: Path | None = None) -> dict[str, Any]:
    """The CPU figure's run: :data:`BURST_JOBS` jobs of 64x64 images, L = 1 s, K = 4."""
    return await run(BURST_JOBS, 1.0, 4, 64, noise=noise, profile=profile)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="input side, px")
    parser.add_argument("--noise", action="store_true", help="noise images, not solid colour")
    parser.add_argument(
        "--burst",
        action="store_true",
        help="200 jobs of 64x64 images, 1min.ai answering at once (the CPU figure)",
    )
    parser.add_argument("--profile", type=Path, help="write py-spy's stacks of the bot here")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.burst:
        result = await burst(noise=args.noise, profile=args.profile)
    else:
        result = await run(
            args.jobs,
            args.latency,
            args.concurrency,
            args.size,
            noise=args.noise,
            profile=args.profile,
        )
    emit("throughput_burst" if args.burst else "throughput", result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
