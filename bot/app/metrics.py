"""The bot's Prometheus metrics: the table of ``docs/metrics.md``, in a registry of its own.

One :class:`Metrics` per bot holds every series of the table, with exactly those names,
types and labels, plus prometheus_client's process, platform and garbage-collector
collectors, all in a :class:`~prometheus_client.CollectorRegistry` of its own (not the
library's global one), so several bots in one process (tests, benchmarks) do not collide.

Who feeds what:

* the job queue, through the four calls of :class:`bot.jobs.metrics.JobMetrics` (jobs
  ended, failures, stage times, credits settled, jobs in flight);
* the 1min.ai client, through its ``on_request`` hook (:meth:`Metrics.onemin_request`);
* the database layer's outage reporter (:mod:`bot.db.outages`), which tells every
  listener of the process the kind of each outage a caller survived: a Metrics subscribes
  itself (weakly: a bot's metrics go with the bot) to :meth:`Metrics.db_error`. Being the
  process's, two bots in one process (tests) both count them;
* the metrics endpoint (:mod:`bot.app.metrics_http`), just before it renders a scrape: the
  fleet-wide gauges read from the database (:meth:`Metrics.set_fleet`) and the gateway
  shards' state (:meth:`Metrics.set_gateway`);
* :func:`probe_loop_lag`, a light task in the bot's loop (``upscale_event_loop_lag_seconds``).

Labels carry only small fixed sets (outcomes, failure kinds, stages, routes, HTTP
statuses, credit states, shard numbers, database outage kinds): never a member, guild or
job id. Everything here is cheap (a counter increment takes a lock for a moment) and
imports nothing from Discord.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from bot.db.outages import subscribe_outages
from bot.db.transient import DbOutageKind
from bot.failures import FailureKind
from bot.frontend.gateway import ShardStatus
from bot.jobs.metrics import Outcome
from bot.jobs.model import Job, Stage
from bot.onemin.client import ROUTE_ASSETS, ROUTE_DOWNLOAD, ROUTE_FEATURES, ROUTE_RESULTS

__all__ = [
    "CONTENT_TYPE",
    "CREDIT_STATES",
    "ONEMIN_ROUTES",
    "STAGES",
    "Metrics",
    "ShardStatus",
    "probe_loop_lag",
]

# What a scrape answers with: the Prometheus text format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The stages timed by upscale_stage_seconds (WAITING is shown to members, not a stage
# of its own: a wait for a slot counts as queued, a wait for the rate window as the
# stage it interrupts).
STAGES: tuple[Stage, ...] = (
    Stage.QUEUED,
    Stage.UPLOADING,
    Stage.UPSCALING,
    Stage.DOWNLOADING,
    Stage.DELIVERING,
)
# Histogram buckets, seconds: from a delivery's fraction of a second to a queue's hour.
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
ONEMIN_ROUTES = (ROUTE_ASSETS, ROUTE_FEATURES, ROUTE_RESULTS, ROUTE_DOWNLOAD)
NO_ANSWER = "error"  # the status label of a request that got no HTTP answer
CREDIT_STATES = ("committed", "refunded")
# A job's outcome -> the credit state its settlement moved its credits to.
_CREDIT_STATE = {
    Outcome.DELIVERED: "committed",
    Outcome.FAILED: "refunded",
    Outcome.CANCELLED: "refunded",
}
# Failures counted by upscale_failures_total (a cancel is an outcome, not a failure).
FAILURE_KINDS = tuple(kind for kind in FailureKind if kind is not FailureKind.CANCELLED)

# Seconds the loop-lag probe sleeps between wake-ups. Each wake-up of an idle loop costs
# about 0.5-0.9 ms of CPU here (bench.metrics_cost): at a bot CPU of ~17 ms per job,
# twice a second was over 2 % of it, so once a second.
LAG_PROBE_INTERVAL = 1.0
LAG_WINDOW_SAMPLES = 5  # the gauge shows the worst of the last 5 wake-ups (5 s)


@dataclass(slots=True)
class _Run:
    """A job this process works on: the stage it is in, since when (monotonic seconds)."""

    stage: Stage | None  # None once the job was settled
    since: float


class Metrics:
    """Every series of ``docs/metrics.md``'s table; see the module docstring."""

    def __init__(self) -> None:
        # No ``*_created`` series beside every counter and histogram: in the text format
        # they are separate series nobody asked for, and a sixth of each scrape's work.
        # (A switch of the library, for the whole process: the bot's registries only.)
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        # The library's defaults, on this registry instead of the global one.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        counter = functools.partial(Counter, registry=registry)
        gauge = functools.partial(Gauge, registry=registry)
        self.jobs = counter("upscale_jobs_total", "Jobs ended by this process.", ["outcome"])
        self.failures = counter("upscale_failures_total", "Failed jobs by why.", ["kind"])
        self.queue_depth = gauge("upscale_queue_depth", "Jobs waiting, fleet-wide.")
        self.in_flight = gauge("upscale_jobs_in_flight", "Jobs this process is working on.")
        self.stage_seconds = Histogram(
            "upscale_stage_seconds",
            "Time spent in each stage.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.onemin_requests = counter(
            "upscale_onemin_requests_total",
            "Calls to 1min.ai, probes included.",
            ["route", "status"],
        )
        self.credits = counter(
            "upscale_credits_total", "Credits settled by this process.", ["state"]
        )
        self.circuit_open = gauge(
            "upscale_circuit_open", "1 while the bot has stopped calling 1min.ai, else 0."
        )
        self.rate_window_used = gauge(
            "upscale_rate_window_used", "1min.ai requests in the current window, fleet-wide."
        )
        self.loop_lag = gauge(
            "upscale_event_loop_lag_seconds", "How late the event loop ran a timer, lately."
        )
        self.discord_connected = gauge(
            "discord_connected", "1 while that gateway shard is connected, else 0.", ["shard"]
        )
        self.discord_latency = gauge(
            "discord_latency", "That shard's heartbeat latency, seconds.", ["shard"]
        )
        self.db_errors = counter(
            "upscale_db_errors_total",
            "Database outages this process survived, by kind.",
            ["kind"],
        )
        # Every fixed label value exists from the start (at 0), so dashboards and rate()
        # see a series before its first event; the children are kept, since looking one
        # up by its labels costs more than the increment itself.
        self._outcomes = {outcome: self.jobs.labels(outcome.value) for outcome in Outcome}
        self._kinds: dict[FailureKind, Counter] = {
            kind: self.failures.labels(kind.value) for kind in FAILURE_KINDS
        }
        self._stages = {stage: self.stage_seconds.labels(stage.value) for stage in STAGES}
        self._credit_states = {state: self.credits.labels(state) for state in CREDIT_STATES}
        self._db_kinds = {kind: self.db_errors.labels(kind.value) for kind in DbOutageKind}
        self._requests: dict[tuple[str, int | None], Counter] = {}
        self._runs: dict[str, _Run] = {}
        self._lags: deque[float] = deque(maxlen=LAG_WINDOW_SAMPLES)
        subscribe_outages(self.db_error, weak=True)

    # -- the job queue (bot.jobs.metrics.JobMetrics) -------------------------------------

    def job_started(self, job: Job) -> None:
        """Start timing ``job``'s stage. A job never given an upscale slot has been queued
        since it was accepted (here or in another process); any other stage is timed from
        now (the time it spent there before a restart or a takeover is not known)."""
        now = time.monotonic()
        since = now
        if job.stage is Stage.QUEUED:
            since = now - max(0.0, time.time() - job.created_at)
        self._runs[job.id] = _Run(job.stage, since)
        self.in_flight.set(len(self._runs))

    def job_stage(self, job: Job, stage: Stage) -> None:
        """Close the previous stage's time when ``job`` moves on to a timed stage."""
        run = self._runs.get(job.id)
        if run is None or run.stage is None or stage not in STAGES or stage is run.stage:
            return
        now = time.monotonic()
        self._observe(run, now)
        run.stage, run.since = stage, now

    def job_ended(
        self, job_id: str, outcome: Outcome, kind: FailureKind | None = None, credits: int = 0
    ) -> None:
        """Count the end, its failure kind and its credits; close the last stage's time."""
        self._outcomes[outcome].inc()
        if outcome is Outcome.FAILED and kind is not None:
            failures = self._kinds.get(kind)
            (failures if failures is not None else self.failures.labels(kind.value)).inc()
        if credits > 0:
            self._credit_states[_CREDIT_STATE[outcome]].inc(credits)
        run = self._runs.get(job_id)
        if run is not None and run.stage is not None:
            self._observe(run, time.monotonic())
            run.stage = None

    def job_left(self, job_id: str) -> None:
        self._runs.pop(job_id, None)
        self.in_flight.set(len(self._runs))

    def _observe(self, run: _Run, now: float) -> None:
        if run.stage in STAGES:
            self._stages[run.stage].observe(max(0.0, now - run.since))

    # -- the 1min.ai client's on_request hook ---------------------------------------------

    def onemin_request(self, route: str, status: int | None) -> None:
        """One request to 1min.ai ended: with an HTTP ``status``, or None (no answer)."""
        child = self._requests.get((route, status))
        if child is None:
            label = NO_ANSWER if status is None else str(status)
            child = self._requests[route, status] = self.onemin_requests.labels(route, label)
        child.inc()

    # -- the database layer's outage reporter ----------------------------------------------

    def db_error(self, kind: DbOutageKind) -> None:
        """A caller in this process survived a database outage of ``kind``."""
        self._db_kinds[kind].inc()

    # -- set by the endpoint just before a scrape is rendered ---------------------------

    def set_fleet(self, *, waiting: int, window_used: int, circuit_open: bool) -> None:
        """The fleet-wide gauges, as just read from the database."""
        self.queue_depth.set(waiting)
        self.rate_window_used.set(window_used)
        self.circuit_open.set(1 if circuit_open else 0)

    def set_gateway(self, shards: Mapping[int, ShardStatus]) -> None:
        for shard, status in shards.items():
            label = str(shard)
            self.discord_connected.labels(label).set(1 if status.connected else 0)
            self.discord_latency.labels(label).set(status.latency)

    def record_lag(self, seconds: float) -> None:
        """One wake-up of the lag probe, ``seconds`` late."""
        self._lags.append(seconds)
        self.loop_lag.set(max(self._lags))

    # -- exposition ---------------------------------------------------------------------

    def render(self) -> bytes:
        """Every series in the Prometheus text format.

        Safe in any thread: it reads only the library's own (locked) values, and the
        process collector's reads of ``/proc``; the endpoint calls it in a thread.
        """
        return generate_latest(self.registry)


async def probe_loop_lag(metrics: Metrics) -> None:
    """Sleep :data:`LAG_PROBE_INTERVAL` in a loop and record how late each wake-up is.

    One wake-up a second, a few microseconds of work besides the wake-up itself.
    Runs until cancelled.
    """
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(LAG_PROBE_INTERVAL)
        metrics.record_lag(max(0.0, loop.time() - before - LAG_PROBE_INTERVAL))
