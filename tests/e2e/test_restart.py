"""Durable jobs with a real bot process: kill -9 and SIGTERM mid-job, then a restart.

The emulators run in the test process; the bot runs as ``python -m tests.bot_process``
(what ``python -m bot`` runs) on a database and spool in a temporary directory, on short
clocks (:mod:`tests.support.timings`: a restarted process waits 0.55 s, not 5.5 s, for its
IDENTIFY turn, against an emulator whose IDENTIFY window is shortened to match).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bot.timings import Timings
from tests.bot_process import start_bot_process
from tests.emulators.discord import APPLY_THEN_HANG, HANG, DiscordEmulator, Injected, find_button
from tests.emulators.hold import Hold
from tests.emulators.onemin import OneMinEmulator
from tests.harness import DISCORD_TOKEN, ONEMIN_KEY, eventually
from tests.support.images import png
from tests.support.timings import SHORT_TIMINGS, identify_window, timings_env

START_TIMEOUT = 30.0  # seconds for a bot process to start and sync its commands
# The deferred reply, edited through the interaction webhook (by id or as @original).
WEBHOOK_MESSAGE = r"/webhooks/\d+/[^/]+/messages/[^/]+$"


@dataclass
class World:
    discord: DiscordEmulator
    onemin: OneMinEmulator
    tmp: Path
    timings: Timings = field(default=SHORT_TIMINGS)

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
            **timings_env(self.timings),
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

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached:\n{self.log()}")
            await asyncio.sleep(0.05)

    async def wait_settled(self, timeout: float = 30.0) -> None:
        """Until no job is queued or running and no credit is reserved."""
        await self.wait_for(
            lambda: (
                self.query(
                    "SELECT (SELECT COUNT(*) FROM jobs"
                    " WHERE status IN ('intake', 'queued', 'running'))"
                    " + (SELECT COUNT(*) FROM ledger_entries WHERE state = 'reserved')"
                )
                == [(0,)]
            ),
            timeout,
        )


@asynccontextmanager
async def world(tmp_path: Path, timings: Timings = SHORT_TIMINGS) -> AsyncIterator[World]:
    async with DiscordEmulator(token=DISCORD_TOKEN) as d, OneMinEmulator(api_key=ONEMIN_KEY) as o:
        d.identify_interval = identify_window(timings)
        yield World(d, o, tmp_path, timings)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def notices_for(w: World, member_id: int, words: str = "continues") -> list[dict[str, object]]:
    """What the member was told about a restart: in the channel or on their reply."""
    texts = [str(m.get("content")) for m in w.discord.channel_messages()]
    return [{"content": t} for t in texts if f"<@{member_id}>" in t and words in t]


def is_cancel(component: dict[str, Any]) -> bool:
    return str(component.get("custom_id", "")).startswith("upscale:cancel:")


def has_cancel(message: dict[str, Any] | None) -> bool:
    return message is not None and any(
        is_cancel(c) for row in message.get("components", []) for c in row.get("components", [])
    )


def results(w: World) -> list[dict[str, Any]]:
    """Every posted result (messages with an attachment), wherever it was posted."""
    return [m for m in w.discord.channel_messages() if m.get("attachments")]


def result_jobs(w: World) -> list[str]:
    """The job footers of the posted results (one per delivered job)."""
    return [
        str(e["footer"]["text"]) for m in results(w) for e in m.get("embeds", []) if e.get("footer")
    ]


async def killed_while_downloading_the_image(
    w: World, name: str = "slow.png"
) -> tuple[Injected, dict[str, Any], Hold]:
    """Run one upscale whose image download Discord's CDN holds, and kill -9 the bot once
    the download started (the job recorded, its credit reserved, its reply "thinking").
    Returns the member's interaction, the attachment and the hold, still held."""
    proc = await w.start()
    try:
        attachment = w.discord.attachment(png(), name)
        held = w.discord.hold_attachment(attachment)
        it = await w.discord.slash("upscale", {"image": attachment})
        await it.acked()
        await held.reached()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop(proc)
    return it, attachment, held


async def test_kill_9_during_a_slow_attachment_download_delivers_the_job_once(
    tmp_path: Path,
) -> None:
    """The process dies while it is still downloading the member's image (the job is
    recorded, its credit reserved, its reply "thinking"): the next start takes the
    image in again from the stored attachment address and delivers the job once,
    charged once, telling the member it continues."""
    async with world(tmp_path) as w:
        it, _, held = await killed_while_downloading_the_image(w)
        assert w.query("SELECT status, stage FROM jobs") == [("intake", "receiving")]
        assert w.query("SELECT state FROM ledger_entries") == [("reserved",)]
        held.release()
        proc = await w.start()
        try:
            final = await it.final(timeout=30)
            assert final.get("attachments")
            await w.wait_settled()
            assert w.query("SELECT status FROM jobs") == [("delivered",)]
            assert w.query("SELECT state FROM ledger_entries") == [("committed",)]
            assert len(results(w)) == 1 and w.onemin.upscales == 1
            assert any("continues" in str(e.get("content")) for e in it.edits)
        finally:
            stop(proc)


async def test_an_attachment_gone_after_a_kill_during_its_download_is_refunded_with_why(
    tmp_path: Path,
) -> None:
    """The process dies while downloading the image, and the image is deleted before
    the next start: the job is refunded and the member told the image is no longer
    available, instead of being left "thinking"."""
    async with world(tmp_path) as w:
        it, attachment, held = await killed_while_downloading_the_image(w, "gone.png")
        w.discord.remove_attachment(attachment)
        held.release()
        proc = await w.start()
        try:
            final = await it.final(timeout=30)
            assert "no longer available on Discord" in str(final.get("content"))
            assert "refunded" in str(final.get("content"))
            await w.wait_settled()
            assert w.query("SELECT status, error_kind FROM jobs") == [("failed", "source_gone")]
            assert w.query("SELECT state FROM ledger_entries") == [("refunded",)]
            assert w.onemin.calls["upload"] == 0
        finally:
            stop(proc)


@pytest.mark.parametrize("stage", ["uploading", "upscaling", "delivering"])
async def test_kill_9_mid_job_resumes_and_delivers_once(tmp_path: Path, stage: str) -> None:
    """kill -9 while a job is uploading/upscaling/delivering; after a restart on the same
    database the job continues from its stage, is delivered once and charged once."""
    async with world(tmp_path) as w:
        held: Hold | None = None  # the 1min.ai call the job is caught in
        if stage == "uploading":
            held = w.onemin.hold("upload")
        elif stage == "upscaling":
            held = w.onemin.hold("upscale")
        else:
            w.discord.fail(WEBHOOK_MESSAGE, HANG, method="PATCH", times=100, files_only=True)
        proc = await w.start()
        try:
            alice = w.discord.alice.user.id
            it = await w.discord.slash("upscale", {"image": w.discord.attachment(png(), "a.png")})
            await it.acked()
            await w.wait_stage(stage)
            # Kill only once the call is caught in the emulator: a request still on its
            # way (its bytes in the socket) would otherwise be read after the faults are
            # cleared, and take effect as if the process had finished it.
            if held is not None:
                await held.reached()
            else:
                await w.discord.wait_until(lambda: bool(w.discord.hung), timeout=20)
            uploads_before = w.onemin.calls["upload"]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            assert w.query("SELECT COUNT(*) FROM ledger_entries WHERE state = 'reserved'") == [(1,)]
        finally:
            stop(proc)
        if held is not None:
            held.release()
        w.discord.clear_faults()
        proc = await w.start()
        try:
            final = await it.final(timeout=20)
            assert final.get("attachments")
            await w.wait_settled()
            assert w.query("SELECT state FROM ledger_entries") == [("committed",)]
            assert w.query("SELECT status FROM jobs") == [("delivered",)]
            assert len(results(w)) == 1
            edits = [e["content"] for e in it.edits]
            assert any("continues" in e for e in edits), f"edits: {edits}\n{w.log()}"
            if stage != "uploading":  # the asset was uploaded once, not again
                assert w.onemin.calls["upload"] == uploads_before
            if stage == "delivering":  # the record was stored: no second upscale call
                assert w.onemin.upscales == 1
            # The result's spool file is removed just after the job is settled (the
            # journal of acknowledged interactions is a folder of its own).
            spool = tmp_path / "data" / "spool"
            await eventually(lambda: not any(p.is_file() for p in spool.iterdir()))
            assert notices_for(w, alice, "refunded") == []
        finally:
            stop(proc)


async def killed_after_discord_took_the_result(w: World) -> Injected:
    """Run one upscale and kill -9 the bot once Discord has taken its result (the post's
    answer never comes back); returns the member's interaction."""
    w.discord.fail(WEBHOOK_MESSAGE, APPLY_THEN_HANG, method="PATCH", files_only=True)
    proc = await w.start()
    try:
        it = await w.discord.slash("upscale", {"image": w.discord.attachment(png(), "a.png")})
        await w.discord.wait_until(lambda: bool(w.discord.hung), timeout=20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop(proc)
    return it


async def test_kill_9_after_discord_took_the_result_does_not_post_it_again(
    tmp_path: Path,
) -> None:
    """The result reached Discord but the process died before it heard back: after a
    restart the bot finds the message by its job id and charges once, posting nothing."""
    async with world(tmp_path) as w:
        it = await killed_after_discord_took_the_result(w)
        assert len(results(w)) == 1
        w.discord.clear_faults()
        proc = await w.start()
        try:
            await w.wait_settled()
            assert len(results(w)) == 1
            assert w.query("SELECT state FROM ledger_entries") == [("committed",)]
            assert w.query("SELECT status FROM jobs") == [("delivered",)]
            assert it.file(results(w)[0])
        finally:
            stop(proc)


def custom_ids(message: dict[str, Any] | None) -> list[str]:
    return [
        str(c.get("custom_id", ""))
        for row in (message or {}).get("components", [])
        for c in row.get("components", [])
    ]


async def test_a_kill_between_posting_and_recording_leaves_the_result_with_its_buttons(
    tmp_path: Path,
) -> None:
    """The process dies after Discord took the result but before it was recorded: after
    the restart the member's message is still the result, with its Delete and Compare
    buttons; no restart notice (or anything else) was put in its place."""
    async with world(tmp_path) as w:
        it = await killed_after_discord_took_the_result(w)
        w.discord.clear_faults()
        proc = await w.start()
        try:
            await w.wait_settled()
            final = it.original
            assert final is not None and final.get("attachments")
            ids = custom_ids(final)
            assert any(i.startswith("upscale:delete:") for i in ids), ids
            assert any(i.startswith("upscale:compare:") for i in ids), ids
            with_result = [n for n, e in enumerate(it.edits) if e.get("attachments")]
            assert with_result and with_result[-1] == len(it.edits) - 1, it.edits
            assert not any("continues" in str(e.get("content")) for e in it.edits)
        finally:
            stop(proc)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
async def test_twenty_jobs_in_every_stage_survive_a_restart(
    tmp_path: Path, how: signal.Signals
) -> None:
    """20 jobs queued, uploading, upscaling and delivering when the process is stopped
    (kill -9 or SIGTERM): after a restart all 20 are delivered exactly once, 20 credits
    are charged, and 1min.ai saw no feature call beyond those cut off in flight."""
    async with world(tmp_path) as w:
        w.onemin.fail("upload", "latency", times=100, seconds=0.5)
        w.onemin.upscale_delay = 1.0
        w.discord.fail(WEBHOOK_MESSAGE, HANG, method="PATCH", times=1, files_only=True)
        proc = await w.start(MAX_CONCURRENT_JOBS="4", MAX_JOBS_PER_USER="2", SHUTDOWN_GRACE="0")
        members = [w.discord.add_member(f"m{i}") for i in range(10)]
        try:
            injected = [
                await w.discord.slash(
                    "upscale", {"image": w.discord.attachment(png(), f"{i}.png")}, member=m
                )
                for m in members
                for i in range(2)
            ]
            for it in injected:
                await it.acked()

            def mixed() -> bool:
                stages = {s for (s,) in w.query(
                    "SELECT stage FROM jobs WHERE status IN ('queued', 'running')"
                )}  # fmt: skip
                return {"queued", "delivering"} <= stages and bool(
                    stages & {"uploading", "upscaling"}
                )

            await w.wait_for(mixed, timeout=30)
            in_flight = w.query(
                "SELECT COUNT(*) FROM jobs WHERE stage = 'upscaling' AND result_url IS NULL"
                " AND status = 'running'"
            )[0][0]
            assert isinstance(in_flight, int)
            proc.send_signal(how)
            await asyncio.to_thread(proc.wait, 30)
        finally:
            stop(proc)
        assert w.query("SELECT COUNT(*) FROM ledger_entries WHERE state = 'refunded'") == [(0,)]
        w.onemin.clear_faults()
        w.onemin.upscale_delay = 0
        w.discord.clear_faults()
        proc = await w.start()
        try:
            for it in injected:
                final = await it.final(timeout=60)
                assert final.get("attachments"), final
            await w.wait_settled()
            assert len(result_jobs(w)) == 20 and len(set(result_jobs(w))) == 20
            assert w.query("SELECT state, COUNT(*) FROM ledger_entries GROUP BY state") == [
                ("committed", 20)
            ]
            assert w.onemin.calls["upscale"] <= 20 + in_flight
        finally:
            stop(proc)


async def test_queued_job_cancelled_before_a_restart_stays_cancelled(tmp_path: Path) -> None:
    """A queued job cancelled with its button stays cancelled and refunded after a restart;
    1min.ai never sees it."""
    async with world(tmp_path) as w:
        upscale = w.onemin.hold("upscale")
        proc = await w.start(MAX_CONCURRENT_JOBS="1")
        try:
            bob = w.discord.bob
            await w.discord.slash("upscale", {"image": w.discord.attachment(png(), "a.png")})
            await w.wait_stage("upscaling")
            queued = await w.discord.slash(
                "upscale", {"image": w.discord.attachment(png(), "b.png")}, member=bob
            )
            await queued.wait(lambda it: has_cancel(it.original))
            assert queued.original is not None
            button = find_button(queued.original, is_cancel)
            click = await w.discord.click(queued.original, button["custom_id"], member=bob)
            await click.acked()
            await w.wait_for(
                lambda: w.query("SELECT COUNT(*) FROM jobs WHERE status = 'cancelled'") == [(1,)]
            )
            uploads = w.onemin.calls["upload"]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            stop(proc)
        upscale.release()
        proc = await w.start()
        try:
            await w.wait_settled()
            assert w.query("SELECT status FROM jobs ORDER BY created_at") == [
                ("delivered",),
                ("cancelled",),
            ]
            states = w.query("SELECT state FROM ledger_entries ORDER BY created_at")
            assert states == [("committed",), ("refunded",)]
            assert w.onemin.calls["upload"] == uploads  # b.png was never uploaded
        finally:
            stop(proc)


async def test_job_older_than_the_bound_is_refunded_at_start_with_a_notice(
    tmp_path: Path,
) -> None:
    """A job left unfinished for longer than JOB_MAX_AGE is refunded at start-up and its
    member told, instead of being run a day late."""
    async with world(tmp_path) as w:
        upscale = w.onemin.hold("upscale")
        proc = await w.start()
        try:
            it = await w.discord.slash("upscale", {"image": w.discord.attachment(png(), "a.png")})
            await w.wait_stage("upscaling")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            stop(proc)
        with sqlite3.connect(w.db_path) as conn:
            conn.execute("UPDATE jobs SET created_at = '2000-01-01 00:00:00.000000'")
        upscale.release()
        proc = await w.start()
        try:
            final = await it.final()
            assert "offline too long" in final["content"] and "refunded" in final["content"]
            assert w.query("SELECT status, error_kind FROM jobs") == [("failed", "expired")]
            assert w.query("SELECT state FROM ledger_entries") == [("refunded",)]
            assert results(w) == []
        finally:
            stop(proc)


async def test_sigterm_hands_running_jobs_back_with_a_notice(tmp_path: Path) -> None:
    """SIGTERM while a job runs: the process exits cleanly, the member is told the upscale
    will continue, nothing is refunded, and the next start finishes it."""
    async with world(tmp_path) as w:
        upscale = w.onemin.hold("upscale")
        proc = await w.start(SHUTDOWN_GRACE="0.5")
        try:
            it = await w.discord.slash("upscale", {"image": w.discord.attachment(png(), "a.png")})
            await w.wait_stage("upscaling")
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 20) == 0
            await it.wait(lambda i: "continue" in str(i.original and i.original["content"]))
            assert w.query("SELECT COUNT(*) FROM ledger_entries WHERE state = 'reserved'") == [(1,)]
            assert w.query("SELECT status FROM jobs") == [("queued",)]
            assert "Stopped cleanly" in w.log()
        finally:
            stop(proc)
        upscale.release()
        proc = await w.start()
        try:
            final = await it.final(timeout=20)
            assert final.get("attachments")
            await w.wait_settled()
            assert w.query("SELECT state FROM ledger_entries") == [("committed",)]
        finally:
            stop(proc)


async def test_sigterm_lets_a_nearly_done_job_finish(tmp_path: Path) -> None:
    """A job that finishes within the grace time is delivered and charged, not refunded."""
    async with world(tmp_path) as w:
        upscale = w.onemin.hold("upscale")
        proc = await w.start(SHUTDOWN_GRACE="20")
        try:
            it = await w.discord.slash("upscale", {"image": w.discord.attachment(png(), "a.png")})
            await w.wait_stage("upscaling")
            proc.send_signal(signal.SIGTERM)
            await w.wait_for(lambda: "Received SIGTERM" in w.log())
            upscale.release()  # the upscale ends during the grace time
            assert await asyncio.to_thread(proc.wait, 30) == 0
            final = await it.final(timeout=5)
            assert final.get("attachments")
            assert w.query("SELECT state FROM ledger_entries") == [("committed",)]
        finally:
            stop(proc)
