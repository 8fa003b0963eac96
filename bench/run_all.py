"""Run every benchmark, print one report, write bench/out/results.json.

Run from the project root: ``python -m bench.run_all`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    ack_burst,
    burst,
    fleet,
    ledger_bench,
    loop_lag,
    memory,
    rate_burst,
    resume,
    throughput,
)
from bench.common import table

OUT = Path(__file__).with_name("out") / "results.json"


async def main() -> int:
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}",
    }
    print("== burst: 200 members at once vs a defer-only floor bot (median of 3) ==")
    results["burst"] = await burst.run(200, 3)
    print(burst.report(results["burst"]))
    print("\n== ack burst: 100 interactions, defer + edit only ==")
    results["ack_burst"] = await ack_burst.burst(100)
    print(table([results["ack_burst"]], list(results["ack_burst"])))
    print("\n== throughput: 24 jobs, 1min.ai answers after 1 s, 4 at once ==")
    results["throughput"] = await throughput.run(24, 1.0, 4)
    print(table([results["throughput"]], list(results["throughput"])))
    print("\n== the bot's CPU per job: 200 jobs of 64x64 images at once, L = 1 s, K = 4 ==")
    results["throughput_burst"] = await throughput.burst()
    print(table([results["throughput_burst"]], list(results["throughput_burst"])))
    print("\n== event loop lag and peak RSS while 4 jobs fit 4096x4096 results ==")
    results["loop_lag"] = await loop_lag.run()
    print(table([results["loop_lag"]], list(results["loop_lag"])))
    print("\n== rate-limited burst: 45 jobs (90 calls), 1min.ai allows 30 per 10 s ==")
    results["rate_burst"] = await rate_burst.run(45, 30, 10.0)
    print(table([results["rate_burst"]], list(results["rate_burst"])))
    print("\n== resume: kill -9 with 8 jobs queued/running, restart, first delivery ==")
    results["resume"] = await resume.run(8)
    print(table([results["resume"]], list(results["resume"])))
    print("\n== memory of the bot process (40 MB inputs) ==")
    results["memory"] = await memory.run()
    print(table([results["memory"]], list(results["memory"])))
    print("\n== ledger: reserve+commit pairs ==")
    with tempfile.TemporaryDirectory() as tmp:
        results["ledger"] = [
            await ledger_bench.run_single(c, 4000, Path(tmp) / f"l{c}.db") for c in (1, 50)
        ]
    print(table(results["ledger"], list(results["ledger"][0])))
    print("\n== fleet: 2 processes on PostgreSQL, 24 jobs, 1 s each, 4 at once fleet-wide;")
    print("   failover after kill -9 with a 3 s lease (3 runs) ==")
    results["fleet"] = await fleet.run(24, 1.0, 4, 3)
    print(fleet.report(results["fleet"]))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(f"\nwritten {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
