"""Ack latency of a burst of interactions against a command that only defers and edits.

Run from the project root: ``python bench/ack_burst.py [--n 100] [--json PATH]`` (or
``python -m bench.ack_burst``). The real bot (our factory, real discord.py) runs against
the Discord emulator with only the probe cog loaded; N ``/probe`` interactions (defer,
then one edit carrying an 8x8 PNG) are injected at once, each from its own member, and
the time from injection to the emulator receiving each ack is measured. A figure, not a
pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

if not __package__:  # run as a script: make the project root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentile
from tests.harness import running_bot
from tests.support.timings import REAL_TIMINGS


async def burst(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_bot(
            Path(tmp), extensions=["tests.e2e.probe_cog"], timings=REAL_TIMINGS
        ) as h:
            members = [h.discord.add_member(f"b{i}") for i in range(n)]
            its = await asyncio.gather(*(h.discord.slash("probe", member=m) for m in members))
            await asyncio.gather(*(it.final(timeout=60) for it in its))
            latencies = [it.ack_latency for it in its if it.ack_latency is not None]
    ms = [x * 1000 for x in latencies]
    return {
        "n": n,
        "acked": len(ms),
        "within_3s": sum(x < 3000 for x in ms),
        "p50_ms": statistics.median(ms),
        "p95_ms": percentile(ms, 0.95),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms),
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = await burst(args.n)
    print(
        f"{'n':>5} {'acked':>6} {'<3s':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    print(
        f"{result['n']:>5} {result['acked']:>6} {result['within_3s']:>5}"
        f" {result['p50_ms']:>8.1f} {result['p95_ms']:>8.1f} {result['p99_ms']:>8.1f}"
        f" {result['max_ms']:>8.1f}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"ack_burst": result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
