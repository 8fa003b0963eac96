"""The leases this process holds, alone (:mod:`bot.jobs.leases`), with a fake store."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from bot.jobs import JobStatus
from bot.jobs.leases import Leases
from bot.jobs.model import Stopped
from tests.support.job_parts import a_job, config, parts_with


@dataclass
class LeaseStore:
    """The store's lease statements: renewals are recorded; ``failing`` of them raise."""

    renewals: list[float] = field(default_factory=list)
    failing: int = 0
    renewed: asyncio.Event = field(default_factory=asyncio.Event)
    taken_over: set[str] = field(default_factory=set)  # jobs whose claim moved on
    confirms: list[tuple[str, int]] = field(default_factory=list)

    async def renew(self, lease_until: float, now: float) -> int:
        self.renewals.append(lease_until)
        self.renewed.set()
        if self.failing:
            self.failing -= 1
            raise ConnectionResetError("the database went away")
        return 1

    async def confirm_lease(self, job_id: str, claim: int, lease_until: float) -> bool:
        self.confirms.append((job_id, claim))
        return job_id not in self.taken_over


@dataclass
class IntakeState:
    """The intake as the leases see it: busy or not; counts how often it was asked."""

    taking_in: bool = False
    asked: int = 0

    @property
    def busy(self) -> bool:
        self.asked += 1
        return self.taking_in


def make(tmp_path: Path, *, lease: float = 30.0) -> tuple[Leases, LeaseStore, IntakeState]:
    store = LeaseStore()
    intake = IntakeState()
    bundle = parts_with(store, config(lease=lease), tmp_path)
    return Leases(bundle.parts, intake=cast(Any, intake)), store, intake


async def renewals(store: LeaseStore, count: int) -> None:
    """Wait until ``count`` renewals were made."""
    async with asyncio.timeout(10):
        while len(store.renewals) < count:
            store.renewed.clear()
            await store.renewed.wait()


def test_a_job_run_here_is_held_until_it_is_settled(tmp_path: Path) -> None:
    leases, _, _ = make(tmp_path)
    job = a_job()
    leases.hold(job, time.time() + 30)
    assert leases.holds(job.id)
    job.status = JobStatus.DELIVERED
    assert not leases.holds(job.id)


def test_a_released_job_is_no_longer_held(tmp_path: Path) -> None:
    leases, _, _ = make(tmp_path)
    job = a_job()
    leases.hold(job, time.time() + 30)
    leases.release(job)
    assert not leases.holds(job.id) and not leases.holding


def test_an_intake_taken_over_holds_a_lease_but_no_running_job(tmp_path: Path) -> None:
    """An intake's lease is renewed like a job's, but the job is not one this process
    runs (a front end asks :meth:`holds` before it shows a running job's progress)."""
    leases, _, _ = make(tmp_path)
    leases.hold_intake("job-0001")
    assert leases.holding and not leases.holds("job-0001")
    leases.release_intake("job-0001")
    assert not leases.holding


def test_an_intake_of_this_process_in_progress_holds_a_lease(tmp_path: Path) -> None:
    leases, _, intake = make(tmp_path)
    intake.taking_in = True
    assert leases.holding


async def test_a_renewal_extends_every_lease_a_whole_lease_from_now(tmp_path: Path) -> None:
    """One statement renews them all, and the lease end it wrote is remembered."""
    leases, store, _ = make(tmp_path, lease=30.0)
    before = time.time()
    await leases.renew()
    after = time.time()
    assert store.renewals == [leases.renewed_until]
    assert before + 30.0 <= store.renewals[0] <= after + 30.0


async def test_a_renewal_that_fails_keeps_the_last_lease_end_written(tmp_path: Path) -> None:
    leases, store, _ = make(tmp_path)
    await leases.renew()
    before = leases.renewed_until
    store.failing = 1
    with pytest.raises(ConnectionResetError):
        await leases.renew()
    assert leases.renewed_until == before and len(store.renewals) == 2


async def test_leases_held_are_renewed_every_third_of_a_lease(tmp_path: Path) -> None:
    leases, store, _ = make(tmp_path, lease=0.03)
    leases.hold(a_job(), time.time() + 30)
    stopping = asyncio.Event()
    keeping = asyncio.create_task(leases.keep(stopping))
    await renewals(store, 3)
    stopping.set()
    await keeping


async def test_a_failed_renewal_is_tried_again_at_the_next_third(tmp_path: Path) -> None:
    """A database that blinks costs one renewal, not the renewing."""
    leases, store, _ = make(tmp_path, lease=0.03)
    store.failing = 1
    leases.hold(a_job(), time.time() + 30)
    stopping = asyncio.Event()
    keeping = asyncio.create_task(leases.keep(stopping))
    await renewals(store, 2)
    stopping.set()
    await keeping
    assert leases.renewed_until == store.renewals[-1]


async def test_nothing_is_renewed_by_a_process_that_holds_nothing(tmp_path: Path) -> None:
    """An idle process writes nothing: each third of a lease it finds it holds nothing
    (the last thing it asks is the intake), until it holds a job and renews."""
    leases, store, intake = make(tmp_path, lease=0.03)
    stopping = asyncio.Event()
    keeping = asyncio.create_task(leases.keep(stopping))
    async with asyncio.timeout(10):
        while intake.asked < 3:  # noqa: ASYNC110 - counts the renewal loop's thirds
            await asyncio.sleep(0.01)
    assert store.renewals == []
    leases.hold(a_job(), time.time() + 30)
    await renewals(store, 1)
    stopping.set()
    await keeping


async def test_the_renewal_stops_when_stopping_is_set(tmp_path: Path) -> None:
    leases, _, _ = make(tmp_path, lease=3600.0)
    stopping = asyncio.Event()
    keeping = asyncio.create_task(leases.keep(stopping))
    await asyncio.sleep(0)
    stopping.set()
    async with asyncio.timeout(5):
        await keeping


# -- the fence ---------------------------------------------------------------------------


async def test_a_renewal_leaves_a_lapsed_lease_to_be_confirmed(tmp_path: Path) -> None:
    """A lease that lapsed (the database did not answer in time) is not renewed with the
    others: it may have been taken over, so this process no longer acts on the job."""
    leases, _, _ = make(tmp_path)
    fresh, lapsed = a_job(), a_job()
    lapsed.id = "job-lapsed"
    leases.hold(fresh, time.time() + 30)
    leases.hold(lapsed, time.time() - 1)
    await leases.renew()
    assert leases.valid(fresh.id)
    assert not leases.valid(lapsed.id)


async def test_a_lapsed_lease_nobody_took_is_confirmed_by_the_jobs_claim(tmp_path: Path) -> None:
    leases, store, _ = make(tmp_path)
    job = a_job()
    job.claims = 3
    leases.hold(job, time.time() - 1)
    await leases.confirm(job)
    assert store.confirms == [(job.id, 3)]
    assert leases.valid(job.id)


async def test_a_lapsed_lease_that_was_taken_over_stops_the_job_here(tmp_path: Path) -> None:
    leases, store, _ = make(tmp_path)
    job = a_job()
    leases.hold(job, time.time() - 1)
    store.taken_over.add(job.id)
    with pytest.raises(Stopped):
        await leases.confirm(job)
    assert not leases.valid(job.id)


async def test_a_lease_known_to_hold_is_confirmed_without_a_write(tmp_path: Path) -> None:
    leases, store, _ = make(tmp_path)
    job = a_job()
    leases.hold(job, time.time() + 30)
    await leases.confirm(job)
    assert store.confirms == []


async def test_the_fence_cuts_off_work_when_the_lease_is_about_to_lapse(tmp_path: Path) -> None:
    """Work inside the fence (a delivery) is cancelled a margin before the lease ends."""
    leases, _, _ = make(tmp_path, lease=1.0)  # margin: 0.1 s
    job = a_job()
    leases.hold(job, time.time() + 0.3)
    started = time.monotonic()
    with pytest.raises(Stopped):
        async with leases.fence(job):
            await asyncio.sleep(30)
    assert time.monotonic() - started < 5


async def test_a_renewal_moves_the_fence_on(tmp_path: Path) -> None:
    """A renewal during the work moves its cut-off to the new lease end."""
    leases, _, _ = make(tmp_path, lease=1.0)
    job = a_job()
    leases.hold(job, time.time() + 0.3)
    async with leases.fence(job):
        await leases.renew()  # the lease now ends a whole lease (1 s) from now
        await asyncio.sleep(0.4)  # past the first cut-off (0.2 s from the start)
    assert leases.valid(job.id)


async def test_a_run_that_was_replaced_is_not_confirmed(tmp_path: Path) -> None:
    """This process took its own job over: the older run's confirmation stops it, even
    though the job id is still held (by the newer run)."""
    leases, store, _ = make(tmp_path)
    old, new = a_job(), a_job()
    new.id = old.id
    leases.hold(old, time.time() - 1)
    leases.hold(new, time.time() + 30)
    with pytest.raises(Stopped):
        await leases.confirm(old)
    assert store.confirms == []
    leases.release(old)
    assert leases.holds(new.id)
