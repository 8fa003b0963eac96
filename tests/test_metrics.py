"""The metrics (bot.app.metrics), the 1min.ai client's request hook, and the metrics endpoint's
fleet reads, readiness and lag probe (bot.app.metrics_http), without Discord.

End-to-end scrapes of the running bot are in tests/e2e/test_metrics.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.app import metrics as metrics_module
from bot.app.metrics import Metrics, ShardStatus
from bot.app.metrics_http import MetricsEndpoint
from bot.app.services import Services, open_services
from bot.app.settings import Secret, Settings
from bot.db.outages import report_db_outage
from bot.db.transient import DbOutageKind
from bot.failures import FailureKind
from bot.jobs.metrics import Outcome
from bot.jobs.model import Job, PreparedInfo, Source, Stage
from bot.onemin.client import OneMinClient, ServiceUnavailable
from tests.bot_process import closed_port
from tests.emulators.onemin import OneMinEmulator
from tests.support.images import png

KEY = "metrics-test-key"
JOB_ID = "5f0c0ffee0ddba11cafe5f0c0ffee0dd"  # distinctive: must never appear in a label

# docs/metrics.md: name -> (type, labels). The interface dashboards rely on.
PRODUCT_TABLE = {
    "upscale_jobs": ("counter", {"outcome"}),
    "upscale_failures": ("counter", {"kind"}),
    "upscale_queue_depth": ("gauge", set()),
    "upscale_jobs_in_flight": ("gauge", set()),
    "upscale_stage_seconds": ("histogram", {"stage"}),
    "upscale_onemin_requests": ("counter", {"route", "status"}),
    "upscale_credits": ("counter", {"state"}),
    "upscale_circuit_open": ("gauge", set()),
    "upscale_rate_window_used": ("gauge", set()),
    "upscale_event_loop_lag_seconds": ("gauge", set()),
    "upscale_db_errors": ("counter", {"kind"}),
    "discord_connected": ("gauge", {"shard"}),
    "discord_latency": ("gauge", {"shard"}),
}


def families(
    m: Metrics,
) -> dict[str, tuple[str, set[str], dict[tuple[str, frozenset[tuple[str, str]]], float]]]:
    """Each family of a render: type, label names (``le`` aside), samples."""
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        names = {n for s in family.samples for n in s.labels if n != "le"}
        samples = {(s.name, frozenset(s.labels.items())): s.value for s in family.samples}
        out[family.name] = (family.type, names, samples)
    return out


def job(stage: Stage = Stage.QUEUED, age: float = 0.0, job_id: str = JOB_ID) -> Job:
    prepared = PreparedInfo("a.png", "png", (64, 48), (64, 48), "png", (), 100)
    return Job(
        id=job_id,
        guild_id=1,
        channel_id=2,
        member_id=3,
        output_format="png",
        source=Source("https://cdn.example/a.png", "a.png"),
        context="",
        reservation_id="r",
        created_at=time.time() - age,
        stage=stage,
        prepared=prepared,
    )


def observations(m: Metrics, stage: str) -> tuple[float, float]:
    """(count, sum) of upscale_stage_seconds for ``stage``."""
    samples = families(m)["upscale_stage_seconds"][2]
    key = frozenset({("stage", stage)})
    return samples[("upscale_stage_seconds_count", key)], samples[
        ("upscale_stage_seconds_sum", key)
    ]


# -- the metrics themselves ----------------------------------------------------------------


def test_every_metric_of_the_product_table_has_its_type_and_labels() -> None:
    """Names, types and label names exactly as the table of docs/metrics.md says."""
    m = Metrics()
    m.set_gateway({0: ShardStatus(True, 0.04)})
    m.onemin_request("assets", 200)
    found = families(m)
    for name, (kind, label_names) in PRODUCT_TABLE.items():
        assert name in found, name
        assert found[name][:2] == (kind, label_names), name


def test_no_created_series_are_exported() -> None:
    """Counters and histograms come without ``*_created`` series (clutter in text format)."""
    m = Metrics()
    m.job_ended("a", Outcome.DELIVERED, credits=1)
    assert b"_created" not in m.render()


def test_the_default_process_collectors_are_registered() -> None:
    """process_*, python_info and python_gc_* come with every bot's registry."""
    found = families(Metrics())
    assert {"process_cpu_seconds", "python_info", "python_gc_objects_collected"} <= set(found)


def test_two_bots_in_one_process_keep_their_own_series() -> None:
    """Each Metrics has its own registry: no clash, and one's counts stay its own."""
    first, second = Metrics(), Metrics()
    first.job_ended("a", Outcome.DELIVERED, credits=1)
    assert (
        families(first)["upscale_jobs"][2][
            ("upscale_jobs_total", frozenset({("outcome", "delivered")}))
        ]
        == 1
    )
    assert (
        families(second)["upscale_jobs"][2][
            ("upscale_jobs_total", frozenset({("outcome", "delivered")}))
        ]
        == 0
    )


def test_fixed_label_values_exist_before_any_event() -> None:
    """Every outcome, failure kind, stage and credit state is exported at 0 from the start."""
    found = families(Metrics())
    outcomes = {dict(k[1])["outcome"] for k in found["upscale_jobs"][2]}
    kinds = {dict(k[1])["kind"] for k in found["upscale_failures"][2]}
    stages = {dict(k[1])["stage"] for k in found["upscale_stage_seconds"][2]}
    assert outcomes == {"delivered", "failed", "cancelled"}
    assert kinds == {k.value for k in FailureKind} - {"cancelled"}
    assert stages == {"queued", "uploading", "upscaling", "downloading", "delivering"}


def test_every_db_outage_kind_is_exported_at_zero_from_the_start() -> None:
    found = families(Metrics())
    kinds = {dict(k[1])["kind"]: v for k, v in found["upscale_db_errors"][2].items()}
    assert kinds == {kind.value: 0 for kind in DbOutageKind}


def test_a_db_outage_reported_in_the_process_is_counted_by_kind() -> None:
    """report_db_outage (bot.db.outages) reaches the metrics, lines held back included."""
    m = Metrics()
    for _ in range(3):
        report_db_outage(logging.getLogger("tests.metrics"), "claiming a job", TimeoutError())
    samples = families(m)["upscale_db_errors"][2]
    assert samples[("upscale_db_errors_total", frozenset({("kind", "timeout")}))] == 3
    assert samples[("upscale_db_errors_total", frozenset({("kind", "refused")}))] == 0


def test_the_outage_reporter_does_not_keep_a_bots_metrics_alive() -> None:
    """Metrics subscribe weakly: those of a bot that is gone are freed."""
    gone = weakref.ref(Metrics())
    gc.collect()
    assert gone() is None


def test_no_label_carries_a_job_id() -> None:
    """A whole job's life leaves its id nowhere in the exposition."""
    m = Metrics()
    m.job_started(job())
    m.job_stage(job(), Stage.UPLOADING)
    m.job_ended(JOB_ID, Outcome.FAILED, FailureKind.TIMEOUT, credits=1)
    m.job_left(JOB_ID)
    assert JOB_ID not in m.render().decode()


def test_queued_time_counts_from_when_the_job_was_accepted() -> None:
    """A fresh job claimed 5 s after it was accepted spent at least 5 s queued."""
    m = Metrics()
    m.job_started(job(age=5.0))
    m.job_stage(job(), Stage.UPLOADING)
    count, total = observations(m, "queued")
    assert count == 1 and total >= 5.0


def test_waiting_and_queued_reports_do_not_end_a_stage() -> None:
    """WAITING (for a slot or the rate window) and places in line are not stages."""
    m = Metrics()
    m.job_started(job())
    m.job_stage(job(), Stage.WAITING)
    m.job_stage(job(), Stage.QUEUED)
    assert observations(m, "queued")[0] == 0


def test_a_resumed_job_times_its_stage_from_the_claim_only() -> None:
    """A job taken over while upscaling is not timed as queued since its creation."""
    m = Metrics()
    m.job_started(job(Stage.UPSCALING, age=600.0))
    m.job_stage(job(), Stage.DOWNLOADING)
    count, total = observations(m, "upscaling")
    assert observations(m, "queued")[0] == 0
    assert count == 1 and total < 600.0


def test_the_stage_a_job_ends_in_is_timed_once() -> None:
    """job_ended closes the last stage; a later stage report for it changes nothing."""
    m = Metrics()
    m.job_started(job())
    m.job_stage(job(), Stage.DELIVERING)
    m.job_ended(JOB_ID, Outcome.DELIVERED, credits=1)
    m.job_stage(job(), Stage.DONE)
    assert observations(m, "delivering")[0] == 1


def test_jobs_in_flight_count_runs_until_they_leave() -> None:
    """In flight from job_started to job_left, whatever the outcome in between."""
    m = Metrics()
    m.job_started(job(job_id="a"))
    m.job_started(job(job_id="b"))
    m.job_ended("a", Outcome.CANCELLED, credits=1)
    samples = families(m)["upscale_jobs_in_flight"][2]
    assert samples[("upscale_jobs_in_flight", frozenset())] == 2
    m.job_left("a")
    samples = families(m)["upscale_jobs_in_flight"][2]
    assert samples[("upscale_jobs_in_flight", frozenset())] == 1


def test_a_cancel_refunds_credits_but_is_not_a_failure() -> None:
    """Cancelled: outcome cancelled, credits refunded, no failures_total increment."""
    m = Metrics()
    m.job_ended(JOB_ID, Outcome.CANCELLED, FailureKind.CANCELLED, credits=2)
    found = families(m)
    assert sum(found["upscale_failures"][2].values()) == 0
    refunded = ("upscale_credits_total", frozenset({("state", "refunded")}))
    assert found["upscale_credits"][2][refunded] == 2


# -- the 1min.ai client's hook --------------------------------------------------------------


@pytest.fixture
async def emu() -> AsyncIterator[OneMinEmulator]:
    async with OneMinEmulator(api_key=KEY) as emulator:
        yield emulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def hooked(
    session: aiohttp.ClientSession, base_url: str
) -> tuple[OneMinClient, list[tuple[str, int | None]]]:
    calls: list[tuple[str, int | None]] = []
    client = OneMinClient(
        session,
        KEY,
        base_url=base_url,
        max_attempts=2,
        backoff_base=0.0,
        backoff_cap=0.0,
        on_request=lambda route, status: calls.append((route, status)),
    )
    return client, calls


async def test_the_hook_hears_every_route_with_its_status(
    session: aiohttp.ClientSession, emu: OneMinEmulator, tmp_path: Path
) -> None:
    """An upload, an upscale and a download: assets, features and download, each 200."""
    client, calls = hooked(session, emu.base_url)
    record = await client.upscale(await client.upload(png(), "a.png", "image/png"))
    await client.download_to(record.temporary_url, tmp_path / "r.img", 10_000_000)
    assert calls == [("assets", 200), ("features", 200), ("download", 200)]


async def test_the_hook_hears_each_retry_and_error_status(
    session: aiohttp.ClientSession, emu: OneMinEmulator
) -> None:
    """A 500 then a success on upload: two requests heard, with their statuses."""
    client, calls = hooked(session, emu.base_url)
    emu.fail("upload", "server_error", status=500)
    await client.upload(png(), "a.png", "image/png")
    assert calls == [("assets", 500), ("assets", 200)]


async def test_a_request_without_an_answer_is_heard_as_none(
    session: aiohttp.ClientSession,
) -> None:
    """Connection refused: the hook hears the route with no status (``error`` label)."""
    client, calls = hooked(session, f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ServiceUnavailable):
        await client.upload(png(), "a.png", "image/png")
    assert calls == [("assets", None), ("assets", None)]


def test_no_answer_is_counted_with_status_error() -> None:
    """Metrics.onemin_request(route, None) counts under status="error"."""
    m = Metrics()
    m.onemin_request("features", None)
    samples = families(m)["upscale_onemin_requests"][2]
    key = frozenset({("route", "features"), ("status", "error")})
    assert samples[("upscale_onemin_requests_total", key)] == 1


# -- the endpoint, on real services ----------------------------------------------------------


@pytest.fixture
async def services(tmp_path: Path, session: aiohttp.ClientSession) -> AsyncIterator[Services]:
    settings = Settings(
        discord_token=Secret("t"),
        onemin_api_key=Secret(KEY),
        onemin_api_base=f"http://127.0.0.1:{closed_port()}",
        database_url=Secret(f"sqlite:///{tmp_path / 'bot.db'}"),
        spool_dir=tmp_path / "spool",
        metrics_port=closed_port(),
    )
    async with open_services(settings, session) as opened:
        yield opened


def endpoint(services: Services, shards: dict[int, ShardStatus] | None = None) -> MetricsEndpoint:
    assert services.metrics is not None
    gateway = shards if shards is not None else {0: ShardStatus(True, 0.05)}
    return MetricsEndpoint(
        services.metrics, services, lambda: gateway, host="127.0.0.1", port=closed_port()
    )


def count_reads(monkeypatch: pytest.MonkeyPatch, owner: object, method: str) -> list[int]:
    """Replace ``owner.method`` (an async read) with one that counts its calls."""
    calls: list[int] = []
    real = getattr(owner, method)

    async def counted() -> int:
        calls.append(1)
        return int(await real())

    monkeypatch.setattr(owner, method, counted)
    return calls


async def test_concurrent_scrapes_share_one_read_of_the_fleet_gauges(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five scrapes at once read the queue's depth from the database once."""
    reads = count_reads(monkeypatch, services.queue, "count_waiting")
    monkeypatch.setattr("bot.app.metrics_http.FLEET_CACHE_SECONDS", 3600.0)
    ep = endpoint(services)
    await asyncio.gather(*(ep.scrape() for _ in range(5)))
    assert len(reads) == 1


async def test_the_fleet_gauges_are_read_again_once_the_cache_is_stale(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the cache spent, each scrape reads the database again."""
    reads = count_reads(monkeypatch, services.gate, "window_used")
    monkeypatch.setattr("bot.app.metrics_http.FLEET_CACHE_SECONDS", 0.0)
    ep = endpoint(services)
    await ep.scrape()
    await ep.scrape()
    assert len(reads) == 2


async def test_ready_when_connected_with_a_database_and_a_closed_circuit(
    services: Services,
) -> None:
    """All three conditions hold: no reason."""
    assert await endpoint(services).readiness() is None


async def test_not_ready_names_the_disconnected_shard(services: Services) -> None:
    """Shard 1 of two is down: the reason names it."""
    shards = {0: ShardStatus(True, 0.05), 1: ShardStatus(False, float("inf"))}
    assert await endpoint(services, shards).readiness() == "Discord gateway shard 1 not connected"


async def test_not_ready_before_any_shard_is_launched(services: Services) -> None:
    """No shard yet (still logging in): not ready."""
    assert await endpoint(services, {}).readiness() == "Discord gateway not connected yet"


async def test_not_ready_when_the_database_fails(services: Services) -> None:
    """A database that errors: the reason says so (with the error's type only)."""
    await services.db.close()
    reason = await endpoint(services).readiness()
    assert reason is not None and reason.startswith("database error (")


async def test_not_ready_while_the_circuit_is_open(services: Services) -> None:
    """Out of credits: the reason says the circuit is open and why."""
    await services.circuit.trip(FailureKind.OUT_OF_CREDITS)
    reason = await endpoint(services).readiness()
    assert reason is not None and reason.startswith("1min.ai circuit open for ")
    assert "it is out of credits" in reason


async def test_the_lag_probe_sees_a_blocked_loop() -> None:
    """Blocking the loop for two probe intervals makes the probe wake at least one
    interval late."""
    m = Metrics()
    interval = metrics_module.LAG_PROBE_INTERVAL
    probe = asyncio.create_task(metrics_module.probe_loop_lag(m))
    await asyncio.sleep(0)  # the probe starts its first sleep
    time.sleep(2 * interval)  # noqa: ASYNC251 - blocking the loop is the point
    await asyncio.sleep(0.01)
    probe.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await probe
    samples = families(m)["upscale_event_loop_lag_seconds"][2]
    assert samples[("upscale_event_loop_lag_seconds", frozenset())] >= interval
