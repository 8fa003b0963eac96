"""Watched jobs and memory of a process whose jobs another process delivers.

Two bot processes on PostgreSQL: process 0 takes every command (its guild's shard) and
shows places in line but runs no job (``RUN_JOBS=0``); process 1 runs and delivers them
all. A long stream of upscales goes through, in waves; process 0's resident memory, the
jobs its queue still shows a place for and the progress displays its front end keeps are
sampled every 0.25 s (``WATCH_PROBE_FILE``, see tests/bot_process.py). Per-job state that
outlived its job would show as a count that grows with the stream, and memory with it.

Run from the project root (needs the PostgreSQL test server):
``python -m bench.fleet_watch [--waves 30] [--per-wave 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import emit, table
from tests.fleet_harness import all_final, delivered, fleet
from tests.support.timings import REAL_TIMINGS


async def run(waves: int = 30, per_wave: int = 20) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "watch.json"
        async with fleet(Path(tmp), timings=REAL_TIMINGS) as f:
            common = {"DEFAULT_USER_LIMIT": "100000", "LOG_LEVEL": "WARNING"}
            await f.start(0, RUN_JOBS="0", WATCH_PROBE_FILE=str(probe), **common)
            await f.start(1, **common)
            members = f.members(0, per_wave)
            ends: list[float] = []
            done = 0
            started = time.time()
            for _ in range(waves):
                its = [await f.upscale(0, m) for m in members]
                done += delivered(await all_final(its, timeout=120))
                await f.settled(60)
                ends.append(time.time())
            await asyncio.sleep(1.0)  # a few samples after the last wave
            f.procs[0].terminate()  # SIGTERM: the probe writes its samples on the way out
            await asyncio.to_thread(f.procs[0].wait, 30)
        samples = json.loads(probe.read_text())
    rows = []
    marks = [0, waves // 4, waves // 2, 3 * waves // 4, waves - 1]
    for wave in sorted(set(marks)):
        at = ends[wave]
        sample = min(samples, key=lambda s: abs(s[0] - at))
        rows.append(
            {
                "after_wave": wave + 1,
                "jobs": (wave + 1) * per_wave,
                "rss_mb": sample[1] / 1024,
                "watched": sample[2],
                "displays": sample[3],
            }
        )
    after = [s for s in samples if s[0] >= ends[-1]]
    half = [s for s in samples if ends[waves // 2] <= s[0] <= ends[-1]]
    return {
        "jobs": waves * per_wave,
        "delivered": done,
        "seconds": ends[-1] - started,
        "rows": rows,
        "watched_at_end": max(s[2] for s in after),
        "displays_at_end": max(s[3] for s in after),
        "watched_max": max(s[2] for s in samples),
        "displays_max": max(s[3] for s in samples),
        "rss_second_half_growth_mb": (half[-1][1] - half[0][1]) / 1024 if half else 0.0,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--waves", type=int, default=30)
    parser.add_argument("--per-wave", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = await run(args.waves, args.per_wave)
    text = table(result["rows"], ["after_wave", "jobs", "rss_mb", "watched", "displays"])
    summary = {k: v for k, v in result.items() if k != "rows"}
    emit("fleet_watch", result, args.json, text + "\n" + table([summary], list(summary)))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
