"""Rate-limited burst: more requests than 1min.ai's window allows; time vs the window bound.

Run: ``python -m bench.rate_burst [--jobs 45] [--per-window 30] [--window 10] [--json PATH]``.
The 1min.ai emulator admits ``per_window`` API calls per sliding ``window`` s (429 without
Retry-After over it, like the real service). Each job makes two calls (upload, upscale),
so ``jobs`` jobs need ``R = 2 * jobs`` calls, and the last one cannot leave before
``(ceil(R / per_window) - 1) * window`` s: that is the window-bound ideal. The real bot
paces with :class:`bot.onemin.pacing.RateGate`, here on the scaled window: ``ONEMIN_RATE_WINDOW``
= ``window`` (the bot adds :data:`bot.onemin.pacing.WINDOW_MARGIN`; production uses 60 s + 1 s),
set through the bot's settings like an owner would. Reported: when the
last call left and when the last result was delivered, both against the ideal, and the
429s the service answered (target 0). Target: within 1.2x of the ideal.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import emit
from tests.harness import running_bot
from tests.support.images import png
from tests.support.timings import REAL_TIMINGS

IMAGE = png((64, 64))


async def run(jobs: int = 45, per_window: int = 30, window: float = 10.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_bot(
            Path(tmp),
            onemin_requests_per_minute=per_window,
            onemin_rate_window=window,  # the bot's window: this + WINDOW_MARGIN
            timings=REAL_TIMINGS,
        ) as h:
            h.onemin.rate_limit(per_window, window, retry_after=False)
            members = [h.discord.add_member(f"r{i}") for i in range(jobs)]
            before = len(h.onemin.api_requests)
            start = time.perf_counter()
            start_mono = time.monotonic()
            its = await asyncio.gather(
                *(
                    h.discord.slash(
                        "upscale", {"image": h.discord.attachment(IMAGE, "a.png")}, member=m
                    )
                    for m in members
                )
            )
            finals = await asyncio.gather(
                *(it.final(timeout=10 * window * math.ceil(2 * jobs / per_window)) for it in its)
            )
            delivered_s = time.perf_counter() - start
            calls = h.onemin.api_requests[before:]
            await h.idle(60)
    requests = 2 * jobs
    ideal = (math.ceil(requests / per_window) - 1) * window
    last_call = max(c.at for c in calls) - start_mono
    return {
        "jobs": jobs,
        "requests": len(calls),
        "per_window": per_window,
        "window_s": window,
        "delivered": sum(bool(f.get("attachments")) for f in finals),
        "rejected_429": sum(c.limited for c in calls),
        "ideal_s": ideal,
        "last_call_s": last_call,
        "all_delivered_s": delivered_s,
        "last_call_ratio": last_call / ideal,
        "delivered_ratio": delivered_s / ideal,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=45)
    parser.add_argument("--per-window", type=int, default=30)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = await run(args.jobs, args.per_window, args.window)
    emit("rate_burst", result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
