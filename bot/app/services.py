"""The bot's shared services, opened and closed together.

``python -m bot`` and the test harness both build them here, so the bot under test is
wired exactly like the one owners run.
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bot.app.metrics import Metrics
from bot.app.settings import Settings
from bot.db import Database, open_database
from bot.db.signals import Signals
from bot.failures import FailureKind
from bot.images import ImageLimits, probe_png
from bot.images.download import download_to
from bot.images.workers import ImageWorkers
from bot.jobs import JobQueue, QueueConfig, instance_name
from bot.jobs.metrics import NO_JOB_METRICS
from bot.ledger import Ledger
from bot.onemin.circuit import Circuit
from bot.onemin.client import OneMinClient
from bot.onemin.pacing import WINDOW_MARGIN, RateGate
from bot.retry import Backoff


@dataclass(frozen=True, slots=True)
class Services:
    """Everything the cogs use besides Discord itself."""

    db: Database
    ledger: Ledger
    onemin: OneMinClient
    gate: RateGate
    circuit: Circuit
    queue: JobQueue
    image_workers: ImageWorkers
    signals: Signals
    metrics: Metrics | None = None  # with METRICS_PORT only (see bot.app.metrics_http)


def build_ledger(settings: Settings, db: Database) -> Ledger:
    """The ledger on ``db`` with the owner's defaults and total budget."""
    return Ledger(
        db,
        default_limit=settings.default_user_limit,
        default_period=settings.limit_period,
        total_budget=settings.total_budget,
        total_budget_period=settings.total_budget_period,
    )


def queue_config(settings: Settings) -> QueueConfig:
    """The owner's settings (see ``.env.example``) as the job queue's configuration."""
    timings = settings.timings
    return QueueConfig(
        max_concurrent=settings.max_concurrent_jobs,
        max_per_member=settings.max_jobs_per_user,
        cost=settings.upscale_cost,
        limits=ImageLimits(max_pixels=settings.max_input_pixels, max_side=settings.max_input_side),
        lease=settings.job_lease,
        busy_timeout=settings.busy_timeout,
        max_age=settings.job_max_age,
        poll_interval=timings.job_poll_interval,
        circuit_give_up=settings.circuit_give_up,
        retention_days=settings.job_retention_days,
        rate_backoff=Backoff(timings.rate_backoff_base, timings.rate_backoff_cap),
    )


def spool_dir(settings: Settings, db: Database) -> Path:
    """Where this process spools downloads: in a fleet, a folder of its own.

    A process clears its spool at start-up; processes of a fleet sharing a disk must not
    clear each other's downloads in flight.
    """
    if db.engine == "sqlite":
        return settings.spool_dir
    return settings.spool_dir / re.sub(r"[^A-Za-z0-9_.-]", "_", instance_name(settings.shard_ids))


async def probe_onemin(onemin: OneMinClient, reason: FailureKind) -> None:
    """One cheap check that 1min.ai accepts the bot again (raises while it does not).

    A refused key shows on a tiny asset upload; an empty account only on a feature call,
    so then the probe also upscales the probe image (:mod:`bot.images.probe`, the
    cheapest upscale there is).
    """
    asset = await onemin.upload(probe_png(), "probe.png", "image/png")
    if reason is FailureKind.OUT_OF_CREDITS:
        await onemin.upscale(asset, "png")


@asynccontextmanager
async def open_services(
    settings: Settings, session: aiohttp.ClientSession
) -> AsyncIterator[Services]:
    """Open the database and build the ledger, 1min.ai client and job queue (and, with
    ``METRICS_PORT``, the metrics they feed).

    The HTTP session belongs to the caller. The database is closed on exit; the queue is
    shut down by the bot (it needs Discord to tell members about stopped jobs).
    """
    db = await open_database(settings.database_url.get())
    metrics = Metrics() if settings.metrics_port is not None else None
    instance = instance_name(settings.shard_ids)
    image_workers = ImageWorkers()
    signals = Signals(db)
    try:
        ledger = build_ledger(settings, db)
        gate = RateGate(
            db,
            settings.onemin_requests_per_minute,
            window=settings.onemin_rate_window + WINDOW_MARGIN,
        )
        onemin = OneMinClient(
            session,
            settings.onemin_api_key.get(),
            base_url=settings.onemin_api_base,
            result_hosts=settings.result_hosts,
            upscale_timeout=settings.upscale_timeout,
            backoff_base=settings.timings.onemin_backoff_base,
            before_request=gate.acquire,
            retry_rate_limited=False,  # the queue waits in line and tries again
            on_request=None if metrics is None else metrics.onemin_request,
        )
        circuit = Circuit(
            db,
            probe=functools.partial(probe_onemin, onemin),
            probe_interval=settings.circuit_probe_interval,
            check_interval=settings.timings.circuit_check_interval,
            signals=signals,
        )
        queue = JobQueue(
            db=db,
            ledger=ledger,
            onemin=onemin,
            spool_dir=spool_dir(settings, db),
            config=queue_config(settings),
            instance=instance,
            circuit=circuit,
            image_workers=image_workers,
            fetch_source=functools.partial(download_to, session),
            signals=signals,
            metrics=NO_JOB_METRICS if metrics is None else metrics,
        )
        yield Services(
            db=db,
            ledger=ledger,
            onemin=onemin,
            gate=gate,
            circuit=circuit,
            queue=queue,
            image_workers=image_workers,
            signals=signals,
            metrics=metrics,
        )
    finally:
        await image_workers.close()
        await signals.close()
        await db.close()
