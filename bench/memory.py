"""Memory of the bot process: idle, K jobs of 40 MB inputs running, 50 such jobs queued.

Run: ``python -m bench.memory [--json PATH]``. The bot runs as its own process
(``tests.bot_process``, what ``python -m bot`` runs); the emulators run here. RSS is read
from /proc. Target: queued jobs add almost nothing (their inputs wait in the database,
table ``job_inputs``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from bench.common import emit
from tests.bot_process import start_bot_process
from tests.emulators.discord import DiscordEmulator
from tests.emulators.onemin import OneMinEmulator
from tests.harness import DISCORD_TOKEN, ONEMIN_KEY

RUNNING = 4  # MAX_CONCURRENT_JOBS
QUEUED_TOTAL = 50
MB = 1_000_000


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1000, int(fields["VmHWM"].split()[0]) / 1000


def forty_mb_bmp() -> bytes:
    side = 3650  # 3650 x 3650 x 3 bytes ~ 40 MB, incompressible noise
    image = Image.frombytes("RGB", (side, side), random.Random(5).randbytes(side * side * 3))
    out = io.BytesIO()
    image.save(out, "BMP")
    return out.getvalue()


def count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return int(conn.execute(sql).fetchone()[0])


async def settle(pid: int, seconds: float = 1.0) -> float:
    """Highest RSS seen over ``seconds``."""
    peak = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, rss_mb(pid)[0])
        await asyncio.sleep(0.05)
    return peak


async def run() -> dict[str, Any]:
    data = forty_mb_bmp()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        db = tmp_path / "bot.db"
        async with (
            DiscordEmulator(token=DISCORD_TOKEN) as discord_emu,
            OneMinEmulator(api_key=ONEMIN_KEY) as onemin_emu,
        ):
            onemin_emu.upscale_delay = 600
            env = {
                "DISCORD_TOKEN": DISCORD_TOKEN,
                "ONEMIN_API_KEY": ONEMIN_KEY,
                "ONEMIN_API_BASE": onemin_emu.base_url,
                "DATABASE_URL": f"sqlite:///{db}",
                "DISCORD_API_BASE": discord_emu.api_base,
                "DISCORD_GATEWAY_URL": discord_emu.gateway_url,
                "MAX_CONCURRENT_JOBS": str(RUNNING),
                "SHUTDOWN_GRACE": "0",
            }
            proc = start_bot_process(env, tmp_path / "bot.log")
            try:
                await discord_emu.wait_until(lambda: bool(discord_emu.global_commands), 60)
                await discord_emu.wait_connected()
                idle = await settle(proc.pid, 2.0)
                members = [discord_emu.add_member(f"mem{i}") for i in range(QUEUED_TOTAL)]

                async def submit(member_index: int) -> None:
                    attachment = discord_emu.attachment(data, "big.bmp")
                    await discord_emu.slash(
                        "upscale", {"image": attachment}, member=members[member_index]
                    )

                await asyncio.gather(*(submit(i) for i in range(RUNNING)))
                running_sql = "SELECT COUNT(*) FROM jobs WHERE stage = 'upscaling'"
                while count(db, running_sql) < RUNNING:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                running = await settle(proc.pid, 2.0)
                peak_running = rss_mb(proc.pid)[1]
                await asyncio.gather(*(submit(i) for i in range(RUNNING, QUEUED_TOTAL)))
                # Every job recorded: RUNNING upscaling, the rest waiting (queued, or claimed
                # ahead of a free slot with their input read).
                recorded_sql = "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
                while count(db, recorded_sql) < QUEUED_TOTAL:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                queued = await settle(proc.pid, 2.0)
                peak_all = rss_mb(proc.pid)[1]
                stored = count(db, "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM job_inputs") / MB
            finally:
                proc.kill()
                proc.wait(timeout=10)
    waiting = QUEUED_TOTAL - RUNNING
    return {
        "input_mb": len(data) / MB,
        "idle_rss_mb": idle,
        "running_rss_mb": running,
        "running_peak_mb": peak_running,
        "queued_rss_mb": queued,
        "queued_peak_mb": peak_all,
        "mb_per_running_job": (running - idle) / RUNNING,
        "mb_per_queued_job": (queued - running) / waiting,
        "inputs_mb_in_db": stored,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = await run()
    emit("memory", result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
