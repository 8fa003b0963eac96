"""Event-loop lag and peak memory of the bot while 4 jobs fit 4096x4096 results under 10 MiB.

Run: ``python -m bench.loop_lag [--json PATH]``. The bot runs as its own process
(``tests.bot_process``, what ``python -m bot`` runs, on a SQLite database in a temporary
directory; :mod:`bench.botproc`), against the Discord emulator in this process and the
1min.ai emulator in another one. Four members each upscale a 1024x1024 noise PNG at
once; the emulator answers with the 4x result, a 37 MB PNG of 4096x4096 upscaled noise,
which the bot must check and fit under Discord's 10 MiB limit.

What is measured, from when the four ``/upscale`` are sent until the last result is
posted (``elapsed_s``):

* Memory of the bot alone: a thread sums the resident memory (VmRSS, from /proc) of the
  bot's process and all its descendants (the image worker; ``children`` counts the
  processes seen) every 10 ms and keeps the largest sum (``peak_rss_mb``).
  ``peak_main_mb`` is the bot process's own peak since it started (VmHWM, kept by the
  kernel, so it may fall between samples) and ``peak_worker_mb`` the largest such peak
  of any one descendant.
  Neither emulator, nor this process's inputs, is counted. RSS counts pages of shared
  libraries in each process that maps them. ``base_rss_mb`` is the sum just before the
  jobs (the idle bot; its worker starts on first use).
* Event-loop lag in the bot's own loop: with ``LAG_PROBE_FILE`` the bot process runs a
  probe task that sleeps 5 ms in a loop and records how late it wakes
  (:func:`tests.bot_process.with_lag_probe`); the samples taken while the jobs ran are
  kept.

Targets: peak memory (bot + worker) under 300 MB; lag max under 50 ms, p99 under 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.botproc import bot_process
from bench.common import TreeRss, emit, percentile
from tests.bot_process import LAG_PROBE_ENV
from tests.support.images import noise_png

JOBS = 4
MiB = 1024 * 1024
SETTLE = 1.0  # seconds of idle before the base memory is read


async def run() -> dict[str, Any]:
    image = noise_png((1024, 1024))  # 4x -> 4096x4096 upscaled noise: a 37 MB PNG
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        lag_file = tmp_path / "lag.json"
        async with bot_process(tmp_path, {LAG_PROBE_ENV: str(lag_file)}) as bot:
            discord_emu = bot.discord
            members = [discord_emu.add_member(f"l{i}") for i in range(JOBS)]
            await asyncio.sleep(SETTLE)
            memory = TreeRss(pid=bot.pid)
            base_rss = memory.current_mb()
            with memory:
                start_wall, start = time.time(), time.perf_counter()
                its = await asyncio.gather(
                    *(
                        discord_emu.slash(
                            "upscale",
                            {"image": discord_emu.attachment(image, "n.png")},
                            member=m,
                        )
                        for m in members
                    )
                )
                finals = await asyncio.gather(*(it.final(timeout=300) for it in its))
                elapsed = time.perf_counter() - start
                end_wall = time.time()
            sizes = [len(it.file(f)[1]) for it, f in zip(its, finals, strict=True)]
        # The bot stopped (SIGTERM) and wrote its lag samples; its log had no error.
        samples = json.loads(lag_file.read_text())
    ms = [lag * 1000 for at, lag in samples if start_wall <= at <= end_wall]
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
        "children": len(memory.children_seen),
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
