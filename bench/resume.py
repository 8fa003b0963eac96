"""Resume after a crash: kill -9 with jobs queued and running, then time the restart.

Run: ``python -m bench.resume [--jobs 8] [--json PATH]``. The bot runs as its own process
(``tests.bot_process``, what ``python -m bot`` runs) on a SQLite database, against the
emulators in this process. With 1min.ai's upscale hanging, ``jobs`` jobs are accepted
(``MAX_CONCURRENT_JOBS=4``: four upscaling, the rest queued); the process is killed with
SIGKILL; 1min.ai is made instant and a new process is started. Reported, from the moment
the new process is started: when it identified on the gateway (``identified_s``;
results are posted over REST and need not wait for it), when the first job was
delivered (``first_delivered_s``, the figure) and when all were (``all_delivered_s``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import emit
from tests.bot_process import start_bot_process
from tests.e2e.test_restart import results, stop, world
from tests.support.images import png
from tests.support.timings import REAL_TIMINGS

RUNNING = 4


async def run(jobs: int = 8) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with world(Path(tmp), timings=REAL_TIMINGS) as w:
            w.onemin.upscale_delay = 600
            extra = {"MAX_CONCURRENT_JOBS": str(RUNNING), "LOG_LEVEL": "WARNING"}
            proc = await w.start(**extra)
            try:
                members = [w.discord.add_member(f"k{i}") for i in range(jobs)]
                await asyncio.gather(
                    *(
                        w.discord.slash(
                            "upscale", {"image": w.discord.attachment(png(), "a.png")}, member=m
                        )
                        for m in members
                    )
                )
                await w.wait_for(
                    lambda: (
                        w.query("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')")
                        == [(jobs,)]
                        and w.onemin.calls["upscale"] >= RUNNING
                    ),
                    timeout=60,
                )
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
            finally:
                stop(proc)
            w.onemin.upscale_delay = 0
            identifies = w.discord.identifies
            start = time.perf_counter()
            proc = start_bot_process(w.env(**extra), w.tmp / "bot.log")
            try:
                ready = first = every = None
                while len(results(w)) < jobs or ready is None:
                    now = time.perf_counter() - start
                    if proc.poll() is not None or now > 120:
                        raise AssertionError(f"not all jobs delivered:\n{w.log()}")
                    if ready is None and w.discord.identifies > identifies:
                        ready = now
                    if first is None and results(w):
                        first = now
                    if every is None and len(results(w)) >= jobs:
                        every = now
                    await asyncio.sleep(0.01)
                delivered = len(results(w))
            finally:
                stop(proc)
    return {
        "jobs": jobs,
        "delivered": delivered,
        "identified_s": ready,
        "first_delivered_s": first,
        "all_delivered_s": every,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = await run(args.jobs)
    emit("resume", result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
