"""The claim dispatcher alone (:mod:`bot.jobs.dispatcher`): when it looks for work, and
what the 1min.ai circuit makes it do, with fakes around it.

The claims themselves (transactions on the job tables, on both engines) are tested
through the whole queue in tests/test_jobs.py; here the store only answers the look
before a claim, and a clock is fixed where a test computes when the next look comes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from bot.db import ts, utc_now
from bot.db.signals import Signal
from bot.failures import FailureKind
from bot.jobs import Job, JobStatus, WaitReason
from bot.jobs.dispatcher import LAPSE_MARGIN, Dispatcher
from bot.jobs.leases import Leases
from bot.jobs.slots import SlotLine
from bot.jobs.store import ClaimLook
from bot.onemin.circuit import CircuitState
from tests.support.job_parts import Bundle, EveryGroup, a_job, config, parts_with

NOW = 1_700_000_000.0  # the fixed clock's Unix time
POLL = 30.0  # seconds: the fallback look's interval


@dataclass
class LookStore:
    """The look before a claim: ``next_lapse`` is when another process's lease runs out
    (taken once, then None); ``waiting`` are the rows of the jobs in line."""

    next_lapse: float | None = None
    looks: int = 0
    looked: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: list[dict[str, Any]] = field(default_factory=list)

    async def anything_to_claim(self, now: float) -> ClaimLook:
        self.looks += 1
        self.looked.set()
        lapse, self.next_lapse = self.next_lapse, None
        return ClaimLook(jobs=False, intakes=False, next_lapse=lapse)

    async def waiting_rows(self) -> list[dict[str, Any]]:
        return self.waiting

    async def release_owned(self) -> list[Job]:
        return []


@dataclass
class FakeCircuit:
    """The circuit's state as the dispatcher reads it."""

    now: CircuitState = field(default_factory=lambda: CircuitState(False))

    async def state(self) -> CircuitState:
        return self.now


@dataclass
class FakeSettlement:
    refunded: list[tuple[str, FailureKind, bool]] = field(default_factory=list)

    async def settle_failure(self, job: Job, kind: FailureKind, *, owned: bool) -> bool:
        self.refunded.append((job.id, kind, owned))
        return True


@dataclass
class FakePositions:
    unwatched: list[str] = field(default_factory=list)

    def unwatch(self, job_id: str) -> None:
        self.unwatched.append(job_id)

    def refresh_soon(self) -> None:
        pass


@dataclass
class Rig:
    dispatcher: Dispatcher
    store: LookStore
    circuit: FakeCircuit
    settlement: FakeSettlement
    positions: FakePositions
    slots: SlotLine
    bundle: Bundle


def make(tmp_path: Path, **options: Any) -> Rig:
    store = LookStore()
    breaker = FakeCircuit()
    settlement = FakeSettlement()
    positions = FakePositions()
    values: dict[str, Any] = {"poll_interval": POLL}
    values.update(options)
    bundle = parts_with(store, config(**values), tmp_path)
    intake = cast(Any, SimpleNamespace(busy=False))
    slots = SlotLine(slots=2, poll_interval=POLL)
    dispatcher = Dispatcher(
        bundle.parts,
        intake=intake,
        settlement=cast(Any, settlement),
        positions=cast(Any, positions),
        circuit=cast(Any, breaker),
        leases=Leases(bundle.parts, intake=intake),
        pipeline=cast(Any, None),  # these tests start no job
        slots=slots,
    )
    return Rig(dispatcher, store, breaker, settlement, positions, slots, bundle)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatcher's clock stands at :data:`NOW`."""
    monkeypatch.setattr("bot.jobs.dispatcher.time", SimpleNamespace(time=lambda: NOW))


def row_of(job: Job) -> dict[str, Any]:
    """``job`` as the store reads it back."""
    return {
        "id": job.id,
        "guild_id": job.guild_id,
        "channel_id": job.channel_id,
        "member_id": job.member_id,
        "output_format": job.output_format,
        "source_url": job.source.url,
        "source_name": job.source.filename,
        "source_size": None,
        "context": job.stored_context(),
        "reservation_id": job.reservation_id,
        "created_at": ts(utc_now()),
        "status": JobStatus.QUEUED.value,
        "stage": job.stage.value,
        "reply_token": None,
        "input_width": None,
        "asset_path": None,
        "result_url": None,
        "record_id": None,
        "claims": 0,
    }


# -- when it looks -------------------------------------------------------------------


@pytest.mark.usefixtures("clock")
async def test_the_next_look_is_the_fallback_interval_when_no_other_lease_runs_out(
    tmp_path: Path,
) -> None:
    rig = make(tmp_path)
    await rig.dispatcher._claim_round()
    assert rig.dispatcher._until_next_look() == POLL


@pytest.mark.usefixtures("clock")
async def test_the_next_look_comes_when_another_process_lease_runs_out_if_sooner(
    tmp_path: Path,
) -> None:
    """A dead process wakes nobody: its jobs are looked for when their lease ends."""
    rig = make(tmp_path)
    rig.store.next_lapse = NOW + 2.0
    await rig.dispatcher._claim_round()
    assert rig.dispatcher._until_next_look() == pytest.approx(2.0 + LAPSE_MARGIN)


@pytest.mark.usefixtures("clock")
async def test_a_lease_that_runs_out_after_the_fallback_look_does_not_delay_it(
    tmp_path: Path,
) -> None:
    rig = make(tmp_path)
    rig.store.next_lapse = NOW + POLL + 60.0
    await rig.dispatcher._claim_round()
    assert rig.dispatcher._until_next_look() == POLL


@pytest.mark.usefixtures("clock")
async def test_a_lease_run_out_since_the_look_is_looked_at_after_the_margin(
    tmp_path: Path,
) -> None:
    rig = make(tmp_path)
    rig.store.next_lapse = NOW - 1.0
    await rig.dispatcher._claim_round()
    assert rig.dispatcher._until_next_look() == pytest.approx(LAPSE_MARGIN)


@pytest.mark.usefixtures("clock")
async def test_a_lease_end_seen_once_sets_one_look_only(tmp_path: Path) -> None:
    """The next look reads the next lease end again; until then the fallback holds."""
    rig = make(tmp_path)
    rig.store.next_lapse = NOW + 2.0
    await rig.dispatcher._claim_round()
    rig.dispatcher._until_next_look()
    assert rig.dispatcher._until_next_look() == POLL


async def test_an_idle_dispatcher_looks_again_when_another_process_lease_runs_out(
    tmp_path: Path,
) -> None:
    """Nothing wakes it and the fallback look is an hour away: it looks again when the
    lease it saw runs out."""
    rig = make(tmp_path, poll_interval=3600.0)
    rig.store.next_lapse = time.time() + 0.05
    rig.dispatcher.start()
    try:
        async with asyncio.timeout(10):
            while rig.store.looks < 2:
                rig.store.looked.clear()
                await rig.store.looked.wait()
    finally:
        await rig.dispatcher.stop(0)


async def test_a_job_queued_wakes_the_dispatcher_to_look(tmp_path: Path) -> None:
    rig = make(tmp_path, poll_interval=3600.0)
    rig.dispatcher.start()
    try:
        async with asyncio.timeout(10):
            await rig.store.looked.wait()
            rig.store.looked.clear()
            rig.dispatcher.on_signal(Signal.QUEUED, "")
            await rig.store.looked.wait()
    finally:
        await rig.dispatcher.stop(0)
    assert rig.store.looks == 2


async def test_a_freed_slot_wakes_the_head_of_the_slot_line(tmp_path: Path) -> None:
    """A slot freed anywhere in the fleet is for the jobs waiting for one, not a reason
    for the dispatcher to look for more work."""
    rig = make(tmp_path)
    looks: list[str] = []

    async def look() -> int | None:
        looks.append("head")
        return None if len(looks) == 1 else 0

    waiting = asyncio.create_task(rig.slots.take(look, waiting=lambda: None))
    async with asyncio.timeout(5):
        while not looks:  # noqa: ASYNC110 - the look sets no event
            await asyncio.sleep(0)
        rig.dispatcher.on_signal(Signal.SLOT, "")
        await waiting
    assert looks == ["head", "head"]


# -- the circuit ---------------------------------------------------------------------


async def test_nothing_is_looked_for_while_1min_refuses_the_account(tmp_path: Path) -> None:
    rig = make(tmp_path, circuit_give_up=3600.0)
    rig.circuit.now = CircuitState(True, FailureKind.UNAUTHORIZED, time.time())
    assert await rig.dispatcher._claim_round() is False
    assert rig.store.looks == 0
    assert rig.settlement.refunded == []


async def test_waiting_jobs_are_refunded_once_1min_refused_longer_than_the_give_up(
    tmp_path: Path,
) -> None:
    """Each waiting job is failed with why the circuit opened, refunded, no longer shown
    its place, and its member told."""
    rig = make(tmp_path, circuit_give_up=60.0)
    jobs = [a_job(1), a_job(2)]
    rig.store.waiting = [row_of(job) for job in jobs]
    rig.circuit.now = CircuitState(True, FailureKind.OUT_OF_CREDITS, time.time() - 120.0)
    assert await rig.dispatcher._claim_round() is False
    assert rig.settlement.refunded == [(job.id, FailureKind.OUT_OF_CREDITS, False) for job in jobs]
    assert rig.positions.unwatched == [job.id for job in jobs]
    assert [(j, f.kind) for j, f in rig.bundle.front.failures] == [
        (job.id, FailureKind.OUT_OF_CREDITS) for job in jobs
    ]


async def test_the_line_waits_for_1min_until_the_give_up_at_most(tmp_path: Path) -> None:
    rig = make(tmp_path, circuit_give_up=60.0)
    opened = time.time() - 10.0
    rig.circuit.now = CircuitState(True, FailureKind.UNAUTHORIZED, opened)
    assert await rig.dispatcher.line_waits() == (WaitReason.SERVICE_REFUSING, opened + 60.0)


async def test_the_line_does_not_wait_while_1min_accepts_the_account(tmp_path: Path) -> None:
    rig = make(tmp_path)
    assert await rig.dispatcher.line_waits() is None


@dataclass
class ClaimStore(LookStore):
    """A claim's statements: the claimable row is ``row``; claims and confirmations are
    recorded."""

    owner: str = "this-process"
    row: dict[str, Any] = field(default_factory=dict)
    claimed: list[str] = field(default_factory=list)
    confirmed: list[tuple[str, int]] = field(default_factory=list)

    async def count_live_leases(self, tx: object, now: float) -> int:
        return 0

    async def next_claimable(self, tx: object, now: float) -> dict[str, Any] | None:
        return self.row

    async def claim(self, tx: object, job_id: str, now: float, lease: float) -> bool:
        self.claimed.append(job_id)
        return True

    async def confirm_lease(
        self, job_id: str, claim: int, lease_until: float, *, tx: object = None
    ) -> bool:
        self.confirmed.append((job_id, claim))
        return True


async def test_a_job_whose_lease_lapsed_here_while_it_runs_is_kept_not_taken_over(
    tmp_path: Path,
) -> None:
    """This process was too slow to renew a job it still runs (a loop stalled under
    load): the dispatcher keeps the lease by the job's claim instead of taking the job
    over from itself, which would stop a paid call in flight and make it again."""
    store = ClaimStore()
    rig = make(tmp_path)
    rig.dispatcher._store = cast(Any, EveryGroup(store))  # the claim's statements, faked
    job = a_job(claims=2)
    running = asyncio.get_running_loop().create_future()
    rig.dispatcher._running[job.id] = cast(Any, running)
    rig.dispatcher._leases.hold(job, NOW - 1)
    store.row = {"id": job.id, "lease_owner": store.owner, "status": JobStatus.RUNNING}
    assert await rig.dispatcher._claim(time.time()) is None
    assert store.claimed == []
    assert store.confirmed == [(job.id, 2)]
    assert rig.dispatcher._leases.valid(job.id)
    running.cancel()
