"""Metrics' CPU cost: the bot's CPU per job with ``METRICS_PORT`` off and on, alternating.

Run: ``python -m bench.metrics_cost [--jobs 48] [--latency 1.0] [--concurrency 4]
[--rounds 3] [--scrape-interval 15] [--json PATH]``. Target: metrics add at most 2 %.

The workload is :mod:`bench.throughput`'s: N members each ``/upscale`` a 64x64 PNG at
once, 1min.ai answers each upscale after L seconds, K upscales at a time. The bot runs as
its own process (``tests.bot_process``: what ``python -m bot`` runs, on a fresh SQLite
database), against the Discord emulator in this process and the 1min.ai emulator in
another, so the CPU time read from ``/proc/<pid>/stat`` (user + system) is the bot's
alone, plus that of its descendants (the image worker, when it runs).

Each run starts a bot, lets it finish :data:`WARM_UP_JOBS` jobs (imports, caches, the
worker), then reads the CPU time, sends the N jobs, waits for every result and
:data:`SETTLE` seconds, and reads it again: ``cpu_ms_per_job`` is the difference over N.
With metrics on, this process scrapes ``/metrics`` every ``--scrape-interval`` seconds
during the run (default 15 s, Prometheus's default; 1 s is a stress test), so the cost
of serving scrapes is counted too. Runs alternate off/on (and on/off in the next round),
so a drift of the machine's load falls on both alike; the ratio is of the means.

CPU time is counted in clock ticks (10 ms), and a 2-core machine shared with the
emulators (and any other work) makes one run's CPU per job differ from the next by a few
percent: more than the cost being measured. So the metrics' cost is also accounted for
directly, each part measured on its own:

* ``scrape_cpu_ms``: one scrape, HTTP included, read from the bot process's CPU time
  over :data:`SCRAPE_SAMPLE` back-to-back scrapes after each "on" run (these reuse the
  fleet-wide gauges, read at most once a second);
* ``fleet_read_ms``: that read of the fleet-wide gauges from the database (jobs waiting,
  the rate window, the circuit), timed here (all threads) on a SQLite database like the
  bot's; a scrape at an interval of a second or more pays it every time;
* ``hooks_us_per_job``: the queue's and the 1min.ai client's calls into the metrics for
  one job (a delivered job's stages, places in line and five requests), timed here;
* ``probe_ms_per_s``: the event-loop lag probe's wake-ups (one a second), timed here;

and ``accounted_pct`` adds them up for a job of this workload at a scrape interval:
``(hooks + ((scrape + fleet read) / interval + probe) * elapsed / N) / CPU per job with
metrics off``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.botproc import stop
from bench.common import descendants, emit, onemin_in_subprocess, table
from bot.app import metrics_http
from bot.app.metrics import Metrics, probe_loop_lag
from bot.app.metrics_http import MetricsEndpoint
from bot.app.services import open_services
from bot.app.settings import Secret, Settings
from bot.jobs.metrics import Outcome
from bot.jobs.model import Job, PreparedInfo, Source, Stage
from tests.bot_process import closed_port, start_bot_process
from tests.emulators.discord import DiscordEmulator
from tests.harness import DISCORD_TOKEN, ONEMIN_KEY
from tests.support.images import png

IMAGE = png((64, 64))
WARM_UP_JOBS = 4
START_TIMEOUT = 60.0  # seconds for the bot process to connect and sync its commands
JOB_TIMEOUT = 600.0  # seconds for every result of a run
SETTLE = 1.0  # seconds after the last result before the CPU time is read again
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # units of utime/stime in /proc/<pid>/stat
SCRAPE_SAMPLE = 200  # back-to-back scrapes whose CPU cost is read from the bot process
HOOK_SAMPLE = 20_000  # simulated jobs whose metrics calls are timed
PROBE_SAMPLE = 3.0  # seconds the lag probe runs alone while its CPU time is read
PROBE_ROUNDS = 3  # samples with and without the probe, alternating
PLACES_IN_LINE = 12  # queued reports a job of this workload gets while it waits (~N/K)
PROMETHEUS_INTERVAL = 15.0  # seconds: Prometheus's default scrape interval


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its live descendants, seconds."""
    total = 0
    for each in [pid, *descendants(pid)]:
        try:
            stat = Path(f"/proc/{each}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLOCK_TICKS


async def scrape_every(port: int, interval: float, stopping: asyncio.Event) -> int:
    """GET /metrics every ``interval`` s until ``stopping``; returns how many were served."""
    served = 0
    async with aiohttp.ClientSession() as session:
        while not stopping.is_set():
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                await response.read()
                served += response.status == 200
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)
    return served


async def scrape_cost_ms(pid: int, port: int) -> float:
    """CPU milliseconds the bot process spends on one scrape (HTTP included)."""
    async with aiohttp.ClientSession() as session:
        before = cpu_seconds(pid)
        for _ in range(SCRAPE_SAMPLE):
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                await response.read()
        return (cpu_seconds(pid) - before) * 1000 / SCRAPE_SAMPLE


def hooks_us_per_job() -> float:
    """CPU microseconds of the metrics calls one delivered job makes (stages, places in
    line, 1min.ai requests, end)."""
    metrics = Metrics()
    prepared = PreparedInfo("a.png", "png", (64, 64), (64, 64), "png", (), 100)
    source = Source("https://cdn.example/a.png", "a.png")
    context = ""  # the front end's context: the metrics never read it
    jobs = [
        Job(f"{i:032x}", 1, 2, 3, "png", source, context, "r", time.time(), prepared=prepared)
        for i in range(HOOK_SAMPLE)
    ]
    started = time.thread_time()
    for job in jobs:
        for _ in range(PLACES_IN_LINE):
            metrics.job_stage(job, Stage.QUEUED)  # places in line (before the claim)
        metrics.job_started(job)
        metrics.job_stage(job, Stage.WAITING)
        metrics.job_stage(job, Stage.UPLOADING)
        metrics.onemin_request("assets", 200)
        metrics.job_stage(job, Stage.UPSCALING)
        metrics.onemin_request("features", 200)
        metrics.job_stage(job, Stage.DOWNLOADING)
        metrics.onemin_request("download", 200)
        metrics.job_stage(job, Stage.DELIVERING)
        metrics.job_ended(job.id, Outcome.DELIVERED, credits=1)
        metrics.job_left(job.id)
    return (time.thread_time() - started) * 1e6 / HOOK_SAMPLE


async def fleet_read_ms() -> float:
    """CPU milliseconds (every thread of this process) of one read of the fleet gauges."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            discord_token=Secret(DISCORD_TOKEN),
            onemin_api_key=Secret(ONEMIN_KEY),
            database_url=Secret(f"sqlite:///{Path(tmp) / 'bot.db'}"),
            spool_dir=Path(tmp) / "spool",
            metrics_port=closed_port(),
        )
        async with aiohttp.ClientSession() as session, open_services(settings, session) as svc:
            endpoint = MetricsEndpoint.for_settings(settings, svc, dict)
            assert endpoint is not None
            cache, metrics_http.FLEET_CACHE_SECONDS = metrics_http.FLEET_CACHE_SECONDS, 0.0
            try:
                await endpoint.refresh_fleet()  # warm
                started = time.process_time()
                for _ in range(SCRAPE_SAMPLE):
                    await endpoint.refresh_fleet()
                spent = time.process_time() - started
            finally:
                metrics_http.FLEET_CACHE_SECONDS = cache
    return spent * 1000 / SCRAPE_SAMPLE


async def probe_ms_per_second() -> float:
    """CPU milliseconds a second of the lag probe, alone in this process's loop: the
    loop's CPU with the probe less its CPU without it (an idle loop's thread time is not
    0 on this VM: ~1 ms a second), over ``PROBE_ROUNDS`` alternating samples."""

    async def sample(with_probe: bool) -> float:
        probe = asyncio.create_task(probe_loop_lag(Metrics())) if with_probe else None
        started = time.thread_time()
        await asyncio.sleep(PROBE_SAMPLE)
        spent = time.thread_time() - started
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        return spent

    with_probe = without = 0.0
    for _ in range(PROBE_ROUNDS):
        without += await sample(False)
        with_probe += await sample(True)
    return max(0.0, with_probe - without) * 1000 / (PROBE_SAMPLE * PROBE_ROUNDS)


async def upscale_all(discord_emu: DiscordEmulator, count: int, prefix: str) -> int:
    """``count`` members upscale at once; returns how many results were delivered."""
    members = [discord_emu.add_member(f"{prefix}{i}") for i in range(count)]
    its = await asyncio.gather(
        *(
            discord_emu.slash(
                "upscale", {"image": discord_emu.attachment(IMAGE, "a.png")}, member=m
            )
            for m in members
        )
    )
    finals = await asyncio.gather(*(it.final(timeout=JOB_TIMEOUT) for it in its))
    return sum(bool(f.get("attachments")) for f in finals)


async def one_run(
    base_url: str, metrics: bool, jobs: int, concurrency: int, scrape_interval: float
) -> dict[str, Any]:
    """Start a bot (metrics on or off), warm it up, measure ``jobs`` jobs, stop it."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        log_path = tmp_path / "bot.log"
        port = closed_port()
        async with DiscordEmulator(token=DISCORD_TOKEN) as discord_emu:
            env = {
                "DISCORD_TOKEN": DISCORD_TOKEN,
                "ONEMIN_API_KEY": ONEMIN_KEY,
                "ONEMIN_API_BASE": base_url,
                "DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'bot.db'}",
                "DISCORD_API_BASE": discord_emu.api_base,
                "DISCORD_GATEWAY_URL": discord_emu.gateway_url,
                "LOG_LEVEL": "WARNING",
                "MAX_CONCURRENT_JOBS": str(concurrency),
                "METRICS_PORT": str(port) if metrics else "",
            }
            proc = start_bot_process(env, log_path)
            try:
                await discord_emu.wait_until(
                    lambda: bool(discord_emu.global_commands) or proc.poll() is not None,
                    START_TIMEOUT,
                )
                if proc.poll() is not None:
                    raise AssertionError(f"the bot did not start:\n{log_path.read_text()}")
                await discord_emu.wait_connected()
                await upscale_all(discord_emu, WARM_UP_JOBS, "w")
                await asyncio.sleep(SETTLE)
                stopping = asyncio.Event()
                scraper = (
                    asyncio.create_task(scrape_every(port, scrape_interval, stopping))
                    if metrics
                    else None
                )
                cpu_before, started = cpu_seconds(proc.pid), time.perf_counter()
                delivered = await upscale_all(discord_emu, jobs, "m")
                elapsed = time.perf_counter() - started
                await asyncio.sleep(SETTLE)
                cpu_after = cpu_seconds(proc.pid)
                stopping.set()
                scrapes = await scraper if scraper is not None else 0
                scrape_ms = await scrape_cost_ms(proc.pid, port) if metrics else None
            finally:
                await stop(proc)
        log = log_path.read_text(errors="replace")
        if "ERROR" in log or "Traceback" in log:
            raise AssertionError(f"the bot logged errors:\n{log}")
    return {
        "metrics": "on" if metrics else "off",
        "delivered": delivered,
        "elapsed_s": elapsed,
        "cpu_s": cpu_after - cpu_before,
        "cpu_ms_per_job": (cpu_after - cpu_before) * 1000 / jobs,
        "scrapes": scrapes,
        "scrape_cpu_ms": scrape_ms,
    }


async def run(
    jobs: int = 48,
    latency: float = 1.0,
    concurrency: int = 4,
    rounds: int = 3,
    scrape_interval: float = PROMETHEUS_INTERVAL,
) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    with onemin_in_subprocess(ONEMIN_KEY, upscale_delay=latency) as base_url:
        for round_index in range(rounds):
            order = (False, True) if round_index % 2 == 0 else (True, False)
            for metrics in order:
                result = await one_run(base_url, metrics, jobs, concurrency, scrape_interval)
                result["round"] = round_index + 1
                runs.append(result)
                print(table([result], list(result)), flush=True)
    off = [float(r["cpu_ms_per_job"]) for r in runs if r["metrics"] == "off"]
    on = [float(r["cpu_ms_per_job"]) for r in runs if r["metrics"] == "on"]
    ratio = statistics.mean(on) / statistics.mean(off)
    scrape_ms = statistics.mean(float(r["scrape_cpu_ms"]) for r in runs if r["metrics"] == "on")
    hooks_us = hooks_us_per_job()
    read_ms = await fleet_read_ms()
    probe_ms = await probe_ms_per_second()
    seconds_per_job = statistics.mean(float(r["elapsed_s"]) for r in runs) / jobs

    def accounted(interval: float) -> float:
        per_scrape = scrape_ms + read_ms
        per_job_ms = hooks_us / 1000 + (per_scrape / interval + probe_ms) * seconds_per_job
        return per_job_ms / statistics.mean(off) * 100

    return {
        "jobs": jobs,
        "latency_s": latency,
        "concurrency": concurrency,
        "rounds": rounds,
        "scrape_interval_s": scrape_interval,
        "off_cpu_ms_per_job": statistics.mean(off),
        "on_cpu_ms_per_job": statistics.mean(on),
        "off_range_ms": f"{min(off):.2f}-{max(off):.2f}",
        "on_range_ms": f"{min(on):.2f}-{max(on):.2f}",
        "ratio_on_off": ratio,
        "overhead_pct": (ratio - 1) * 100,
        "scrape_cpu_ms": scrape_ms,
        "fleet_read_ms": read_ms,
        "hooks_us_per_job": hooks_us,
        "probe_ms_per_s": probe_ms,
        "accounted_pct": accounted(scrape_interval),
        "accounted_pct_at_15s": accounted(PROMETHEUS_INTERVAL),
        "accounted_pct_at_1s": accounted(1.0),
        "runs": runs,
    }


def report(result: dict[str, Any]) -> str:
    summary = {k: v for k, v in result.items() if k != "runs"}
    columns = ["metrics", "round", "delivered", "elapsed_s", "cpu_s", "cpu_ms_per_job", "scrapes"]
    parts = ("scrape_cpu", "fleet_read", "hooks", "probe", "acc")
    measured = [k for k in summary if not k.startswith(parts)]
    accounted = [k for k in summary if k not in measured]
    return "\n\n".join(
        (
            table(result["runs"], columns),
            table([summary], measured),
            table([summary], accounted),
        )
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scrape-interval", type=float, default=PROMETHEUS_INTERVAL)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = await run(args.jobs, args.latency, args.concurrency, args.rounds, args.scrape_interval)
    emit("metrics_cost", result, args.json, report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
