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
from tests.support.job_parts import a_job, config, parts_with


@dataclass
class LeaseStore:
    """The store's lease statements: renewals are recorded; ``failing`` of them raise."""

    renewals: list[float] = field(default_factory=list)
    failing: int = 0
    renewed: asyncio.Event = field(default_factory=asyncio.Event)

    async def renew(self, lease_until: float) -> int:
        self.renewals.append(lease_until)
        self.renewed.set()
        if self.failing:
            self.failing -= 1
            raise ConnectionResetError("the database went away")
        return 1


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
    leases.hold(job)
    assert leases.holds(job.id)
    job.status = JobStatus.DELIVERED
    assert not leases.holds(job.id)


def test_a_released_job_is_no_longer_held(tmp_path: Path) -> None:
    leases, _, _ = make(tmp_path)
    job = a_job()
    leases.hold(job)
    leases.release(job.id)
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
    leases.hold(a_job())
    stopping = asyncio.Event()
    keeping = asyncio.create_task(leases.keep(stopping))
    await renewals(store, 3)
    stopping.set()
    await keeping


async def test_a_failed_renewal_is_tried_again_at_the_next_third(tmp_path: Path) -> None:
    """A database that blinks costs one renewal, not the renewing."""
    leases, store, _ = make(tmp_path, lease=0.03)
    store.failing = 1
    leases.hold(a_job())
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
    leases.hold(a_job())
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
