"""The metrics port: ``/metrics``, ``/healthz`` and ``/readyz`` over HTTP, when METRICS_PORT is set.

A small aiohttp server (:class:`MetricsEndpoint`) bound to ``METRICS_HOST:METRICS_PORT``
(127.0.0.1 by default), started before the bot connects to Discord and stopped after it
closes (``bot.app.cli``; the test harness does the same). Without ``METRICS_PORT``
nothing is built and nothing listens.

* ``/metrics``: :class:`bot.app.metrics.Metrics` in the Prometheus text format. Before each
  scrape the fleet-wide gauges (jobs waiting, the rate window's use, the 1min.ai circuit)
  are read from the database, at most once per :data:`FLEET_CACHE_SECONDS` however many
  scrapers ask, and the gateway shards' state is read from the bot. The text is rendered
  in a thread (the process collector reads ``/proc``), so a scrape never blocks the
  event loop: on the loop it costs three small indexed reads a second at most, and
  setting a few gauges.
* ``/healthz``: 200 while the event loop answers (the handler runs on it).
* ``/readyz``: 200 when this process's gateway shards are connected, the database answers
  ``SELECT 1`` within :data:`READY_DB_TIMEOUT`, and the 1min.ai circuit is closed;
  otherwise 503 with a one-line reason.

This module imports nothing from Discord: the bot hands in a callable that reports its
shards (:meth:`bot.frontend.client.UpscaleBot.gateway_status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Self

from aiohttp import web

from bot.app.metrics import CONTENT_TYPE, Metrics, ShardStatus, probe_loop_lag
from bot.app.services import Services
from bot.app.settings import Settings
from bot.failures import FailureKind

log = logging.getLogger(__name__)

FLEET_CACHE_SECONDS = 1.0  # a read of the fleet-wide gauges serves scrapes this long
FLEET_READ_TIMEOUT = 2.0  # seconds a scrape waits for them (then shows the last values)
READY_DB_TIMEOUT = 2.0  # seconds /readyz waits for the database's answer
TEXT = "text/plain"

GatewayStatus = Callable[[], Mapping[int, ShardStatus]]

_CIRCUIT_REASONS = {
    FailureKind.UNAUTHORIZED: "it refused the API key",
    FailureKind.OUT_OF_CREDITS: "it is out of credits",
}


class MetricsPortUnavailable(Exception):
    """The metrics port cannot be bound; ``str()`` says which and why, in one line."""


class MetricsEndpoint:
    """The HTTP server of the metrics port; see the module docstring.

    ``async with MetricsEndpoint(...)`` (or :meth:`start` / :meth:`stop`) binds the port
    and starts the event-loop lag probe; :class:`MetricsPortUnavailable` when the port
    is taken or the address is not this machine's.
    """

    def __init__(
        self,
        metrics: Metrics,
        services: Services,
        gateway: GatewayStatus,
        *,
        host: str,
        port: int,
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._services = services
        self._gateway = gateway
        self._runner: web.AppRunner | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._fleet_lock = asyncio.Lock()
        self._fleet_read_at: float | None = None  # monotonic seconds
        self._fleet_failing = False

    @classmethod
    def for_settings(
        cls, settings: Settings, services: Services, gateway: GatewayStatus
    ) -> MetricsEndpoint | None:
        """The endpoint ``METRICS_PORT`` asks for, or None when it is not set."""
        if settings.metrics_port is None:
            return None
        if services.metrics is None:
            raise ValueError("METRICS_PORT is set but the services were opened without metrics")
        return cls(
            services.metrics,
            services,
            gateway,
            host=settings.metrics_host,
            port=settings.metrics_port,
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._serve_health)
        app.router.add_get("/readyz", self._serve_ready)
        # No access log: a scraper every few seconds would fill the bot's log.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            why = os.strerror(exc.errno).lower() if exc.errno else type(exc).__name__
            raise MetricsPortUnavailable(
                f"METRICS_PORT {self.port} cannot be opened on METRICS_HOST {self.host} ({why}):"
                " choose a free port, or stop what uses it"
            ) from None
        self._runner = runner
        self._lag_task = asyncio.create_task(probe_loop_lag(self.metrics), name="metrics-lag")
        log.info("Serving /metrics, /healthz and /readyz on %s", self.url)

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
            self._lag_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what the routes answer ---------------------------------------------------------

    async def scrape(self) -> bytes:
        """The metrics text: fleet gauges refreshed (cached), rendered in a thread."""
        await self.refresh_fleet()
        self.metrics.set_gateway(self._gateway())
        return await asyncio.to_thread(self.metrics.render)

    async def refresh_fleet(self) -> None:
        """Read the fleet-wide gauges unless a read less than a second old serves."""
        async with self._fleet_lock:  # concurrent scrapes share one read
            now = time.monotonic()
            if self._fleet_read_at is not None and now - self._fleet_read_at < FLEET_CACHE_SECONDS:
                return
            self._fleet_read_at = now
            services = self._services
            try:
                async with asyncio.timeout(FLEET_READ_TIMEOUT):
                    waiting = await services.queue.count_waiting()
                    used = await services.gate.window_used()
                    circuit = await services.circuit.state()
            except Exception as exc:
                if not self._fleet_failing:
                    log.warning(
                        "Metrics: cannot read the fleet's gauges (%s); showing the last values",
                        type(exc).__name__,
                    )
                self._fleet_failing = True
                return
            if self._fleet_failing:
                log.info("Metrics: the fleet's gauges can be read again")
                self._fleet_failing = False
            self.metrics.set_fleet(waiting=waiting, window_used=used, circuit_open=circuit.open)

    async def readiness(self) -> str | None:
        """Why this process is not ready (one line), or None when it is."""
        shards = self._gateway()
        if not shards:
            return "Discord gateway not connected yet"
        down = sorted(shard for shard, status in shards.items() if not status.connected)
        if down:
            listed = ", ".join(str(shard) for shard in down)
            return f"Discord gateway shard {listed} not connected"
        try:
            async with asyncio.timeout(READY_DB_TIMEOUT):
                await self._services.db.fetchone("SELECT 1")
                circuit = await self._services.circuit.state()
        except TimeoutError:
            return f"database did not answer within {READY_DB_TIMEOUT:g} s"
        except Exception as exc:
            return f"database error ({type(exc).__name__})"
        if circuit.open:
            why = _CIRCUIT_REASONS.get(circuit.reason or FailureKind.ERROR, "it kept failing")
            return (
                f"1min.ai circuit open for {circuit.open_for:.0f} s ({why}):"
                " no upscale is sent until a probe succeeds"
            )
        return None

    async def _serve_metrics(self, _request: web.Request) -> web.Response:
        body = await self.scrape()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _serve_health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n", content_type=TEXT)

    async def _serve_ready(self, _request: web.Request) -> web.Response:
        reason = await self.readiness()
        if reason is None:
            return web.Response(text="ready\n", content_type=TEXT)
        return web.Response(status=503, text=f"not ready: {reason}\n", content_type=TEXT)
