"""Restart safety with a real bot process: kill -9 mid-job, SIGTERM with jobs running.

The emulators run in the test process; the bot runs as ``python -m tests.bot_process``
(what ``python -m bot`` runs) on a database and spool in a temporary directory.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.bot_process import start_bot_process
from tests.emulators.discord import HANG, DiscordEmulator
from tests.emulators.onemin import OneMinEmulator
from tests.harness import DISCORD_TOKEN, ONEMIN_KEY, png

START_TIMEOUT = 30.0  # seconds for a bot process to start and sync its commands


@dataclass
class World:
    discord: DiscordEmulator
    onemin: OneMinEmulator
    tmp: Path

    @property
    def db_path(self) -> Path:
        return self.tmp / "data" / "bot.db"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "DISCORD_TOKEN": DISCORD_TOKEN,
            "ONEMIN_API_KEY": ONEMIN_KEY,
            "ONEMIN_API_BASE": self.onemin.base_url,
            "DATABASE_URL": f"sqlite:///{self.db_path}",
            "DISCORD_API_BASE": self.discord.api_base,
            "DISCORD_GATEWAY_URL": self.discord.gateway_url,
            "LOG_LEVEL": "INFO",
            **extra,
        }

    async def start(self, **extra: str) -> subprocess.Popen[bytes]:
        before = self.discord.identifies
        proc = start_bot_process(self.env(**extra), self.tmp / "bot.log")
        deadline = time.monotonic() + START_TIMEOUT
        while self.discord.identifies == before or not self.discord.global_commands:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"bot did not start:\n{self.log()}")
            await asyncio.sleep(0.05)
        await self.discord.wait_connected()
        return proc

    def log(self) -> str:
        return (self.tmp / "bot.log").read_text(errors="replace")

    def query(self, sql: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.db_path) as conn:
            return conn.execute(sql).fetchall()

    async def wait_stage(self, stage: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.db_path.exists() and self.query(
                f"SELECT 1 FROM jobs WHERE stage = '{stage}' AND status = 'running'"
            ):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no job reached {stage}:\n{self.log()}")


@asynccontextmanager
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with DiscordEmulator(token=DISCORD_TOKEN) as d, OneMinEmulator(api_key=ONEMIN_KEY) as o:
        yield World(d, o, tmp_path)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def notices_for(w: World, member_id: int) -> list[dict[str, object]]:
    return [
        m
        for m in w.discord.channel_messages()
        if f"<@{member_id}>" in str(m.get("content")) and "restarted" in str(m.get("content"))
    ]


@pytest.mark.parametrize("stage", ["uploading", "upscaling", "delivering"])
async def test_kill_9_mid_job_refunds_and_tells_the_member(tmp_path: Path, stage: str) -> None:
    """kill -9 while a job is uploading/upscaling/delivering; after a restart on the same
    database the job is refunded with a notice, nothing stays reserved, nothing is
    delivered twice."""
    async with world(tmp_path) as w:
        if stage == "uploading":
            w.onemin.fail("upload", "latency", seconds=60)
        elif stage == "upscaling":
            w.onemin.upscale_delay = 60
        else:
            w.discord.fail(r"/messages/@original$", HANG, method="PATCH", times=100)
        proc = await w.start()
        try:
            alice = w.discord.alice.user.id
            it = await w.discord.slash("upscale", {"image": w.discord.attachment(png(), "a.png")})
            await it.acked()
            await w.wait_stage(stage)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            assert w.query("SELECT COUNT(*) FROM ledger_entries WHERE state = 'reserved'") == [(1,)]
        finally:
            stop(proc)
        w.onemin.clear_faults()
        w.onemin.upscale_delay = 0
        w.discord._faults.clear()
        proc = await w.start()
        try:
            await w.discord.wait_until(lambda: bool(notices_for(w, alice)), timeout=15)
            assert w.query("SELECT COUNT(*) FROM ledger_entries WHERE state = 'reserved'") == [(0,)]
            assert w.query("SELECT status, error_kind FROM jobs") == [("failed", "restart")]
            delivered = [m for m in w.discord.channel_messages() if m.get("attachments")]
            assert delivered == []
            assert list((tmp_path / "data" / "spool").iterdir()) == []
            # and the bot works again for the same member
            again = await w.discord.slash(
                "upscale", {"image": w.discord.attachment(png(), "b.png")}
            )
            final = await again.final(timeout=20)
            assert final.get("attachments")
        finally:
            stop(proc)


async def test_sigterm_with_a_job_running_refunds_with_a_notice(tmp_path: Path) -> None:
    """SIGTERM while a job runs: the process exits cleanly, the job is refunded and the
    member told; nothing is left reserved."""
    async with world(tmp_path) as w:
        w.onemin.upscale_delay = 60
        proc = await w.start(SHUTDOWN_GRACE="0.5")
        try:
            it = await w.discord.slash("upscale", {"image": w.discord.attachment(png(), "a.png")})
            await w.wait_stage("upscaling")
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 20) == 0
            final = await it.final(timeout=5)
            assert "restarting" in final["content"] and "refunded" in final["content"]
            assert w.query("SELECT COUNT(*) FROM ledger_entries WHERE state = 'reserved'") == [(0,)]
            assert "Stopped cleanly" in w.log()
        finally:
            stop(proc)


async def test_sigterm_lets_a_nearly_done_job_finish(tmp_path: Path) -> None:
    """A job that finishes within the grace time is delivered and charged, not refunded."""
    async with world(tmp_path) as w:
        w.onemin.upscale_delay = 1.0
        proc = await w.start(SHUTDOWN_GRACE="20")
        try:
            it = await w.discord.slash("upscale", {"image": w.discord.attachment(png(), "a.png")})
            await w.wait_stage("upscaling")
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
            final = await it.final(timeout=5)
            assert final.get("attachments")
            assert w.query("SELECT state FROM ledger_entries") == [("committed",)]
        finally:
            stop(proc)
