"""Throughput: N jobs, 1min.ai answering after L seconds, K jobs at once; vs ideal N*L/K.

Run: ``python -m bench.throughput [--jobs 24] [--latency 1.0] [--concurrency 4]``.
Target: at least 90% of ideal.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import emit
from tests.harness import running_bot
from tests.support.images import png
from tests.support.timings import REAL_TIMINGS

IMAGE = png((64, 64))


async def run(jobs: int = 24, latency: float = 1.0, concurrency: int = 4) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_bot(
            Path(tmp), max_concurrent_jobs=concurrency, timings=REAL_TIMINGS
        ) as h:
            h.onemin.upscale_delay = latency
            members = [h.discord.add_member(f"t{i}") for i in range(jobs)]
            start = time.perf_counter()
            its = await asyncio.gather(
                *(
                    h.discord.slash(
                        "upscale", {"image": h.discord.attachment(IMAGE, "a.png")}, member=m
                    )
                    for m in members
                )
            )
            finals = await asyncio.gather(*(it.final(timeout=600) for it in its))
            elapsed = time.perf_counter() - start
            delivered = sum(bool(f.get("attachments")) for f in finals)
            await h.idle(60)
    ideal = jobs * latency / concurrency
    return {
        "jobs": jobs,
        "latency_s": latency,
        "concurrency": concurrency,
        "delivered": delivered,
        "elapsed_s": elapsed,
        "ideal_s": ideal,
        "share_of_ideal": ideal / elapsed,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = await run(args.jobs, args.latency, args.concurrency)
    emit("throughput", result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
