"""The job queue against the real ledger, database and 1min.ai client (emulated API)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from bot.db import Database
from bot.jobs import (
    DeliveryFailed,
    Job,
    JobFailure,
    JobQueue,
    JobRequest,
    JobResult,
    LimitReached,
    QueueClosed,
    QueueFull,
    Stage,
)
from bot.ledger import Ledger
from bot.onemin import OneMinClient
from tests.emulators.onemin import OneMinEmulator

KEY = "jobs-test-key"
GUILD, CHANNEL, ALICE, BOB = 100, 200, 301, 302


def png(size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(out, "PNG")
    return out.getvalue()


@dataclass
class Recorder:
    """A JobObserver that records what the queue told it."""

    fail_delivery: str | None = None
    stages: list[tuple[Stage, int | None]] = field(default_factory=list)
    delivered: list[JobResult] = field(default_factory=list)
    failures: list[JobFailure] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    job: Job | None = None

    def progress(self, job: Job, stage: Stage, position: int | None) -> None:
        self.job = job
        self.stages.append((stage, position))

    async def settled(self, seconds: float = 10) -> None:
        """Wait until the job has been delivered or failed, and settled in the ledger."""
        async with asyncio.timeout(seconds):
            await self.done.wait()
            assert self.job is not None
            await self.job.settled.wait()

    async def deliver(self, job: Job, result: JobResult) -> int | None:
        if self.fail_delivery:
            raise DeliveryFailed(self.fail_delivery)
        self.delivered.append(result)
        self.done.set()
        return 42

    async def failed(self, job: Job, failure: JobFailure) -> None:
        self.failures.append(failure)
        self.done.set()


@dataclass
class Rig:
    db: Database
    ledger: Ledger
    emu: OneMinEmulator
    queue: JobQueue
    tmp: Path

    async def submit(
        self, member: int = ALICE, observer: Recorder | None = None, fmt: str = "png"
    ) -> tuple[Job, Recorder]:
        observer = observer or Recorder()
        with self.queue.admit(GUILD, member) as ticket:
            path = self.queue.spool_path(ticket)
            path.write_bytes(png())
            prepared = await self.queue.prepare(ticket, path, "cat.png")
            request = JobRequest(GUILD, CHANNEL, member, (), fmt)
            job = await self.queue.submit(ticket, request, prepared, observer)
        return job, observer

    async def used(self, member: int = ALICE) -> tuple[int, int]:
        balance = await self.ledger.balance(GUILD, member, ())
        return balance.used, balance.pending


async def make_rig(
    tmp_path: Path, session: aiohttp.ClientSession, emu: OneMinEmulator, **queue_options: int
) -> Rig:
    db = await Database.open(tmp_path / "db.sqlite")
    ledger = Ledger(db, default_limit=queue_options.pop("limit", 10), default_period="daily")
    client = OneMinClient(session, KEY, base_url=emu.base_url, backoff_base=0.01)
    options = {"max_concurrent": 2, "max_per_member": 2, "cost": 1, **queue_options}
    queue = JobQueue(db=db, ledger=ledger, onemin=client, spool_dir=tmp_path / "spool", **options)
    queue.start()
    return Rig(db, ledger, emu, queue, tmp_path)


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
    tmp_path: Path, session: aiohttp.ClientSession, emu: OneMinEmulator
) -> AsyncIterator[RigFactory]:
    """Builds rigs on the same files (as successive processes would); closes them all."""
    made: list[Rig] = []

    async def make(**options: int) -> Rig:
        made.append(await make_rig(tmp_path, session, emu, **options))
        return made[-1]

    yield make
    for r in reversed(made):
        await r.queue.shutdown(grace=0.5)
        await r.db.close()


@pytest.fixture
async def rig(rigs: RigFactory) -> Rig:
    return await rigs()


async def job_row(rig: Rig, job_id: str) -> dict[str, object]:
    row = await rig.db.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
    assert row is not None
    return dict(row)


async def test_delivered_job_is_charged_once(rig: Rig) -> None:
    """A delivered job gets a 4x result and its credit is committed, nothing pending."""
    job, obs = await rig.submit()
    await obs.settled(10)
    assert obs.failures == []
    assert obs.delivered[0].size == (256, 192)
    assert await rig.used() == (1, 0)
    row = await job_row(rig, job.id)
    assert row["status"] == "delivered" and row["message_id"] == 42


async def test_stages_are_reported_in_order(rig: Rig) -> None:
    """The observer sees uploading, upscaling, downloading, delivering in that order."""
    _, obs = await rig.submit()
    await obs.settled(10)
    running = [stage for stage, _ in obs.stages if stage is not Stage.QUEUED]
    assert running == [Stage.UPLOADING, Stage.UPSCALING, Stage.DOWNLOADING, Stage.DELIVERING]


async def test_api_failure_refunds_and_records_the_kind(rig: Rig) -> None:
    """A 1min.ai failure refunds the reservation and records the error kind on the job."""
    rig.emu.fail("upscale", "server_error", status=500)
    job, obs = await rig.submit()
    await obs.settled(10)
    assert [f.kind for f in obs.failures] == ["unavailable"]
    assert await rig.used() == (0, 0)
    row = await job_row(rig, job.id)
    assert (row["status"], row["error_kind"]) == ("failed", "unavailable")


async def test_rate_limit_failure_carries_retry_after(rig: Rig) -> None:
    """A 429 with a long Retry-After reaches the observer with its retry time."""
    rig.emu.fail("upscale", "rate_limited", times=5, retry_after="120")
    _, obs = await rig.submit()
    await obs.settled(10)
    assert obs.failures[0].kind == "rate_limited"
    assert obs.failures[0].retry_after == 120


async def test_delivery_failure_refunds(rig: Rig) -> None:
    """When the front end cannot deliver, the credit is refunded."""
    _, obs = await rig.submit(observer=Recorder(fail_delivery="missing_permissions"))
    await obs.settled(10)
    assert [f.kind for f in obs.failures] == ["missing_permissions"]
    assert await rig.used() == (0, 0)


async def test_next_job_succeeds_after_a_failure(rig: Rig) -> None:
    """After a failed job the same member's next job is delivered normally."""
    rig.emu.fail("upload", "unauthorized")
    _, first = await rig.submit()
    await first.settled(10)
    _, second = await rig.submit()
    await second.settled(10)
    assert first.failures and second.delivered
    assert await rig.used() == (1, 0)


async def test_unchanged_image_is_not_a_result(rig: Rig) -> None:
    """A "result" that is not larger than the input fails as bad_result and is refunded."""
    same = png()
    rig.emu.fail("download", "respond", status=200, body=same)
    _, obs = await rig.submit()
    await obs.settled(10)
    assert [f.kind for f in obs.failures] == ["bad_result"]
    assert await rig.used() == (0, 0)


async def test_member_cap_refuses_a_third_job(rig: Rig) -> None:
    """With MAX_JOBS_PER_USER=2, a third admission raises QueueFull; another member is fine."""
    first = rig.queue.admit(GUILD, ALICE)
    second = rig.queue.admit(GUILD, ALICE)
    with pytest.raises(QueueFull):
        rig.queue.admit(GUILD, ALICE)
    rig.queue.admit(GUILD, BOB).release()
    first.release()
    rig.queue.admit(GUILD, ALICE).release()
    second.release()


async def test_unsubmitted_ticket_frees_its_slot(rig: Rig) -> None:
    """Leaving the admission block without submitting (a refusal) frees the slot."""
    for _ in range(3):
        with rig.queue.admit(GUILD, ALICE):
            pass
    assert rig.queue.active_jobs(GUILD, ALICE) == 0


async def test_limit_reached_reserves_nothing(rigs: RigFactory, emu: OneMinEmulator) -> None:
    """A member at their limit gets LimitReached, no API call and no reservation."""
    r = await rigs(limit=1)
    _, obs = await r.submit()
    await obs.settled(10)
    with pytest.raises(LimitReached) as info:
        await r.submit()
    assert info.value.denial.reason == "member_limit"
    assert await r.used() == (1, 0)
    assert emu.calls["upload"] == 1
    assert r.queue.active_jobs(GUILD, ALICE) == 0


async def test_at_most_max_concurrent_jobs_run(rigs: RigFactory, emu: OneMinEmulator) -> None:
    """With two workers, at most two jobs are past 'queued' at any time; the rest wait."""
    r = await rigs(max_per_member=10)
    emu.upscale_delay = 0.2
    running = 0
    peak = 0

    class Counting(Recorder):
        def progress(self, job: Job, stage: Stage, position: int | None) -> None:
            nonlocal running, peak
            if stage is Stage.UPLOADING:
                running += 1
                peak = max(peak, running)
            super().progress(job, stage, position)

        async def deliver(self, job: Job, result: JobResult) -> int | None:
            nonlocal running
            running -= 1
            return await super().deliver(job, result)

    observers = [(await r.submit(observer=Counting()))[1] for _ in range(5)]
    await asyncio.gather(*(o.settled(20) for o in observers))
    assert peak == 2
    assert all(o.delivered for o in observers)


async def test_waiting_jobs_see_their_place_in_line(rigs: RigFactory, emu: OneMinEmulator) -> None:
    """A job queued behind others is told its position, which only moves forward."""
    r = await rigs(max_concurrent=1, max_per_member=10)
    emu.upscale_delay = 0.1
    submitted = [await r.submit() for _ in range(4)]
    job, last = submitted[-1]
    assert r.queue.position(job) is not None
    await last.settled(20)
    positions = [p for stage, p in last.stages if stage is Stage.QUEUED]
    assert positions and positions == sorted(positions, reverse=True)
    assert positions[-1] == 1


async def test_queued_input_waits_on_disk_and_is_removed_after(rig: Rig) -> None:
    """A queued job's input is a spool file; it is gone once the job ends."""
    rig.emu.upscale_delay = 0.2
    job, _ = await rig.submit()
    assert job.input_path.exists()
    await asyncio.wait_for(job.settled.wait(), 10)
    assert not job.input_path.exists()
    assert list(rig.queue.spool_dir.iterdir()) == []


async def test_shutdown_refunds_queued_and_running_jobs(
    rigs: RigFactory, emu: OneMinEmulator
) -> None:
    """Shutdown cancels what cannot finish in the grace time and refunds every job."""
    r = await rigs(max_concurrent=1, max_per_member=10)
    emu.upscale_delay = 5
    observers = [(await r.submit())[1] for _ in range(3)]
    await asyncio.sleep(0.2)
    await r.queue.shutdown(grace=0.1)
    assert all([f.kind for f in o.failures] == ["shutdown"] for o in observers)
    assert await r.used() == (0, 0)
    with pytest.raises(QueueClosed):
        r.queue.admit(GUILD, BOB)


async def test_recover_refunds_jobs_left_by_a_crash(rigs: RigFactory, emu: OneMinEmulator) -> None:
    """Jobs unfinished in the database at start-up are refunded and their members notified."""
    first = await rigs(max_concurrent=1)
    emu.upscale_delay = 5
    job, _ = await first.submit()
    await asyncio.sleep(0.1)
    # The first process "dies" here: a second one opens the same files and recovers.
    second = await rigs()
    orphan = second.queue.spool_dir / "cut-off-download.in"
    orphan.write_bytes(b"partial")
    notices: list[tuple[int, int, str]] = []

    async def notify(channel_id: int, member_id: int, job_id: str) -> None:
        notices.append((channel_id, member_id, job_id))

    assert await second.queue.recover(notify) == [job.id]
    assert notices == [(CHANNEL, ALICE, job.id)]
    assert await second.used() == (0, 0)
    assert (await job_row(second, job.id))["status"] == "failed"
    assert not orphan.exists()
