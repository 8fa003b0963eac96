"""Metrics and health over HTTP, end to end: the real bot with ``METRICS_PORT`` set.

Scrapes are parsed with prometheus_client's own parser, as Prometheus would read them.
The bot runs in this process (``running_bot(..., metrics_port=...)``), or as its own
process for what ``python -m bot`` does with the port (listening or not, a port in use).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bot.app.startup import EXIT_METRICS_PORT
from tests.bot_process import closed_port, run_bot_process, start_bot_process
from tests.emulators.discord import DiscordEmulator
from tests.emulators.onemin import OneMinEmulator
from tests.harness import DISCORD_TOKEN, ONEMIN_KEY, running_bot
from tests.support.images import png

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

WAIT = 15.0  # seconds a test waits for the bot to reach a state before it fails
START_TIMEOUT = 30.0  # seconds for a bot process to log in and sync its commands
TCP_LISTEN = "0A"  # the LISTEN state in /proc/net/tcp


async def fetch(url: str) -> tuple[int, str, str]:
    """GET ``url``: status, Content-Type and body."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def scrape(port: int) -> Samples:
    """Every sample of ``/metrics``, keyed by sample name and labels."""
    status, _, text = await fetch(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The series of ``name`` whose value changed, with the change."""
    keys = {labels for sample, labels in (*before, *after) if sample == name}
    changes = {
        labels: after.get((name, labels), 0.0) - before.get((name, labels), 0.0) for labels in keys
    }
    return {labels: change for labels, change in changes.items() if change}


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


async def status_becomes(url: str, status: int) -> str:
    """Poll ``url`` until it answers ``status``; its body then."""
    async with asyncio.timeout(WAIT):
        while True:
            got, _, body = await fetch(url)
            if got == status:
                return body
            await asyncio.sleep(0.05)


async def gauge_becomes(port: int, name: str, expected: float) -> None:
    """Scrape until the unlabelled gauge ``name`` reads ``expected``."""
    async with asyncio.timeout(WAIT):
        while True:
            if value(await scrape(port), name) == expected:
                return
            await asyncio.sleep(0.1)


# -- in this process -----------------------------------------------------------------------


async def scrapes_around_a_delivered_and_a_failed_upscale(
    tmp_path: Path,
) -> tuple[Samples, Samples]:
    """Scrape, upscale once (delivered) and once more (1min.ai rejects it), scrape again."""
    port = closed_port()
    async with running_bot(tmp_path, metrics_port=port) as h:
        before = await scrape(port)
        await h.upscale(png())
        h.onemin.fail("upscale", "rejected")
        await h.upscale(png(), member=h.discord.bob)
        await h.idle()
        return before, await scrape(port)


async def test_one_delivered_and_one_failed_upscale_move_the_counters_by_exactly_that(
    tmp_path: Path,
) -> None:
    """Jobs, failures, credits and 1min.ai requests each move by what two jobs did."""
    before, after = await scrapes_around_a_delivered_and_a_failed_upscale(tmp_path)
    assert moved(before, after, "upscale_jobs_total") == {
        labels(outcome="delivered"): 1,
        labels(outcome="failed"): 1,
    }
    assert moved(before, after, "upscale_failures_total") == {labels(kind="input_rejected"): 1}
    assert moved(before, after, "upscale_credits_total") == {
        labels(state="committed"): 1,
        labels(state="refunded"): 1,
    }
    assert moved(before, after, "upscale_onemin_requests_total") == {
        labels(route="assets", status="200"): 2,
        labels(route="features", status="200"): 1,
        labels(route="features", status="400"): 1,
        labels(route="download", status="200"): 1,
    }
    assert value(after, "upscale_jobs_in_flight") == 0


async def test_each_stage_a_job_went_through_is_timed_once(tmp_path: Path) -> None:
    """A delivered job adds one observation to each of the five stages; a job that failed
    while upscaling adds one to queued, uploading and upscaling only."""
    before, after = await scrapes_around_a_delivered_and_a_failed_upscale(tmp_path)
    assert moved(before, after, "upscale_stage_seconds_count") == {
        labels(stage="queued"): 2,
        labels(stage="uploading"): 2,
        labels(stage="upscaling"): 2,
        labels(stage="downloading"): 1,
        labels(stage="delivering"): 1,
    }


async def test_readyz_is_503_with_its_reason_while_the_circuit_is_open_then_200(
    tmp_path: Path,
) -> None:
    """1min.ai refuses the key: /readyz says why in one line; once a probe passes, 200."""
    port = closed_port()
    ready = f"http://127.0.0.1:{port}/readyz"
    async with running_bot(tmp_path, metrics_port=port, circuit_probe_interval=0.2) as h:
        assert (await fetch(ready))[0] == 200
        h.onemin.refuse_key(True)
        it = await h.discord.slash("upscale", {"image": h.discord.attachment(png(), "a.png")})
        body = await status_becomes(ready, 503)
        assert body.count("\n") == 1 and body.endswith("\n")
        assert body.startswith("not ready: 1min.ai circuit open for ")
        assert "it refused the API key" in body
        h.onemin.refuse_key(False)
        assert await status_becomes(ready, 200) == "ready\n"
        assert (await it.final(timeout=WAIT)).get("attachments")


async def test_circuit_gauge_is_1_while_the_circuit_is_open(tmp_path: Path) -> None:
    """upscale_circuit_open follows the shared circuit state (read at most once a second)."""
    port = closed_port()
    async with running_bot(tmp_path, metrics_port=port, circuit_probe_interval=3600) as h:
        assert value(await scrape(port), "upscale_circuit_open") == 0
        h.onemin.refuse_key(True)
        it = await h.discord.slash("upscale", {"image": h.discord.attachment(png(), "a.png")})
        await gauge_becomes(port, "upscale_circuit_open", 1)
        h.onemin.refuse_key(False)
        await h.services.circuit.close()
        await gauge_becomes(port, "upscale_circuit_open", 0)
        assert (await it.final(timeout=WAIT)).get("attachments")


async def test_healthz_answers_200(tmp_path: Path) -> None:
    """/healthz answers while the event loop runs."""
    port = closed_port()
    async with running_bot(tmp_path, metrics_port=port):
        assert await fetch(f"http://127.0.0.1:{port}/healthz") == (
            200,
            "text/plain; charset=utf-8",
            "ok\n",
        )


async def test_the_gateway_shard_shows_connected_with_its_latency(tmp_path: Path) -> None:
    """discord_connected{shard="0"} is 1 and discord_latency{shard="0"} is a number once
    the bot's heartbeat was answered."""
    port = closed_port()
    async with running_bot(tmp_path, metrics_port=port) as h:
        await h.discord.wait_until(lambda: h.bot.latency == h.bot.latency < float("inf"), WAIT)
        samples = await scrape(port)
    assert value(samples, "discord_connected", shard="0") == 1
    assert 0 <= value(samples, "discord_latency", shard="0") < float("inf")


async def test_metrics_are_served_in_the_prometheus_text_format(tmp_path: Path) -> None:
    """The scrape's Content-Type is Prometheus text 0.0.4, which the parser reads whole."""
    port = closed_port()
    async with running_bot(tmp_path, metrics_port=port):
        _, content_type, text = await fetch(f"http://127.0.0.1:{port}/metrics")
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"upscale_jobs", "upscale_db_errors"} <= names


# -- the bot as its own process (python -m bot) ----------------------------------------------


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (from /proc: its sockets' inodes)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            inodes.add(match.group(1))
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == TCP_LISTEN and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def process_env(
    tmp_path: Path, discord_emu: DiscordEmulator, onemin_emu: OneMinEmulator, **extra: str
) -> dict[str, str]:
    return {
        "DISCORD_TOKEN": DISCORD_TOKEN,
        "ONEMIN_API_KEY": ONEMIN_KEY,
        "ONEMIN_API_BASE": onemin_emu.base_url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'bot.db'}",
        "DISCORD_API_BASE": discord_emu.api_base,
        "DISCORD_GATEWAY_URL": discord_emu.gateway_url,
        "LOG_LEVEL": "INFO",
        "STARTUP_RETRY_SECONDS": "1",
        **extra,
    }


async def listening_ports_of_a_ready_bot(tmp_path: Path, **extra: str) -> set[int]:
    """Start a bot process, wait until it is ready, read its listening ports, stop it."""
    log_path = tmp_path / "bot.log"
    async with (
        DiscordEmulator(token=DISCORD_TOKEN) as discord_emu,
        OneMinEmulator(api_key=ONEMIN_KEY) as onemin_emu,
    ):
        proc = start_bot_process(process_env(tmp_path, discord_emu, onemin_emu, **extra), log_path)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while "Ready as UpscaleBot" not in log_path.read_text():
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                await asyncio.sleep(0.05)
            return listening_ports(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 20)
            assert "Traceback" not in log_path.read_text()


async def test_without_metrics_port_the_bot_listens_on_no_port(tmp_path: Path) -> None:
    """METRICS_PORT empty: the running bot process has no listening socket at all."""
    assert await listening_ports_of_a_ready_bot(tmp_path, METRICS_PORT="") == set()


async def test_with_metrics_port_the_bot_listens_on_that_port_only(tmp_path: Path) -> None:
    """METRICS_PORT set: python -m bot listens there, and nowhere else."""
    port = closed_port()
    assert await listening_ports_of_a_ready_bot(tmp_path, METRICS_PORT=str(port)) == {port}


async def test_a_metrics_port_in_use_stops_start_up_with_one_line(tmp_path: Path) -> None:
    """A port something else listens on: one line naming METRICS_PORT, exit status 7."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with (
            DiscordEmulator(token=DISCORD_TOKEN) as discord_emu,
            OneMinEmulator(api_key=ONEMIN_KEY) as onemin_emu,
        ):
            env = process_env(tmp_path, discord_emu, onemin_emu, METRICS_PORT=str(port))
            run = await run_bot_process(env)
    assert run.status == EXIT_METRICS_PORT, run.stderr
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("Cannot start")]
    assert lines == [
        f"Cannot start: METRICS_PORT {port} cannot be opened on METRICS_HOST 127.0.0.1"
        " (address already in use): choose a free port, or stop what uses it"
    ]
