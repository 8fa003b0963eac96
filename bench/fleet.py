"""A fleet of two bot processes (shards 0 and 1 of 2) on one PostgreSQL database.

Throughput: N jobs split over both shards' guilds, 1min.ai answering after L seconds, K
jobs at once fleet-wide (MAX_CONCURRENT_JOBS=K on both processes); vs the ideal N*L/K.
Target: at least 97% of ideal. Where the rest goes is read from the jobs' trails (each
stage change with its time): the time until all K slots were first busy, the upscale
calls themselves (1min.ai's latency plus the call), the hand-overs (from an upscale's
end to the start of the one that took its slot), the tail (from the last upscale's
end to the last result seen by the member), and the share of a busy slot's time that
is 1min.ai's latency.

Failover: during a burst, kill -9 a process while it runs jobs; the time from the kill
to the first of its jobs running in the other process (lease JOB_LEASE_SECONDS), over
a few runs.

Needs the PostgreSQL test server (``TEST_DATABASE_URL``, default
postgresql://postgres@127.0.0.1:5432/test). Run from the project root:
``python -m bench.fleet [--jobs 24] [--latency 1.0] [--concurrency 4] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import emit, onemin_in_subprocess, table
from bot.jobs.store import TrailEvent, parse_trail
from tests.fleet_harness import all_final, delivered, fleet
from tests.harness import ONEMIN_KEY
from tests.support.timings import REAL_TIMINGS

LEASE = 3.0  # seconds: JOB_LEASE_SECONDS for the failover runs (the smallest allowed)


async def throughput(jobs: int = 24, latency: float = 1.0, concurrency: int = 4) -> dict[str, Any]:
    """Both processes busy; 1min.ai (emulated in its own process, as in bench.throughput)."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        onemin_in_subprocess(ONEMIN_KEY, latency) as onemin_base,
    ):
        async with fleet(Path(tmp), timings=REAL_TIMINGS) as f:
            await f.start(
                MAX_CONCURRENT_JOBS=str(concurrency),
                ONEMIN_API_BASE=onemin_base,
                LOG_LEVEL="WARNING",
            )
            start, wall_start = time.perf_counter(), time.time()
            its = await f.burst(jobs // 2)
            finals = await all_final(its, timeout=600)
            elapsed = time.perf_counter() - start
            await f.settled(60)
            trails = [
                parse_trail(r["trail"]) for r in await f.db.fetchall("SELECT trail FROM jobs")
            ]
            result = {
                "processes": 2,
                "jobs": len(its),
                "latency_s": latency,
                "concurrency": concurrency,
                "delivered": delivered(finals),
                "unique_results": len(set(f.footers())),
                "elapsed_s": elapsed,
            }
    ideal = len(its) * latency / concurrency
    return {
        **result,
        "ideal_s": ideal,
        "share_of_ideal": ideal / elapsed,
        **where_time_went(trails, wall_start, elapsed, concurrency, latency),
    }


def where_time_went(
    trails: list[list[TrailEvent]], start: float, elapsed: float, concurrency: int, latency: float
) -> dict[str, float]:
    """From the jobs' trails (times since ``start``): until every slot was first busy,
    the median upscale call, the median and total hand-over, the tail, and the share of
    a busy slot's time that is 1min.ai's latency (its calls of ``latency`` s against
    the calls and hand-overs it took)."""
    calls = []
    for events in trails:
        at = {e.stage: e.at - start for e in events}
        if "upscaling" in at and "downloading" in at:
            calls.append((at["upscaling"], at["downloading"]))
    starts = sorted(c[0] for c in calls)
    ends = sorted(c[1] for c in calls)
    if len(calls) <= concurrency:
        return {}
    # The i-th upscale could start only once the (i-K)-th had ended: the gap between them
    # is the hand-over of that slot.
    handovers = [starts[i] - ends[i - concurrency] for i in range(concurrency, len(calls))]
    waves = len(calls) / concurrency
    call = statistics.median(end - begin for begin, end in calls)
    per_slot = sum(handovers) / concurrency
    return {
        "all_slots_busy_s": starts[concurrency - 1],
        "call_median_s": call,
        "handover_median_ms": statistics.median(handovers) * 1000,
        "handovers_per_slot_s": per_slot,
        "tail_s": elapsed - ends[-1],
        "waves": waves,
        "busy_share": waves * latency / (waves * call + per_slot),
    }


async def failover_once(latency: float = 1.0, concurrency: int = 2) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with fleet(Path(tmp), timings=REAL_TIMINGS) as f:
            await f.start(
                MAX_CONCURRENT_JOBS=str(concurrency),
                JOB_LEASE_SECONDS=str(LEASE),
                LOG_LEVEL="WARNING",
            )
            f.onemin.upscale_delay = latency
            async with f.watching_owners():
                its = await f.burst(4)
                for it in its:
                    await it.acked()
                victims: set[str] = set()
                deadline = time.monotonic() + 30
                while not victims:  # whichever process runs jobs (one may run them all)
                    victims = {j for j in f.owners if len(f.ran_on(j)) == 1}
                    if time.monotonic() > deadline:
                        raise RuntimeError("no job ran")
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.2)  # into the upscale call
                shard = next(iter(f.ran_on(next(iter(victims)))))
                victims = {j for j in f.owners if f.ran_on(j) == {shard}}
                survivor = str(1 - int(shard))
                killed = time.perf_counter()
                f.kill(int(shard))
                while not any(survivor in f.ran_on(j) for j in victims):
                    if time.perf_counter() - killed > 60:
                        raise RuntimeError("no job was taken over")
                    await asyncio.sleep(0.01)
                resumed = time.perf_counter() - killed
                finals = await all_final(its, timeout=120)
            await f.settled(60)
            return {
                "resumed_after_s": resumed,
                "jobs": len(its),
                "delivered": delivered(finals),
                "unique_results": len(set(f.footers())),
            }


async def failover(runs: int = 3) -> dict[str, Any]:
    samples = [await failover_once() for _ in range(runs)]
    times = [s["resumed_after_s"] for s in samples]
    return {
        "runs": runs,
        "lease_s": LEASE,
        "p50_s": statistics.median(times),
        "max_s": max(times),
        "all_delivered_once": all(
            s["delivered"] == s["jobs"] == s["unique_results"] for s in samples
        ),
    }


async def run(
    jobs: int = 24, latency: float = 1.0, concurrency: int = 4, runs: int = 3
) -> dict[str, Any]:
    return {
        "throughput": await throughput(jobs, latency, concurrency),
        "failover": await failover(runs),
    }


def report(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            table([result["throughput"]], list(result["throughput"])),
            "",
            table([result["failover"]], list(result["failover"])),
        ]
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = await run(args.jobs, args.latency, args.concurrency, args.runs)
    emit("fleet", result, args.json, report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
