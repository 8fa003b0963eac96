"""Burst: 200 members run /upscale at the same instant; ack latency vs a floor bot.

Run: ``python -m bench.burst [--members 200] [--bursts 3] [--json PATH]``. The floor is a
minimal discord.py bot whose /upscale only defers then edits, against the same Discord
emulator; both run in this process with the emulators. The median of the bursts' figures
is reported. Targets: every ack within 3 s; our p99 at most 1.2x the floor's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bench.common import emit, summary_ms, table
from tests.emulators.discord import DiscordEmulator, point_discord_at
from tests.harness import running_bot
from tests.support.images import png
from tests.support.timings import REAL_TIMINGS

IMAGE = png((64, 64))


class FloorBot(commands.Bot):
    """The least a bot can do: defer, then edit."""

    def __init__(self) -> None:
        super().__init__(
            command_prefix="!", intents=discord.Intents.none(), guild_ready_timeout=0.05
        )

    async def setup_hook(self) -> None:
        @app_commands.command(name="upscale", description="floor")
        @app_commands.choices(format=[app_commands.Choice(name="PNG", value="png")])
        async def upscale(
            interaction: discord.Interaction,
            image: discord.Attachment,
            format: app_commands.Choice[str] | None = None,
        ) -> None:
            await interaction.response.defer(thinking=True)
            await interaction.edit_original_response(content="done")

        self.tree.add_command(upscale)
        await self.tree.sync()


async def one_burst(emu: DiscordEmulator, members: int) -> dict[str, float]:
    people = [emu.add_member(f"burst{i}") for i in range(members)]
    its = await asyncio.gather(
        *(emu.slash("upscale", {"image": emu.attachment(IMAGE, "a.png")}, member=m) for m in people)
    )
    await asyncio.gather(*(it.final(timeout=120) for it in its))
    return summary_ms([it.ack_latency or 1e9 for it in its])


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


async def ours(members: int, bursts: int) -> dict[str, float]:
    runs = []
    for _ in range(bursts):
        with tempfile.TemporaryDirectory() as tmp:
            # Pacing is measured by bench.rate_burst; here 200 jobs would need 400
            # requests, over two 61 s windows at the default 180/min, for nothing measured.
            async with running_bot(
                Path(tmp), onemin_requests_per_minute=100_000, timings=REAL_TIMINGS
            ) as h:
                runs.append(await one_burst(h.discord, members))
                await h.idle(120)
    return median_of(runs)


async def floor(members: int, bursts: int) -> dict[str, float]:
    runs = []
    for _ in range(bursts):
        async with DiscordEmulator(token="floor-token") as emu:
            point_discord_at(emu)
            bot = FloorBot()
            runner = asyncio.create_task(bot.start("floor-token"))
            await emu.wait_until(lambda: bool(emu.global_commands), timeout=30)
            await emu.wait_connected()
            runs.append(await one_burst(emu, members))
            await bot.close()
            await asyncio.gather(runner, return_exceptions=True)
    return median_of(runs)


async def run(members: int = 200, bursts: int = 3) -> dict[str, Any]:
    floor_figures = await floor(members, bursts)
    our_figures = await ours(members, bursts)
    return {
        "members": members,
        "bursts": bursts,
        "ours": our_figures,
        "floor": floor_figures,
        "p99_ratio": our_figures["p99_ms"] / floor_figures["p99_ms"],
    }


def report(result: dict[str, Any]) -> str:
    rows = [{"bot": name, **result[name]} for name in ("ours", "floor")]
    cols = ["bot", "n", "within_3s_share", "p50_ms", "p95_ms", "p99_ms", "max_ms"]
    return table(rows, cols) + f"\np99 ratio ours/floor: {result['p99_ratio']:.2f}"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = await run(args.members, args.bursts)
    emit("burst", result, args.json, report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
