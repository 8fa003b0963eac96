"""The job queue against the real ledger, database and 1min.ai client (emulated API).

Every test runs on both engines (the ``databases`` fixture of tests/conftest.py): a SQLite
file, and a fresh schema on the PostgreSQL test server. Rigs made in one test share that
database, as successive (or concurrent) processes of one bot would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.db import Database, Transaction
from bot.failures import FailureKind
from bot.images.download import DownloadFailed, SourceGone
from bot.jobs import (
    CancelOutcome,
    DeliveryFailed,
    InputRefused,
    Job,
    JobFailure,
    JobQueue,
    JobRequest,
    JobResult,
    LimitReached,
    Progress,
    QueueClosed,
    QueueConfig,
    QueueFull,
    Source,
    Stage,
)
from bot.jobs.intake import INTAKE_CONCURRENCY
from bot.jobs.positions import Positions
from bot.jobs.report import Reporter
from bot.jobs.store import ViewStatements
from bot.ledger import Ledger
from bot.onemin.client import OneMinClient
from bot.onemin.pacing import RateGate
from tests.emulators.onemin import OneMinEmulator
from tests.support.databases import Databases
from tests.support.images import png

KEY = "jobs-test-key"
# What a delivered job went through, as its log lines and its trail name the stages.
DELIVERED_JOB_STAGES = [
    "receiving",
    "queued",
    "claimed",
    "uploading",
    "upscaling",
    "downloading",
    "delivering",
    "delivered",
]
GUILD, CHANNEL, ALICE, BOB = 100, 200, 301, 302


@dataclass
class JobLog:
    """What the queue told the front end about one job."""

    stages: list[tuple[Stage, int | None]] = field(default_factory=list)
    progress: list[Progress] = field(default_factory=list)
    delivered: list[JobResult] = field(default_factory=list)
    failures: list[JobFailure] = field(default_factory=list)
    resumed: int = 0
    paused: int = 0
    ended: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Recorder:
    """A FrontEnd that records, per job, what the queue told it."""

    fail_delivery: FailureKind | None = None
    already_posted: set[str] = field(default_factory=set)
    jobs: dict[str, JobLog] = field(default_factory=lambda: defaultdict(JobLog))

    def show_progress(self, job: Job, progress: Progress) -> None:
        self.jobs[job.id].stages.append((progress.stage, progress.position))
        self.jobs[job.id].progress.append(progress)

    async def deliver(self, job: Job, result: JobResult) -> int | None:
        if self.fail_delivery:
            raise DeliveryFailed(self.fail_delivery)
        self.jobs[job.id].delivered.append(result)
        self.jobs[job.id].done.set()
        return 42

    async def find_delivered(self, job: Job) -> int | None:
        if job.id in self.already_posted:
            self.jobs[job.id].done.set()
            return 43
        return None

    async def tell_failed(self, job: Job, failure: JobFailure) -> None:
        self.jobs[job.id].failures.append(failure)
        self.jobs[job.id].done.set()

    async def tell_resumed(self, job: Job) -> None:
        self.jobs[job.id].resumed += 1

    async def tell_paused(self, job: Job) -> None:
        self.jobs[job.id].paused += 1

    async def stop_showing(self, job_id: str) -> None:
        self.jobs[job_id].ended += 1
        self.jobs[job_id].done.set()


@dataclass
class Images:
    """The members' attachments, as the queue fetches them: URL -> bytes.

    ``gone`` URLs answer as deleted; while ``held`` is clear, fetches wait (a slow
    download), and ``fetching`` lists the URLs whose fetch started, in order.
    """

    files: dict[str, bytes] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    broken: set[str] = field(default_factory=set)
    held: asyncio.Event = field(default_factory=asyncio.Event)
    fetching: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.held.set()

    def add(self, data: bytes) -> str:
        url = f"https://cdn.example/attachments/{len(self.files)}/cat.png"
        self.files[url] = data
        return url

    async def fetch(self, url: str, path: Path, max_bytes: int) -> int:
        self.fetching.append(url)
        await self.held.wait()
        if url in self.gone:
            raise SourceGone("HTTP 404")
        if url in self.broken:
            raise DownloadFailed("HTTP 500")
        data = self.files[url]
        await asyncio.to_thread(path.write_bytes, data)
        return len(data)


@dataclass
class Rig:
    db: Database
    ledger: Ledger
    emu: OneMinEmulator
    queue: JobQueue
    front: Recorder
    tmp: Path
    images: Images

    def request(
        self, member: int = ALICE, fmt: str = "png", data: bytes | None = None
    ) -> JobRequest:
        url = self.images.add(png() if data is None else data)
        return JobRequest(
            GUILD,
            CHANNEL,
            member,
            (),
            Source(url, "cat.png"),
            "the front end's context",
            reply_token="interaction-token",
            output_format=fmt,
        )

    async def submit(
        self, member: int = ALICE, fmt: str = "png", data: bytes | None = None
    ) -> tuple[Job, JobLog]:
        """What a command does: record the job, then take its image in."""
        job = await self.queue.accept(self.request(member, fmt, data))
        await self.queue.take_in(job)
        return job, self.front.jobs[job.id]

    async def recover(self) -> None:
        """What the bot does at start-up: every running job is this process's on SQLite;
        on PostgreSQL only those of this instance (all rigs share one instance name)."""
        await self.queue.recover(single_process=self.db.engine == "sqlite")

    async def used(self, member: int = ALICE) -> tuple[int, int]:
        balance = await self.ledger.balance(GUILD, member, ())
        return balance.used, balance.pending

    async def settled(self, job: Job, seconds: float = 10) -> JobLog:
        """Wait until the job has been delivered, failed or cancelled, and settled."""
        async with asyncio.timeout(seconds):
            await self.front.jobs[job.id].done.wait()
            while (await job_row(self, job.id))["status"] in ("intake", "queued", "running"):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        return self.front.jobs[job.id]


async def make_rig(
    tmp_path: Path,
    databases: Databases,
    session: aiohttp.ClientSession,
    emu: OneMinEmulator,
    *,
    limit: int = 10,
    per_minute: int = 1000,
    window: float = 61.0,
    front: Recorder | None = None,
    images: Images | None = None,
    start: bool = True,
    claim: bool = True,
    **queue_options: Any,
) -> Rig:
    db = await databases.open()
    ledger = Ledger(db, default_limit=limit, default_period="daily")
    gate = RateGate(db, per_minute, window=window)
    client = OneMinClient(
        session,
        KEY,
        base_url=emu.base_url,
        backoff_base=0.01,
        before_request=gate.acquire,
        retry_rate_limited=False,
    )
    files = images or Images()
    options: dict[str, Any] = {
        "max_concurrent": 2,
        "max_per_member": 2,
        "cost": 1,
        # Rigs on one SQLite file are separate "processes" that do not hear each
        # other's wake-ups: they look around often instead.
        "poll_interval": 0.2,
    }
    options.update(queue_options)
    tunables = {f.name for f in fields(QueueConfig)}
    queue = JobQueue(
        db=db,
        ledger=ledger,
        onemin=client,
        spool_dir=tmp_path / "spool",
        config=QueueConfig(**{k: v for k, v in options.items() if k in tunables}),
        fetch_source=files.fetch,
        **{k: v for k, v in options.items() if k not in tunables},
    )
    recorder = front or Recorder()
    queue.attach(recorder)
    rig = Rig(db, ledger, emu, queue, recorder, tmp_path, files)
    if start:
        await rig.recover()
        queue.start(claim=claim)
    return rig


@pytest.fixture
async def emu() -> AsyncIterator[OneMinEmulator]:
    async with OneMinEmulator(api_key=KEY) as emulator:
        yield emulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def rigs(
    tmp_path: Path, databases: Databases, session: aiohttp.ClientSession, emu: OneMinEmulator
) -> AsyncIterator[RigFactory]:
    """Builds rigs on one database (as successive processes would); stops them all.

    The ``databases`` fixture closes their connections afterwards (and drops the schema).
    """
    made: list[Rig] = []

    async def make(**options: Any) -> Rig:
        made.append(await make_rig(tmp_path, databases, session, emu, **options))
        return made[-1]

    yield make
    for r in reversed(made):
        await r.queue.shutdown(grace=0.5)


@pytest.fixture
async def rig(rigs: RigFactory) -> Rig:
    return await rigs()


async def die(rig: Rig) -> None:
    """The rig's process "dies": it claims, renews and settles nothing more, and its
    leases are left to run out. (A real process cannot be killed inside the test
    process; the restart tests in tests/e2e do that with kill -9.)"""
    await rig.queue.shutdown(grace=0, hand_back=False)


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    """Poll the database until ``predicate`` holds."""
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110 - the state is in the database
            await asyncio.sleep(0.01)


async def until_row(rig: Rig, job_id: str, column: str, value: object) -> None:
    async def reached() -> bool:
        return (await job_row(rig, job_id))[column] == value

    await until(reached)


async def has_asset(rig: Rig, job_id: str) -> bool:
    return (await job_row(rig, job_id))["asset_path"] is not None


async def job_row(rig: Rig, job_id: str) -> dict[str, object]:
    row = await rig.db.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
    assert row is not None
    return dict(row)


async def test_delivered_job_is_charged_once(rig: Rig) -> None:
    """A delivered job gets a 4x result and its credit is committed, nothing pending."""
    job, _ = await rig.submit()
    obs = await rig.settled(job)
    assert obs.failures == []
    assert obs.delivered[0].size == (256, 192)
    assert await rig.used() == (1, 0)
    row = await job_row(rig, job.id)
    assert row["status"] == "delivered" and row["message_id"] == 42


async def test_stages_are_reported_in_order(rig: Rig) -> None:
    """The observer sees uploading, upscaling, downloading, delivering in that order."""
    job, _ = await rig.submit()
    obs = await rig.settled(job)
    running = [stage for stage, _ in obs.stages if stage is not Stage.QUEUED]
    assert running == [Stage.UPLOADING, Stage.UPSCALING, Stage.DOWNLOADING, Stage.DELIVERING]


async def test_each_stage_change_logs_one_info_line_with_job_guild_stage_and_process(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A moderator can follow a job in the log: one INFO line per stage, naming the job,
    its guild, the stage and the process that ran it."""
    caplog.set_level(logging.INFO, logger="bot.jobs")
    job, _ = await rig.submit()
    await rig.settled(job)
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and r.getMessage().startswith(f"Job {job.id} ")
    ]
    stages = [line.split(": ", 1)[1].split(" ")[0] for line in lines]
    assert stages == DELIVERED_JOB_STAGES
    for line in lines:
        assert f"guild {job.guild_id}:" in line
        assert line.endswith(f"[{rig.queue.owner}]")


async def test_api_failure_refunds_and_records_the_kind(rig: Rig) -> None:
    """A 1min.ai failure refunds the reservation and records the error kind on the job."""
    rig.emu.fail("upscale", "server_error", status=500)
    job, _ = await rig.submit()
    obs = await rig.settled(job)
    assert [f.kind for f in obs.failures] == ["unavailable"]
    assert await rig.used() == (0, 0)
    row = await job_row(rig, job.id)
    assert (row["status"], row["error_kind"]) == ("failed", "unavailable")


async def test_rate_limit_failure_carries_retry_after(rigs: RigFactory) -> None:
    """A 429 whose Retry-After is past the busy bound fails at once with its retry time."""
    rig = await rigs(busy_timeout=60)
    rig.emu.fail("upscale", "rate_limited", times=5, retry_after="120")
    job, _ = await rig.submit()
    obs = await rig.settled(job)
    assert obs.failures[0].kind == "rate_limited"
    assert obs.failures[0].retry_after == 120


async def test_delivery_failure_refunds(rig: Rig) -> None:
    """When the front end cannot deliver, the credit is refunded."""
    rig.front.fail_delivery = FailureKind.MISSING_PERMISSIONS
    job, _ = await rig.submit()
    obs = await rig.settled(job)
    assert [f.kind for f in obs.failures] == ["missing_permissions"]
    assert await rig.used() == (0, 0)


async def test_next_job_succeeds_after_a_failure(rig: Rig) -> None:
    """After a failed job the same member's next job is delivered normally."""
    rig.emu.fail("upload", "unauthorized")
    job1, _ = await rig.submit()
    first = await rig.settled(job1)
    job2, _ = await rig.submit()
    second = await rig.settled(job2)
    assert first.failures and second.delivered
    assert await rig.used() == (1, 0)


async def test_unchanged_image_is_not_a_result(rig: Rig) -> None:
    """A "result" that is not larger than the input fails as bad_result and is refunded."""
    same = png()
    rig.emu.fail("download", "respond", status=200, body=same)
    job, _ = await rig.submit()
    obs = await rig.settled(job)
    assert [f.kind for f in obs.failures] == ["bad_result"]
    assert await rig.used() == (0, 0)


async def test_member_cap_refuses_a_third_job(rigs: RigFactory) -> None:
    """With MAX_JOBS_PER_USER=2, a third job (even while the first two are still being
    taken in) raises QueueFull and records nothing; another member is fine."""
    r = await rigs(claim=False)
    await r.queue.accept(r.request())
    await r.queue.accept(r.request())
    with pytest.raises(QueueFull):
        await r.queue.accept(r.request())
    await r.queue.accept(r.request(BOB))
    assert await r.queue.count_member_unfinished(GUILD, ALICE) == 2
    assert await r.used() == (2, 2)


async def test_concurrent_requests_never_pass_the_member_cap(rigs: RigFactory) -> None:
    """Eight requests of one member at once, cap 2: exactly two are recorded (the cap is
    checked in the reservation's transaction, under the guild's lock)."""
    r = await rigs(claim=False)
    outcomes = await asyncio.gather(
        *(r.queue.accept(r.request()) for _ in range(8)), return_exceptions=True
    )
    accepted = [o for o in outcomes if isinstance(o, Job)]
    assert len(accepted) == 2
    assert all(isinstance(o, QueueFull) for o in outcomes if not isinstance(o, Job))
    assert await r.queue.count_member_unfinished(GUILD, ALICE) == 2


async def test_a_burst_in_one_guild_holds_one_database_connection_at_a_time(
    rigs: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight members of one guild at once: their acceptances wait for the guild's lock in
    this process, each taking a connection only when its turn comes, so a burst does not
    take the pool from the jobs already in line (PostgreSQL; SQLite has one connection)."""
    r = await rigs(claim=False)
    real = r.db.transaction
    open_now = most = 0

    @asynccontextmanager
    async def counted(*, urgent: bool = False) -> AsyncIterator[Transaction]:
        nonlocal open_now, most
        async with real(urgent=urgent) as tx:
            open_now += 1
            most = max(most, open_now)
            try:
                await asyncio.sleep(0.01)  # a busy server: the others arrive meanwhile
                yield tx
            finally:
                open_now -= 1

    monkeypatch.setattr(r.db, "transaction", counted)
    jobs = await asyncio.gather(*(r.queue.accept(r.request(100 + i)) for i in range(8)))
    assert len(jobs) == 8
    assert most == 1


async def test_a_refused_image_costs_nothing_and_frees_its_place(rig: Rig) -> None:
    """An attachment that is not an image fails its job with the member's words; the
    reservation is refunded and the member's place is free again."""
    job = await rig.queue.accept(rig.request(data=b"not an image at all"))
    assert await rig.used() == (1, 1)
    with pytest.raises(InputRefused) as refused:
        await rig.queue.take_in(job)
    assert refused.value.kind is FailureKind.INPUT_INVALID
    assert refused.value.text.key.startswith("image.")
    assert await rig.used() == (0, 0)
    assert await rig.queue.count_member_unfinished(GUILD, ALICE) == 0
    assert (await job_row(rig, job.id))["status"] == "failed"


async def test_a_job_is_recorded_and_reserved_before_its_image_is_fetched(rigs: RigFactory) -> None:
    """At the acknowledgement the job exists (status intake, with the attachment's URL)
    and its credit is reserved, though its image has not been downloaded yet."""
    images = Images()
    images.held.clear()
    r = await rigs(images=images)
    job = await r.queue.accept(r.request())
    intake = asyncio.create_task(r.queue.take_in(job))
    await until(lambda: _started(images, 1))
    row = await job_row(r, job.id)
    assert (row["status"], row["stage"]) == ("intake", "receiving")
    assert row["source_url"] == job.source.url
    assert await r.used() == (1, 1)
    images.held.set()
    assert await intake
    assert (await r.settled(job)).delivered


async def _started(images: Images, count: int) -> bool:
    return len(images.fetching) >= count


async def test_limit_reached_reserves_nothing(rigs: RigFactory, emu: OneMinEmulator) -> None:
    """A member at their limit gets LimitReached before anything is downloaded: no API
    call, no reservation, no job."""
    r = await rigs(limit=1)
    job, _ = await r.submit()
    await r.settled(job)
    with pytest.raises(LimitReached) as info:
        await r.submit()
    assert info.value.denial.reason == "member_limit"
    assert await r.used() == (1, 0)
    assert emu.calls["upload"] == 1
    assert await r.queue.count_member_unfinished(GUILD, ALICE) == 0
    assert len(r.images.fetching) == 1


async def test_at_most_max_concurrent_upscales_run(rigs: RigFactory, emu: OneMinEmulator) -> None:
    """With two slots, at most two jobs are with 1min.ai (uploading or upscaling) at any
    time, and 1min.ai's own count of upscales in flight agrees; the next jobs wait."""
    r = await rigs(max_per_member=10)
    emu.upscale_delay = 0.2
    running = 0
    peak = 0

    class Counting(Recorder):
        def show_progress(self, job: Job, progress: Progress) -> None:
            nonlocal running, peak
            if progress.stage is Stage.UPLOADING:
                running += 1
                peak = max(peak, running)
            elif progress.stage is Stage.DOWNLOADING:
                running -= 1
            super().show_progress(job, progress)

    counting = Counting()
    r.queue.attach(counting)
    r.front = counting
    jobs = [(await r.submit())[0] for _ in range(5)]
    logs = [await r.settled(job, 20) for job in jobs]
    assert peak == 2
    assert emu.max_features_in_flight == 2
    assert all(log.delivered for log in logs)


async def test_places_in_line_asked_for_during_a_read_share_the_next_one(
    databases: Databases,
) -> None:
    """Ten refreshes of the places in line asked for while one read runs are served by a
    single further read, and each caller returns only after a read that began after it
    asked (a burst of submissions does not read the whole line once per job)."""
    db = await databases.open()
    started: list[float] = []

    class SlowViews(ViewStatements):
        async def waiting_ids(self) -> list[str]:
            started.append(time.monotonic())
            await asyncio.sleep(0.05)
            return ["a" * 32]

    async def no_wait() -> None:
        return None

    positions = Positions(SlowViews(db, "o"), Reporter("o"), no_wait)
    positions.watch(_job("a" * 32))
    first = asyncio.create_task(positions.refresh())
    await asyncio.sleep(0.01)
    asked = time.monotonic()
    returned = []

    async def refresh() -> None:
        await positions.refresh()
        returned.append(time.monotonic())

    await asyncio.gather(first, *(refresh() for _ in range(10)))
    assert len(started) == 2
    assert started[1] >= asked and all(t >= started[1] + 0.05 for t in returned)


def _job(job_id: str) -> Job:
    return Job(
        id=job_id,
        guild_id=GUILD,
        channel_id=CHANNEL,
        member_id=ALICE,
        output_format="png",
        source=Source("https://cdn.example/a.png", "a.png"),
        context="",
        reservation_id="",
        created_at=time.time(),
    )


async def test_intakes_past_the_limit_wait_their_turn_in_arrival_order(
    rigs: RigFactory,
) -> None:
    """While INTAKE_CONCURRENCY images are being downloaded, the next ones wait, and go
    on in the order they came as places free up."""
    images = Images()
    images.held.clear()
    r = await rigs(max_per_member=20, images=images)
    jobs = [await r.queue.accept(r.request()) for _ in range(INTAKE_CONCURRENCY + 3)]
    intakes = []
    for job in jobs:
        intakes.append(asyncio.create_task(r.queue.take_in(job)))
        await asyncio.sleep(0)  # each asks for its place in turn
    await until(lambda: _started(images, INTAKE_CONCURRENCY))
    await asyncio.sleep(0.05)
    assert len(images.fetching) == INTAKE_CONCURRENCY
    images.held.set()
    await asyncio.gather(*intakes)
    assert images.fetching == [job.source.url for job in jobs]


async def test_waiting_jobs_see_their_place_in_line(rigs: RigFactory, emu: OneMinEmulator) -> None:
    """A job queued behind others is told its position, which only moves forward down
    to the head of the line (each upscale lasts longer than the places' refresh)."""
    r = await rigs(max_concurrent=1, max_per_member=10)
    emu.upscale_delay = 0.8
    submitted = [await r.submit() for _ in range(4)]
    job, _ = submitted[-1]
    assert r.queue.position(job) is not None
    last = await r.settled(job, 20)
    queued = [p for stage, p in last.stages if stage is Stage.QUEUED]
    positions = [p for p in queued if p is not None]
    assert positions == queued  # every place in line was told
    assert positions and positions == sorted(positions, reverse=True)
    assert positions[-1] == 1


async def test_queued_input_waits_in_the_database_and_is_removed_after(rig: Rig) -> None:
    """A queued job's input is stored with it (any process can run it); gone once it ends."""
    rig.emu.upscale_delay = 0.2
    job, _ = await rig.submit()
    assert await rig.db.fetchone("SELECT 1 FROM job_inputs WHERE job_id = ?", (job.id,))
    assert list(rig.queue.spool_dir.iterdir()) == []
    await rig.settled(job)
    assert await rig.db.fetchone("SELECT 1 FROM job_inputs WHERE job_id = ?", (job.id,)) is None


async def test_shutdown_refunds_nothing_and_hands_jobs_back(
    rigs: RigFactory, emu: OneMinEmulator
) -> None:
    """Shutdown stops what cannot finish in the grace time without refunding anything;
    running jobs are handed back with their progress, and the members told."""
    r = await rigs(max_concurrent=1, max_per_member=10)
    emu.upscale_delay = 5
    jobs = [(await r.submit())[0] for _ in range(3)]
    await until_row(r, jobs[0].id, "stage", "upscaling")
    await r.queue.shutdown(grace=0.1)
    assert await r.used() == (3, 3)
    statuses = [(await job_row(r, job.id))["status"] for job in jobs]
    assert statuses == ["queued", "queued", "queued"]
    assert r.front.jobs[jobs[0].id].paused == 1
    assert all(not r.front.jobs[j.id].failures for j in jobs)
    with pytest.raises(QueueClosed):
        await r.queue.accept(r.request(BOB))


async def test_next_start_finishes_jobs_left_by_a_crash(
    rigs: RigFactory, emu: OneMinEmulator
) -> None:
    """Jobs unfinished in the database at start-up continue and are delivered once; the
    member is told the job continues, and orphaned downloads are removed."""
    first = await rigs(max_concurrent=1)
    emu.upscale_delay = 5
    job, _ = await first.submit()
    await until_row(first, job.id, "stage", "upscaling")
    # The first process "dies" here (no shutdown): a second one opens the same files.
    emu.upscale_delay = 0
    orphan = first.queue.spool_dir / "cut-off-download.in"
    orphan.write_bytes(b"partial")
    await die(first)
    second = await rigs(start=False)
    await second.recover()
    assert not orphan.exists()
    second.queue.start()
    log = await second.settled(job)
    assert log.delivered and log.resumed == 1
    assert await second.used() == (1, 0)


async def test_a_stored_asset_is_not_uploaded_again(rigs: RigFactory, emu: OneMinEmulator) -> None:
    """A job resumed after its upload was recorded goes straight to the upscale call."""
    first = await rigs()
    emu.upscale_delay = 5
    job, _ = await first.submit()
    await until(lambda: has_asset(first, job.id))
    emu.upscale_delay = 0
    await die(first)
    second = await rigs(start=False)
    await second.recover()
    second.queue.start()
    assert (await second.settled(job)).delivered
    assert emu.calls["upload"] == 1


async def test_a_stored_result_is_not_upscaled_again(rigs: RigFactory, emu: OneMinEmulator) -> None:
    """A job resumed after its upscale record was stored downloads it again, no new call."""
    first = await rigs(front=Recorder(fail_delivery=None))
    gate = asyncio.Event()

    class Stuck(Recorder):
        async def deliver(self, job: Job, result: JobResult) -> int | None:
            await gate.wait()  # the process "dies" while delivering
            return None

    first.queue.attach(Stuck())
    job, _ = await first.submit()
    await until_row(first, job.id, "stage", "delivering")
    await die(first)
    second = await rigs(start=False)
    await second.recover()
    second.queue.start()
    assert (await second.settled(job)).delivered
    assert emu.upscales == 1
    assert emu.calls["download"] == 2  # downloaded again from the stored result URL
    gate.set()


async def test_a_result_already_posted_is_settled_without_posting(
    rigs: RigFactory, emu: OneMinEmulator
) -> None:
    """Resumed in 'delivering', a job whose message exists is charged once, not re-posted."""
    first = await rigs()
    gate = asyncio.Event()

    class Stuck(Recorder):
        async def deliver(self, job: Job, result: JobResult) -> int | None:
            await gate.wait()
            return None

    first.queue.attach(Stuck())
    job, _ = await first.submit()
    await until_row(first, job.id, "stage", "delivering")
    await die(first)
    second = await rigs(start=False, front=Recorder(already_posted={job.id}))
    await second.recover()
    second.queue.start()
    log = await second.settled(job)
    assert log.delivered == []
    assert (await job_row(second, job.id))["message_id"] == 43
    assert await second.used() == (1, 0)
    gate.set()


async def died_while_upscaling(
    rigs: RigFactory, emu: OneMinEmulator, members: tuple[int, ...] = (ALICE,), **survivor: Any
) -> tuple[list[Job], Rig, float]:
    """A process (instance host-a, lease 1 s) dies while a job of each of ``members`` is
    upscaling (two of them take both slots); another (host-b, with ``survivor`` options)
    starts after it, not yet told of the jobs. Also returns when the first one died
    (``time.monotonic()``)."""
    first = await rigs(lease=1.0, instance="host-a")
    emu.upscale_delay = 5
    jobs = [(await first.submit(member))[0] for member in members]
    for job in jobs:
        await until_row(first, job.id, "stage", "upscaling")
    await die(first)
    died = time.monotonic()
    emu.upscale_delay = 0
    second = await rigs(start=False, lease=1.0, instance="host-b", **survivor)
    await second.queue.recover(single_process=False)
    return jobs, second, died


async def test_a_dead_process_jobs_are_taken_over_when_the_lease_runs_out(
    rigs: RigFactory, emu: OneMinEmulator
) -> None:
    """Another process (another instance name) takes a job over only after its lease ends."""
    (job,), second, died = await died_while_upscaling(rigs, emu)
    second.queue.start()
    log = await second.settled(job)
    assert log.delivered and time.monotonic() - died >= 0.5
    assert await second.used() == (1, 0)


async def test_a_dead_process_job_is_taken_over_when_its_lease_ends_not_at_the_next_look(
    rigs: RigFactory, emu: OneMinEmulator
) -> None:
    """A process that dies wakes nobody: the other process looks again when the dead
    one's lease runs out, not after its fallback interval (30 s here)."""
    (job,), second, _ = await died_while_upscaling(rigs, emu, poll_interval=30.0)
    second.queue.start()
    log = await second.settled(job, seconds=5)
    assert log.delivered
    assert await second.used() == (1, 0)


async def died_holding_both_slots(
    rigs: RigFactory, emu: OneMinEmulator, **survivor: Any
) -> tuple[list[Job], Rig]:
    """A process dies with both upscale slots taken by its jobs; the survivor starts and
    its own job is put in line while those leases still run. Returns every job."""
    held, second, _ = await died_while_upscaling(rigs, emu, (ALICE, BOB), **survivor)
    second.queue.start()
    own, _ = await second.submit(ALICE)
    return [own, *held], second


async def test_jobs_taken_over_in_their_upscale_wait_for_a_slot_without_holding_one(
    rigs: RigFactory, emu: OneMinEmulator
) -> None:
    """The survivor's own job waits for a slot; the two jobs it takes over wait in line
    behind it without counting as slots taken, so all three are delivered (they used to
    hold the slots they waited for: a deadlock)."""
    jobs, second = await died_holding_both_slots(rigs, emu)
    for job in jobs:
        assert (await second.settled(job)).delivered


async def test_a_slot_a_dead_process_held_is_taken_when_its_job_is_taken_over(
    rigs: RigFactory, emu: OneMinEmulator
) -> None:
    """A dead process frees its slots silently: the job waiting for one in another
    process gets it when that process takes the dead one's job over, not at its next
    fallback look (30 s here)."""
    jobs, second = await died_holding_both_slots(rigs, emu, poll_interval=30.0)
    for job in jobs:
        assert (await second.settled(job, seconds=8)).delivered


async def test_cancel_of_a_queued_job_refunds_and_never_calls_the_api(
    rigs: RigFactory, emu: OneMinEmulator
) -> None:
    """The requester cancels a job waiting in line: refunded, never uploaded."""
    r = await rigs(max_concurrent=1, max_per_member=10)
    emu.upscale_delay = 1
    first, _ = await r.submit()
    second, _ = await r.submit()
    assert await r.queue.cancel(second.id, ALICE, moderator=False) is CancelOutcome.CANCELLED
    await r.settled(first)
    row = await job_row(r, second.id)
    assert row["status"] == "cancelled", row["error_kind"]
    assert emu.calls["upload"] == 1
    assert await r.used() == (1, 0)


async def test_cancel_just_before_upload_stops_the_job(
    rigs: RigFactory, emu: OneMinEmulator
) -> None:
    """Cancelled while uploading (not yet sent to the upscaler): no upscale call, refunded."""
    r = await rigs()
    emu.fail("upload", "latency", seconds=1.0)
    job, _ = await r.submit()
    await until_row(r, job.id, "stage", "uploading")
    assert await r.queue.cancel(job.id, ALICE, moderator=False) is CancelOutcome.CANCELLED
    await until(r.queue.idle)
    assert emu.calls["upscale"] == 0
    assert await r.used() == (0, 0)


async def test_a_moderator_may_cancel_another_members_job(
    rigs: RigFactory, emu: OneMinEmulator
) -> None:
    """A moderator's cancel is accepted; another member's is refused."""
    r = await rigs(max_concurrent=1, max_per_member=10)
    emu.upscale_delay = 1
    await r.submit()
    job, _ = await r.submit()
    assert await r.queue.cancel(job.id, BOB, moderator=False) is CancelOutcome.NOT_ALLOWED
    assert await r.queue.cancel(job.id, BOB, moderator=True) is CancelOutcome.CANCELLED


async def test_cancel_after_the_upscale_started_is_too_late(
    rigs: RigFactory, emu: OneMinEmulator
) -> None:
    """Once the image was sent to the upscaler, cancel is refused and the job finishes."""
    r = await rigs()
    emu.upscale_delay = 0.5
    job, _ = await r.submit()
    await until_row(r, job.id, "stage", "upscaling")
    assert await r.queue.cancel(job.id, ALICE, moderator=False) is CancelOutcome.TOO_LATE
    assert (await r.settled(job)).delivered
    assert await r.used() == (1, 0)


async def test_requests_are_paced_under_the_per_minute_limit(
    rigs: RigFactory, emu: OneMinEmulator
) -> None:
    """With room for 3 requests per window, the 4th waits for the window to move, and
    the job says it is waiting for the service."""
    r = await rigs(per_minute=3, window=1.5, max_per_member=10)
    started = time.monotonic()
    jobs = [(await r.submit())[0] for _ in range(2)]  # 4 requests
    logs = [await r.settled(job, 10) for job in jobs]
    assert time.monotonic() - started >= 1.4
    assert all(log.delivered for log in logs)
    assert any(stage is Stage.WAITING for log in logs for stage, _ in log.stages)


async def test_compare_crops_are_kept_a_week_and_then_forgotten(rig: Rig) -> None:
    """What a delivered job keeps for Compare (the input crop and where it lies) can be
    read back; housekeeping purges rows older than eight days, a six-day-old one stays
    (the button works for at least a week)."""
    from datetime import timedelta

    from bot.db import ts, utc_now

    job, _ = await rig.submit()
    await rig.settled(job)
    crops = await rig.queue.compare_crops(job.id)
    assert crops is not None and crops.before and crops.input_size == job.input.size
    for age, kept in ((6, True), (9, False)):
        await rig.db.write(
            "UPDATE compare_crops SET created_at = ? WHERE job_id = ?",
            (ts(utc_now() - timedelta(days=age)), job.id),
        )
        await rig.queue.purge()
        assert (await rig.queue.compare_crops(job.id) is not None) is kept


class FileWatcher(Recorder):
    """Records, at delivery, where the result is and what the file holds then."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Path, bool, int]] = []

    async def deliver(self, job: Job, result: JobResult) -> int | None:
        exists = result.path.exists()
        self.seen.append((result.path, exists, result.path.stat().st_size if exists else -1))
        return await super().deliver(job, result)


def result_files(rig: Rig) -> list[Path]:
    return [p for p in rig.queue.spool_dir.iterdir() if p.name.startswith("result-")]


async def test_result_is_delivered_from_a_spool_file_removed_afterwards(
    rigs: RigFactory, emu: OneMinEmulator
) -> None:
    """The result is downloaded into the spool, not memory: the front end gets its path
    and size, and the file is gone once the job is delivered."""
    watcher = FileWatcher()
    r = await rigs(front=watcher)
    job, _ = await r.submit()
    log = await r.settled(job)
    await until(r.queue.idle)  # its run has ended here (the file is removed then)
    ((path, existed, size),) = watcher.seen
    (data,) = emu.results.values()
    assert existed and size == len(data) == log.delivered[0].byte_count
    assert path.parent == r.queue.spool_dir
    assert not path.exists() and list(r.queue.spool_dir.iterdir()) == []
    assert (await job_row(r, job.id))["output_bytes"] == len(data)


@pytest.mark.parametrize("failure", ["delivery_failed", "bad_result"])
async def test_result_file_is_removed_when_the_job_fails(
    rigs: RigFactory, emu: OneMinEmulator, failure: str
) -> None:
    """A job that fails after its download (delivery refused, or the result is not an
    upscale) leaves no result file in the spool."""
    r = await rigs()
    if failure == "delivery_failed":
        r.front.fail_delivery = FailureKind.DELIVERY_ERROR
    else:
        emu.fail("download", "respond", status=200, body=png())
    job, _ = await r.submit()
    log = await r.settled(job)
    await until(r.queue.idle)  # its run has ended here (the file is removed then)
    assert log.failures and emu.calls["download"] == 1
    assert list(r.queue.spool_dir.iterdir()) == []


async def test_shutdown_during_a_download_leaves_no_result_file(
    rigs: RigFactory, emu: OneMinEmulator
) -> None:
    """A download cut off by shutdown (its task cancelled after the grace time) leaves
    no partial file; the job is handed back to be downloaded again."""
    r = await rigs()
    emu.fail("download", "hang")
    job, _ = await r.submit()

    async def downloading() -> bool:
        return bool(result_files(r))

    await until(downloading)
    await r.queue.shutdown(grace=0.1)
    assert result_files(r) == []
    assert (await job_row(r, job.id))["status"] == "queued"


async def test_a_result_file_left_by_a_crash_is_removed_at_start(rigs: RigFactory) -> None:
    """A result file orphaned by a dead process is removed when the next one recovers."""
    r = await rigs(start=False)
    r.queue.spool_dir.mkdir(parents=True, exist_ok=True)
    orphan = r.queue.spool_dir / "result-0123abcd.img"
    orphan.write_bytes(b"half a result")
    await r.recover()
    assert not orphan.exists()


# -- a year of history: bounded growth ---------------------------------------------------


async def test_the_interaction_token_is_erased_when_the_job_ends(rig: Rig) -> None:
    """A job keeps its interaction token while it runs and loses it when it ends; the
    context kept for the record holds no token either."""
    job, _ = await rig.submit()
    await rig.settled(job)
    row = await job_row(rig, job.id)
    assert row["reply_token"] is None
    assert "interaction-token" not in str(row["context"])
    assert row["source_url"] is None


async def test_a_failed_job_loses_its_token_too(rig: Rig) -> None:
    """The token is erased by a failure (and its refund) as well as by a delivery."""
    rig.emu.fail("upscale", "server_error", status=500)
    job, _ = await rig.submit()
    await rig.settled(job)
    assert (await job_row(rig, job.id))["reply_token"] is None


async def test_finished_jobs_past_retention_are_deleted_and_the_ledger_kept(
    rigs: RigFactory,
) -> None:
    """Housekeeping deletes finished jobs older than the retention, in batches, and no
    unfinished job nor any ledger entry."""
    from datetime import timedelta

    from bot.db import ts, utc_now

    r = await rigs(retention_days=30, max_per_member=10, claim=False)
    old = [(await r.queue.accept(r.request())) for _ in range(3)]
    for job in old:
        await r.db.write(
            "UPDATE jobs SET status = 'delivered', finished_at = ? WHERE id = ?",
            (ts(utc_now() - timedelta(days=31)), job.id),
        )
    recent = await r.queue.accept(r.request())
    await r.db.write(
        "UPDATE jobs SET status = 'failed', finished_at = ? WHERE id = ?",
        (ts(utc_now() - timedelta(days=29)), recent.id),
    )
    unfinished = await r.queue.accept(r.request())
    assert await r.queue.purge() == (3, 0)
    left = {row["id"] for row in await r.db.fetchall("SELECT id FROM jobs")}
    assert left == {recent.id, unfinished.id}
    entries = await r.db.fetchone("SELECT COUNT(*) AS n FROM ledger_entries")
    assert entries is not None and entries["n"] == 5


async def test_the_purge_deletes_a_backlog_in_small_batches(rigs: RigFactory) -> None:
    """A backlog larger than one batch is deleted whole, a batch per statement."""
    from bot.jobs import recovery

    r = await rigs(claim=False)
    count = recovery.PURGE_BATCH + 7
    insert = (
        "INSERT INTO jobs (id, guild_id, channel_id, member_id, status, stage, output_format,"
        " source_name, created_at, finished_at) VALUES (?, 1, 2, 3, 'delivered', 'done',"
        " 'png', 'a.png', '2020-01-01 00:00:00.000000', '2020-01-01 00:00:01.000000')"
    )
    async with r.db.transaction() as tx:
        await tx.executemany(insert, [(f"{n:032x}",) for n in range(count)])
    assert await r.queue.purge() == (count, 0)
    left = await r.db.fetchone("SELECT COUNT(*) AS n FROM jobs")
    assert left is not None and left["n"] == 0


# -- the trail -----------------------------------------------------------------------------


async def test_a_jobs_trail_names_each_stage_with_its_process(rig: Rig) -> None:
    """The id shown in a result's footer finds the job; its trail lists every stage in
    order, each with the process that ran it, and the 1min.ai record id is kept."""
    job, _ = await rig.submit()
    await rig.settled(job)
    found = await rig.queue.trail(job.id[:8])
    assert found is not None
    assert found.job.id == job.id and found.job.record_id
    events = found.events
    stages = [e.stage for e in events]
    assert stages == DELIVERED_JOB_STAGES
    assert {e.process for e in events} == {rig.queue.owner}
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert found.status == "delivered" and found.credits == (1, "committed")


async def test_an_unknown_or_ambiguous_footer_id_finds_nothing(rig: Rig) -> None:
    """No job, a malformed id, or a prefix shared by two jobs: no trail."""
    assert await rig.queue.trail("0123abcd") is None
    assert await rig.queue.trail("not hex!") is None
    assert await rig.queue.trail("") is None


# -- wake-ups and who shows what -----------------------------------------------------------


async def test_a_process_stops_showing_a_job_another_process_claims(rigs: RigFactory) -> None:
    """A accepts a job and shows its place in line; once B claims and delivers it, A no
    longer shows it (the front end is told the job ended there), and A's display guard
    says so too."""
    a = await rigs(claim=False)
    b = await rigs()
    job, log = await a.submit()
    await b.settled(job)
    await until(lambda: _ended(log))
    assert a.queue.count_watched() == 0
    assert not await a.queue.shows(job.id)
    assert await b.queue.shows(job.id) is False  # delivered: nobody shows it any more


async def _ended(log: JobLog) -> bool:
    return log.ended > 0


async def test_a_stream_delivered_elsewhere_leaves_nothing_watched(rigs: RigFactory) -> None:
    """A long stream of jobs accepted by A and delivered by B: A keeps no watched job and
    was told each one ended (no per-job state outlives its job)."""
    a = await rigs(claim=False, max_per_member=100, limit=100)
    b = await rigs(max_per_member=100, max_concurrent=4, limit=100)
    jobs = []
    for _ in range(30):
        job, _ = await a.submit()
        jobs.append(job)
    for job in jobs:
        await b.settled(job, 30)
    await until(lambda: _all_ended(a.front, jobs))
    assert a.queue.count_watched() == 0


async def _all_ended(front: Recorder, jobs: list[Job]) -> bool:
    return all(front.jobs[job.id].ended for job in jobs)


async def test_an_idle_process_is_woken_by_a_job_queued_elsewhere(rigs: RigFactory) -> None:
    """A process whose fallback look comes only every 30 s runs a job queued by another
    process at once: on PostgreSQL it is woken by LISTEN/NOTIFY; on SQLite (one process)
    the process that queued it wakes itself."""
    runner = await rigs(poll_interval=30.0)
    accepter = runner
    if runner.db.engine == "postgresql":
        accepter = await rigs(claim=False, poll_interval=30.0)
        await until(lambda: _listening(runner))
    job, _ = await accepter.submit()
    started = time.monotonic()
    await runner.settled(job, 10)
    assert time.monotonic() - started < 5


async def _listening(rig: Rig) -> bool:
    return rig.queue.signals.listening
