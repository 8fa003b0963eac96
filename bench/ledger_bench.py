"""Ledger throughput: reserve+commit pairs per second and latency, on a file database.

Run: ``python -m bench.ledger_bench [--pairs N] [--json PATH]``. Prints a table for
concurrency 1 and 50 (each pair is one ``reserve`` then one ``commit``, as a delivered
upscale does), and writes the figures as JSON when asked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from bot.db import Database
from bot.ledger import Ledger, Reservation

GUILD = 1
MEMBERS = 500  # spread over many members, as in a busy server


async def run(concurrency: int, pairs: int, path: Path) -> dict[str, float]:
    db = await Database.open(path)
    ledger = Ledger(db, default_limit=1_000_000, default_period="daily")
    latencies: list[float] = []
    counter = iter(range(pairs))

    async def worker() -> None:
        for i in counter:
            start = time.perf_counter()
            outcome = await ledger.reserve(GUILD, 10_000 + i % MEMBERS, (501, 502), 1)
            assert isinstance(outcome, Reservation)
            await ledger.commit(outcome.id)
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    await db.close()
    latencies.sort()
    return {
        "concurrency": concurrency,
        "pairs": pairs,
        "pairs_per_s": pairs / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for concurrency in (1, 50):
            path = Path(tmp) / f"ledger-{concurrency}.db"
            results.append(await run(concurrency, args.pairs, path))
    print(f"{'concurrency':>11} {'pairs':>7} {'pairs/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results:
        print(
            f"{r['concurrency']:>11} {r['pairs']:>7} {r['pairs_per_s']:>9.0f}"
            f" {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"ledger": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
