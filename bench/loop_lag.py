"""Event-loop lag and peak memory while 4 jobs fit 4096x4096 results under 10 MiB.

Run: ``python -m bench.loop_lag [--json PATH]``. The bot runs in this process with the
Discord emulator; the 1min.ai emulator runs in another process (its 4x encodes must not
share this process's GIL). A probe task sleeps 5 ms in a loop and records how late it
wakes. Memory: a thread sums the resident memory (VmRSS) of this process and its
children (the bot's image worker pool; the 1min.ai emulator's process is left out) every
10 ms and keeps the largest sum; ``base_rss_mb`` is that sum just before the jobs (the
emulator, the bench's own inputs and the idle bot). Targets: lag max under 50 ms, p99
under 20 ms; peak memory under 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import EMULATOR_PIDS, TreeRss, emit, noise_png, onemin_in_subprocess, percentile
from tests.harness import ONEMIN_KEY, running_bot

PROBE_SLEEP = 0.005  # seconds
JOBS = 4
MiB = 1024 * 1024


async def run() -> dict[str, Any]:
    image = noise_png((1024, 1024))  # 4x -> 4096x4096 noise: ~48 MB PNG, must be fitted
    lags: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(PROBE_SLEEP)
            lags.append(time.perf_counter() - before - PROBE_SLEEP)

    with onemin_in_subprocess(ONEMIN_KEY) as base_url, tempfile.TemporaryDirectory() as tmp:
        async with running_bot(Path(tmp), onemin_api_base=base_url) as h:
            members = [h.discord.add_member(f"l{i}") for i in range(JOBS)]
            memory = TreeRss(exclude=EMULATOR_PIDS)
            base_rss = memory.current_mb()
            memory.__enter__()
            task = asyncio.create_task(probe())
            start = time.perf_counter()
            its = await asyncio.gather(
                *(
                    h.discord.slash(
                        "upscale", {"image": h.discord.attachment(image, "n.png")}, member=m
                    )
                    for m in members
                )
            )
            finals = await asyncio.gather(*(it.final(timeout=300) for it in its))
            elapsed = time.perf_counter() - start
            stop.set()
            await task
            memory.__exit__()
            sizes = [len(it.file(f)[1]) for it, f in zip(its, finals, strict=True)]
    ms = [lag * 1000 for lag in lags]
    return {
        "jobs": JOBS,
        "elapsed_s": elapsed,
        "delivered_max_mib": max(sizes) / MiB,
        "samples": len(ms),
        "p50_ms": statistics.median(ms),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms),
        "base_rss_mb": base_rss,
        "peak_rss_mb": memory.peak_mb,
        "peak_main_mb": memory.peak_root_mb,
        "peak_worker_mb": memory.peak_child_mb,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = await run()
    emit("loop_lag", result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
