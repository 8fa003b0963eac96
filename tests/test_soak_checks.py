"""The soak's checks (bench/soak.py) on synthetic data, and the records they read.

The soak runs outside the suite (minutes, a fleet, faults); these show that each of its
checks fails on what it is meant to catch (a doubled delivery, an overwritten result, a
traceback, a member charged for a failure, an upscale too many, a process that died by
itself, a reply left thinking) and passes on a clean run, so that it cannot pass
silently. The last tests show that the emulators record what the checks read: every
version of a message, and the 1min.ai calls in flight by the caller's address.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bench.soak import (
    Ask,
    Exit,
    JobRow,
    Kill,
    LedgerRow,
    check_ledger,
    check_outcomes,
    check_overwrites,
    check_processes,
    check_tracebacks,
    check_upscales,
    idle,
    local_ports,
    pid_of,
)
from tests.emulators.discord.history import MessageVersion, RecordingDiscordEmulator
from tests.emulators.onemin import OneMinEmulator
from tests.support.images import png

GUILD, MEMBER = 100, 200
JOB_A = "0a1b2c3d" + "e" * 24
JOB_B = "9f8e7d6c" + "a" * 24
LOG_LINE = "2026-12-07 23:40:13,123 INFO     bot.jobs.queue: Job 0a1b2c3d… guild 100: upscaling\n"


def job(job_id: str, status: str = "delivered", message_id: int = 1) -> JobRow:
    return JobRow(job_id, GUILD, MEMBER, status, None, f"r-{job_id[:8]}", message_id, 1)


def entry(job_id: str, state: str = "committed") -> LedgerRow:
    return LedgerRow(f"r-{job_id[:8]}", GUILD, MEMBER, 1, state, job_id)


def result(message_id: int, job_id: str, filename: str = "a_4x.png") -> dict[str, Any]:
    """A message showing ``job_id``'s result, as the bot posts it."""
    return {
        "id": str(message_id),
        "content": f"<@{MEMBER}>",
        "attachments": [{"id": "1", "filename": filename, "size": 1234}],
        "embeds": [{"title": "Upscaled 4×", "footer": {"text": f"Job {job_id[:8]}"}}],
        "components": [],
    }


def history(*messages: dict[str, Any]) -> list[MessageVersion]:
    return [MessageVersion(float(i), m) for i, m in enumerate(messages)]


def thinking(message_id: int) -> dict[str, Any]:
    return {"id": str(message_id), "content": "", "attachments": [], "embeds": []}


def asked(message_id: int, content: str = "") -> Ask:
    return Ask(message_id, 0.0, not content.startswith(("⏳", "⚙️")) and bool(content), content)


# -- one outcome per job -----------------------------------------------------------------


def test_one_result_post_per_delivered_job_passes() -> None:
    """A job delivered once, its result in its reply: the outcome check passes."""
    versions = {1: history(thinking(1), result(1, JOB_A))}
    check = check_outcomes([job(JOB_A)], 0, versions, [asked(1, "<@200>")])
    assert check.passed, check.line()


def test_a_result_posted_in_two_messages_fails_the_outcome_check() -> None:
    """A doubled delivery (the same job's result in a second message) is caught."""
    versions = {
        1: history(thinking(1), result(1, JOB_A)),
        2: history(result(2, JOB_A)),
    }
    check = check_outcomes([job(JOB_A)], 0, versions, [asked(1, "<@200>")])
    assert not check.passed
    assert "1 posted more than once" in check.figures


def test_a_reply_left_in_progress_fails_the_outcome_check() -> None:
    """An acknowledged reply that never got past a progress line is caught."""
    versions = {1: history(thinking(1), result(1, JOB_A))}
    asks = [asked(1, "<@200>"), asked(2, "⚙️ Upscaling 4×… (requested now)")]
    check = check_outcomes([job(JOB_A)], 0, versions, asks)
    assert not check.passed
    assert "1 replies left thinking or in progress" in check.figures


def test_a_result_posted_for_a_failed_job_fails_the_outcome_check() -> None:
    """A result on Discord for a job the database failed is caught."""
    versions = {1: history(result(1, JOB_A))}
    check = check_outcomes([job(JOB_A, "failed")], 0, versions, [])
    assert not check.passed
    assert "1 posted but not delivered" in check.figures


# -- the ledger ----------------------------------------------------------------------------


def test_a_member_charged_for_a_failed_job_fails_the_ledger_check() -> None:
    """Credits committed for a job that failed: the member's ledger is off."""
    jobs = [job(JOB_A), job(JOB_B, "failed")]
    entries = [entry(JOB_A), entry(JOB_B, "committed")]
    check = check_ledger(jobs, entries, 1, {(GUILD, MEMBER): 2})
    assert not check.passed
    assert "1 members off" in check.figures and "1 jobs settled otherwise" in check.figures


def test_a_ledger_matching_the_deliveries_passes() -> None:
    """One delivery committed, one failure refunded, counters agreeing: it passes."""
    jobs = [job(JOB_A), job(JOB_B, "failed")]
    entries = [entry(JOB_A), entry(JOB_B, "refunded")]
    check = check_ledger(jobs, entries, 1, {(GUILD, MEMBER): 1})
    assert check.passed, check.line()


# -- 1min.ai upscales ------------------------------------------------------------------------


def test_an_upscale_beyond_deliveries_and_kills_fails() -> None:
    """Two upscales for one delivery and one call in flight at a kill: one too many."""
    kills = [Kill(0.0, 0, 123, 1, (JOB_A,))]
    assert check_upscales(2, 1, kills).passed
    check = check_upscales(3, 1, kills)
    assert not check.passed and ": 1 more;" in check.figures


def test_a_job_upscaled_twice_with_no_kill_is_named() -> None:
    """The figures name a job called again that no killed process held."""
    jobs = [
        dataclasses.replace(job(JOB_A), upscalings=2),
        dataclasses.replace(job(JOB_B), upscalings=2),
    ]
    check = check_upscales(2, 2, [Kill(0.0, 0, 123, 0, (JOB_B,))], jobs)
    assert "2 jobs upscaling more than once, 1 of them held by no killed process" in check.figures
    assert f"job {JOB_A[:8]} upscaling 2 times" in check.figures


def test_a_job_failed_after_upscaling_is_named() -> None:
    """A job that reached "upscaling" and then failed is named as a possible extra call."""
    jobs = [job(JOB_A), dataclasses.replace(job(JOB_B, "failed"), error_kind="bug")]
    check = check_upscales(2, 1, [], jobs)
    assert not check.passed
    assert f"1 not delivered after upscaling (e.g. job {JOB_B[:8]} failed (bug))" in check.figures


# -- no result overwritten -------------------------------------------------------------------


def test_a_result_replaced_by_a_later_edit_fails() -> None:
    """A progress line edited over a posted result is caught."""
    late = thinking(1) | {"content": "⚙️ Upscaling 4×… (requested now)"}
    versions = {1: history(thinking(1), result(1, JOB_A), late)}
    check = check_overwrites(versions)
    assert not check.passed
    assert "1 changed afterwards" in check.figures


def test_a_result_posted_again_over_itself_fails() -> None:
    """The same job's result edited in again (a new file) counts as overwritten."""
    versions = {1: history(result(1, JOB_A), result(1, JOB_A, filename="again_4x.png"))}
    assert not check_overwrites(versions).passed


def test_a_result_whose_buttons_change_is_not_overwritten() -> None:
    """Buttons are not the result: an edit of its components alone passes."""
    edited = result(1, JOB_A) | {"components": [{"type": 1, "components": []}]}
    check = check_overwrites({1: history(result(1, JOB_A), edited)})
    assert check.passed, check.line()


# -- logs and processes ----------------------------------------------------------------------


def test_a_traceback_in_a_process_log_fails_and_is_named() -> None:
    """A traceback anywhere in a process's output is caught, with its exception line."""
    trace = (
        "Traceback (most recent call last):\n"
        '  File "bot/jobs/runner.py", line 10, in run\n'
        "    await self.store.advance(job)\n"
        "ConnectionResetError: [Errno 104] Connection reset by peer\n"
    )
    check = check_tracebacks({"bot0-1.log": LOG_LINE, "bot1-1.log": LOG_LINE + trace})
    assert not check.passed
    assert "1 tracebacks in 1 of 2" in check.figures and "ConnectionResetError x1" in check.figures


def test_logs_without_a_traceback_pass() -> None:
    check = check_tracebacks({"bot0-1.log": LOG_LINE})
    assert check.passed, check.line()


def test_a_process_that_exited_by_itself_fails() -> None:
    """An exit the soak did not cause is caught, even though it was restarted."""
    check = check_processes([Exit(1.0, 2, 4242, 5)], 4, 0, 3, 3)
    assert not check.passed and "shard 2 (pid 4242) status 5" in check.figures
    assert check_processes([], 4, 1, 3, 3).passed


def test_a_shard_not_connected_at_the_end_fails() -> None:
    assert not check_processes([], 3, 0, 2, 3).passed


def test_a_process_up_for_the_last_minute_without_a_claim_is_named() -> None:
    """Idle through the last minute of traffic: named; started within it: not."""
    last = {0: 10, 1: 11, 2: 12}
    born = {10: 0.0, 11: 0.0, 12: 950.0}
    claims = {pid_of("vm/0:10.a1b2c3") or 0: 990.0, pid_of("vm/1:11.d4e5f6") or 0: 900.0}
    assert idle(last, born, claims, 1000.0) == ["shard 1 (pid 11)"]


# -- what the checks read --------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_every_version_of_an_edited_message_is_kept(http: aiohttp.ClientSession) -> None:
    """The recording emulator keeps a message as posted and as edited, in order."""
    async with RecordingDiscordEmulator(token="history-token") as emu:
        headers = {"Authorization": "Bot history-token"}
        base = f"{emu.api_base}/channels/{emu.channel.id}/messages"
        async with http.post(base, json={"content": "first"}, headers=headers) as r:
            message_id = int((await r.json())["id"])
        async with http.patch(f"{base}/{message_id}", json={"content": "second"}, headers=headers):
            pass
        contents = [v.message["content"] for v in emu.versions[message_id]]
    assert contents == ["first", "second"]


async def test_upscale_calls_in_flight_are_counted_by_the_callers_address(
    http: aiohttp.ClientSession,
) -> None:
    """A held upscale call is listed under a port of this process (as /proc sees it),
    and no longer once answered."""
    async with OneMinEmulator("flight-key") as emu:
        form = aiohttp.FormData()
        form.add_field("asset", png((40, 40)), filename="a.png", content_type="image/png")
        api = {"API-KEY": "flight-key"}
        async with http.post(f"{emu.base_url}/api/assets", data=form, headers=api) as r:
            path = (await r.json())["fileContent"]["path"]
        hold = emu.hold("upscale")
        body = {
            "type": "IMAGE_UPSCALER",
            "model": "stable-image",
            "promptObject": {"imageUrl": path, "output_format": "png"},
        }

        async def call() -> int:
            async with http.post(f"{emu.base_url}/api/features", json=body, headers=api) as r:
                return r.status

        task = asyncio.create_task(call())
        await hold.reached()
        ((host, port),) = emu.features_in_flight_from
        assert host == "127.0.0.1" and port in local_ports(os.getpid())
        hold.release()
        assert await task == 200
        assert not emu.features_in_flight_from


def test_local_ports_lists_a_connection_of_this_process() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        try:
            assert client.getsockname()[1] in local_ports(os.getpid())
        finally:
            client.close()
