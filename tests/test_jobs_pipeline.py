"""The work pipeline alone (:mod:`bot.jobs.pipeline`): fakes instead of 1min.ai, the
database, the image worker and the settlement.

The fake store records every write that moves a job forward (its stage, what it
produced, and whether it was made inside the slot's transaction); what the tests check
is which calls the pipeline makes for a job in each recorded state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bot.db.signals import Signal
from bot.failures import FailureKind
from bot.images.imagework import ResultCheck
from bot.jobs import Job, JobFailure, JobResult, JobStatus, Stage
from bot.jobs.leases import Leases
from bot.jobs.pipeline import SLOT_LOCK, Pipeline
from bot.jobs.slots import SlotLine
from bot.onemin.client import TimedOut, Unauthorized
from tests.support.job_parts import Bundle, a_job, config, parts_with

INPUT = b"the prepared input"
RESULT = b"the upscaled result"


@dataclass(frozen=True)
class Write:
    """One forward write: the stage, what it recorded, whether inside a transaction."""

    stage: Stage
    produced: tuple[str | None, str | None, str | None] = (None, None, None)
    in_tx: bool = False


@dataclass
class PipelineStore:
    """The statements the pipeline makes; ``refuse`` names a stage whose write finds the
    job no longer this process's (cancelled, taken over)."""

    slots_taken_now: int = 0
    refuse: Stage | None = None
    writes: list[Write] = field(default_factory=list)
    handed_back: list[tuple[str, str]] = field(default_factory=list)
    outages: int = 0  # the next forward writes that meet a database outage
    stored: dict[str, Any] = field(default_factory=dict)  # products kept since the claim
    salvaged: list[tuple[str | None, str | None, str | None]] = field(default_factory=list)
    taken_over: bool = False  # a lapsed lease's confirmation fails
    confirms: int = 0

    async def count_slots_taken(self, tx: object, job_id: str, now: float) -> int:
        return self.slots_taken_now

    async def advance(
        self,
        job_id: str,
        claim: int,
        stage: Stage,
        *,
        lease_until: float,
        tx: object = None,
        asset_path: str | None = None,
        result_url: str | None = None,
        record_id: str | None = None,
    ) -> bool:
        if self.outages:
            self.outages -= 1
            raise ConnectionResetError("the database went away")
        if stage is self.refuse or self.taken_over:
            return False
        self.writes.append(Write(stage, (asset_path, result_url, record_id), tx is not None))
        return True

    async def products(self, tx: object, job_id: str) -> dict[str, Any]:
        return {"asset_path": None, "result_url": None, "record_id": None, **self.stored}

    async def salvage(
        self,
        job_id: str,
        *,
        asset_path: str | None = None,
        result_url: str | None = None,
        record_id: str | None = None,
    ) -> bool:
        self.salvaged.append((asset_path, result_url, record_id))
        return True

    async def confirm_lease(self, job_id: str, claim: int, lease_until: float) -> bool:
        self.confirms += 1
        return not self.taken_over

    async def renew(self, lease_until: float, now: float) -> int:
        return 1

    async def read_input(self, job_id: str) -> bytes | None:
        return INPUT

    async def hand_back(self, job_id: str, claim: int, why: str) -> bool:
        self.handed_back.append((job_id, why))
        return True


@dataclass(frozen=True)
class Record:
    record_uuid: str
    temporary_url: str


@dataclass
class FakeOneMin:
    """1min.ai as the pipeline calls it: every call recorded; ``refusing`` raises it."""

    uploads: list[bytes] = field(default_factory=list)
    upscales: list[str] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    refusing: Exception | None = None
    # The next upscale calls whose pacing gate (the fleet's rate window, in the database)
    # meets an outage before the request is sent; ``during_outage`` runs at each.
    gate_outages: int = 0
    during_outage: Callable[[], None] | None = None

    async def upload(self, data: bytes, filename: str, content_type: str) -> str:
        self.uploads.append(data)
        return "asset/uploaded"

    async def upscale(self, asset_path: str, output_format: str = "png") -> Record:
        if self.gate_outages:
            self.gate_outages -= 1
            if self.during_outage is not None:
                self.during_outage()
            raise ConnectionRefusedError("the database refused the rate window's write")
        self.upscales.append(asset_path)
        if self.refusing is not None:
            raise self.refusing
        return Record("record-new", "https://cdn.example/result-new.png")

    async def download_to(self, url: str, path: Path, max_bytes: int) -> int:
        self.downloads.append(url)
        await asyncio.to_thread(path.write_bytes, RESULT)
        return len(RESULT)


class FakeWorkers:
    async def check_result(
        self, result: Path, input_image: bytes | None, input_size: tuple[int, int]
    ) -> ResultCheck:
        return ResultCheck("png", (256, 192), None, "no crops in these tests")


@dataclass
class FakeSettlement:
    """Records how jobs ended: delivered (with the posted message) or failed."""

    settled: list[tuple[str, int | None]] = field(default_factory=list)
    failures: list[tuple[str, JobFailure]] = field(default_factory=list)

    async def settle_delivery(
        self, job: Job, result: JobResult | None, message_id: int | None
    ) -> bool:
        self.settled.append((job.id, message_id))
        return True

    async def fail_and_tell(
        self, job: Job, failure: JobFailure, exc: BaseException | None = None
    ) -> bool:
        self.failures.append((job.id, failure))
        return True


@dataclass
class FakePositions:
    watched: list[str] = field(default_factory=list)

    def watch(self, job: Job) -> None:
        self.watched.append(job.id)

    async def refresh(self) -> None:
        pass


@dataclass
class FakeCircuit:
    tripped: list[FailureKind] = field(default_factory=list)

    async def trip(self, reason: FailureKind) -> None:
        self.tripped.append(reason)


class IdleIntake:
    busy = False


@dataclass
class Rig:
    pipeline: Pipeline
    store: PipelineStore
    onemin: FakeOneMin
    settlement: FakeSettlement
    positions: FakePositions
    circuit: FakeCircuit
    slots: SlotLine
    bundle: Bundle
    leases: Leases

    async def run(self, job: Job, *, lease_ends_in: float = 30.0) -> None:
        """Run ``job`` as the dispatcher would: held here, its lease ending so soon."""
        self.leases.hold(job, time.time() + lease_ends_in)
        await self.pipeline.run(job)


def make(tmp_path: Path, *, circuit: bool = True) -> Rig:
    store = PipelineStore()
    onemin = FakeOneMin()
    settlement = FakeSettlement()
    positions = FakePositions()
    breaker = FakeCircuit()
    bundle = parts_with(store, config(max_concurrent=2), tmp_path)
    slots = SlotLine(slots=2, poll_interval=3600.0)
    leases = Leases(bundle.parts, intake=cast(Any, IdleIntake()))
    pipeline = Pipeline(
        bundle.parts,
        onemin=cast(Any, onemin),
        settlement=cast(Any, settlement),
        positions=cast(Any, positions),
        image_workers=cast(Any, FakeWorkers()),
        circuit=cast(Any, breaker) if circuit else None,
        slots=slots,
        leases=leases,
    )
    return Rig(pipeline, store, onemin, settlement, positions, breaker, slots, bundle, leases)


NEW_URL = "https://cdn.example/result-new.png"
STORED_URL = "https://cdn.example/result-stored.png"


async def test_a_new_job_is_uploaded_upscaled_downloaded_and_delivered(tmp_path: Path) -> None:
    rig = make(tmp_path)
    job = a_job()
    await rig.run(job)
    assert rig.onemin.uploads == [INPUT]
    assert rig.onemin.upscales == ["asset/uploaded"]
    assert rig.onemin.downloads == [NEW_URL]
    assert rig.settlement.settled == [(job.id, rig.bundle.front.message_id)]


async def test_each_stage_is_recorded_with_what_it_produced(tmp_path: Path) -> None:
    """The asset when it moves to upscaling, the result's URL and record when it moves
    to downloading: what a job cut off later continues from."""
    rig = make(tmp_path)
    await rig.run(a_job())
    assert rig.store.writes == [
        Write(Stage.UPLOADING, in_tx=True),
        Write(Stage.UPSCALING, ("asset/uploaded", None, None)),
        Write(Stage.DOWNLOADING, (None, NEW_URL, "record-new")),
        Write(Stage.DELIVERING),
    ]


async def test_the_slot_is_taken_under_the_slot_lock_with_its_stage_write(tmp_path: Path) -> None:
    """Counting the slots taken and moving the job into one is one transaction under
    the fleet-wide slot lock, so two processes cannot both take the last slot."""
    rig = make(tmp_path)
    await rig.run(a_job())
    assert [tx.locks for tx in rig.bundle.db.transactions] == [[SLOT_LOCK]]
    assert rig.store.writes[0] == Write(Stage.UPLOADING, in_tx=True)


async def test_a_stored_asset_is_upscaled_without_a_second_upload(tmp_path: Path) -> None:
    """A job resumed after its upload takes a slot straight into upscaling."""
    rig = make(tmp_path)
    job = a_job(asset_path="asset/stored", resumed=True, resumed_from=Stage.UPSCALING)
    await rig.run(job)
    assert rig.onemin.uploads == []
    assert rig.onemin.upscales == ["asset/stored"]
    assert rig.store.writes[0] == Write(Stage.UPSCALING, in_tx=True)
    assert rig.settlement.settled == [(job.id, rig.bundle.front.message_id)]


async def test_a_stored_result_url_is_downloaded_without_calling_the_upscaler(
    tmp_path: Path,
) -> None:
    """A job resumed after its upscale was recorded takes no slot and calls 1min.ai only
    for the download of its stored result."""
    rig = make(tmp_path)
    job = a_job(
        asset_path="asset/stored",
        result_url=STORED_URL,
        record_id="record-stored",
        resumed=True,
        resumed_from=Stage.DOWNLOADING,
    )
    await rig.run(job)
    assert (rig.onemin.uploads, rig.onemin.upscales) == ([], [])
    assert rig.onemin.downloads == [STORED_URL]
    assert rig.bundle.db.transactions == []
    assert rig.store.writes == [Write(Stage.DOWNLOADING), Write(Stage.DELIVERING)]
    assert rig.settlement.settled == [(job.id, rig.bundle.front.message_id)]


async def test_a_job_waits_for_a_slot_while_every_slot_is_taken(tmp_path: Path) -> None:
    """Told it waits, it calls nothing until a slot is freed."""
    rig = make(tmp_path)
    rig.store.slots_taken_now = 2
    job = a_job()
    running = asyncio.create_task(rig.run(job))
    async with asyncio.timeout(5):
        while Stage.WAITING not in rig.bundle.front.stages(job.id):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert rig.onemin.uploads == [] and rig.store.writes == []
    rig.store.slots_taken_now = 1
    rig.slots.freed()
    async with asyncio.timeout(5):
        await running
    assert rig.onemin.uploads == [INPUT]


async def test_a_job_refused_its_slot_write_stops_before_calling_1min(tmp_path: Path) -> None:
    """Cancelled (or taken over) while it waited for a slot: it stops, unsettled here."""
    rig = make(tmp_path)
    rig.store.refuse = Stage.UPLOADING
    await rig.run(a_job())
    assert (rig.onemin.uploads, rig.onemin.upscales) == ([], [])
    assert (rig.settlement.settled, rig.settlement.failures) == ([], [])


async def test_a_job_refused_a_stage_write_stops_at_that_stage(tmp_path: Path) -> None:
    """Taken over after its upload: it does not upscale, and settles nothing."""
    rig = make(tmp_path)
    rig.store.refuse = Stage.UPSCALING
    await rig.run(a_job())
    assert rig.onemin.uploads == [INPUT] and rig.onemin.upscales == []
    assert (rig.settlement.settled, rig.settlement.failures) == ([], [])


async def test_1min_refusing_the_account_opens_the_circuit_and_hands_the_job_back(
    tmp_path: Path,
) -> None:
    """Not the job's fault: it waits in line again (watched here, the fleet woken, its
    slot freed), its progress kept, and nothing is refunded."""
    rig = make(tmp_path)
    rig.onemin.refusing = Unauthorized("key refused", status=401)
    job = a_job()
    await rig.run(job)
    assert rig.circuit.tripped == [FailureKind.UNAUTHORIZED]
    assert rig.store.handed_back == [(job.id, "1min.ai refused: unauthorized")]
    assert job.status is JobStatus.QUEUED and job.stage is Stage.UPSCALING
    assert rig.positions.watched == [job.id]
    assert rig.bundle.signals.kinds() == [Signal.QUEUED, Signal.SLOT]
    assert rig.settlement.failures == []


async def test_without_a_circuit_1min_refusing_the_account_fails_the_job(tmp_path: Path) -> None:
    rig = make(tmp_path, circuit=False)
    rig.onemin.refusing = Unauthorized("key refused", status=401)
    job = a_job()
    await rig.run(job)
    assert [(j, f.kind) for j, f in rig.settlement.failures] == [(job.id, FailureKind.UNAUTHORIZED)]
    assert rig.store.handed_back == []


async def test_the_result_file_is_removed_when_the_run_ends(tmp_path: Path) -> None:
    rig = make(tmp_path)
    job = a_job()
    await rig.run(job)
    assert rig.onemin.downloads == [NEW_URL]
    assert not rig.pipeline.result_path(job).exists()


# -- a database that blinks, and a worker that lost its job ------------------------------


async def test_a_forward_write_met_by_an_outage_is_tried_again_and_the_job_delivered(
    tmp_path: Path,
) -> None:
    """The database does not answer three times: the job waits instead of dying, and
    1min.ai is called once."""
    rig = make(tmp_path)
    rig.store.outages = 3
    job = a_job()
    await rig.run(job)
    assert rig.onemin.upscales == ["asset/uploaded"]
    assert rig.settlement.settled == [(job.id, rig.bundle.front.message_id)]
    assert rig.settlement.failures == []


async def test_an_upscale_whose_pacing_meets_an_outage_waits_and_is_made_once(
    tmp_path: Path,
) -> None:
    """The fleet's rate window (in the database) does not answer twice before the
    upscale is sent: the job waits the outage out instead of dying, and is upscaled and
    delivered once."""
    rig = make(tmp_path)
    rig.onemin.gate_outages = 2
    job = a_job()
    await rig.run(job)
    assert rig.onemin.upscales == ["asset/uploaded"]
    assert rig.settlement.settled == [(job.id, rig.bundle.front.message_id)]
    assert rig.settlement.failures == []


async def test_an_upscale_that_waited_out_an_outage_is_not_sent_for_a_job_taken_over(
    tmp_path: Path,
) -> None:
    """While the upscale waits out an outage in the rate window, the job's lease lapses
    and another process takes it: the lease is confirmed before the call is tried again,
    so this process calls nothing and posts nothing."""
    rig = make(tmp_path)
    job = a_job()

    def lapse_and_take_over() -> None:
        rig.leases.hold(job, time.time() - 1.0)  # its renewals failed meanwhile
        rig.store.taken_over = True

    rig.onemin.gate_outages = 1
    rig.onemin.during_outage = lapse_and_take_over
    await rig.run(job)
    assert rig.onemin.upscales == []
    assert rig.bundle.front.posted == []
    assert (rig.settlement.settled, rig.settlement.failures) == ([], [])


async def test_an_upscale_that_timed_out_is_failed_not_tried_again_as_an_outage(
    tmp_path: Path,
) -> None:
    """1min.ai's time-out is raised from a TimeoutError, as a database's would be; it is
    the paid call's own failure: the job fails as a time-out after one call, never
    repeated as if the database had blinked."""
    rig = make(tmp_path)
    timed_out = TimedOut("1min.ai did not answer within 1 s")
    timed_out.__cause__ = TimeoutError()
    rig.onemin.refusing = timed_out
    job = a_job()
    await rig.run(job)
    assert rig.onemin.upscales == ["asset/uploaded"]
    assert [(j, f.kind) for j, f in rig.settlement.failures] == [(job.id, FailureKind.TIMEOUT)]


async def test_a_paid_result_the_job_lost_is_kept_for_its_new_holder(tmp_path: Path) -> None:
    """Taken over while its upscale ran: the write that names its claim fails, and what
    the paid call made is kept with the job instead of thrown away."""
    rig = make(tmp_path)
    rig.store.refuse = Stage.DOWNLOADING
    await rig.run(a_job())
    assert rig.onemin.upscales == ["asset/uploaded"]
    assert rig.store.salvaged == [(None, NEW_URL, "record-new")]
    assert rig.onemin.downloads == [] and rig.settlement.settled == []


async def test_a_result_kept_by_the_jobs_previous_worker_is_not_paid_for_again(
    tmp_path: Path,
) -> None:
    """The row read again with the slot holds a result the previous worker kept: no
    upload, no upscale; the kept result is downloaded and delivered."""
    rig = make(tmp_path)
    rig.store.stored = {"asset_path": "asset/old", "result_url": STORED_URL, "record_id": "r"}
    job = a_job()
    await rig.run(job)
    assert (rig.onemin.uploads, rig.onemin.upscales) == ([], [])
    assert rig.onemin.downloads == [STORED_URL]
    assert rig.settlement.settled == [(job.id, rig.bundle.front.message_id)]


async def test_a_worker_whose_lease_lapsed_and_was_taken_over_calls_nothing(
    tmp_path: Path,
) -> None:
    """Its lease lapsed (renewals failed) and another process took the job: its next
    write names its claim and changes nothing, and it stops: no upscale, no delivery."""
    rig = make(tmp_path)
    rig.store.taken_over = True
    job = a_job(asset_path="asset/stored", resumed=True, resumed_from=Stage.UPSCALING)
    await rig.run(job, lease_ends_in=-1.0)
    assert rig.onemin.upscales == []
    assert rig.bundle.front.posted == []
    assert (rig.settlement.settled, rig.settlement.failures) == ([], [])


async def test_a_lapsed_lease_nobody_took_is_kept_by_the_next_write_and_the_job_goes_on(
    tmp_path: Path,
) -> None:
    rig = make(tmp_path)
    job = a_job(asset_path="asset/stored", resumed=True, resumed_from=Stage.UPSCALING)
    await rig.run(job, lease_ends_in=-1.0)
    assert rig.onemin.upscales == ["asset/stored"]
    assert rig.settlement.settled == [(job.id, rig.bundle.front.message_id)]


async def test_progress_is_not_shown_by_a_worker_whose_lease_is_not_known_to_hold(
    tmp_path: Path,
) -> None:
    rig = make(tmp_path)
    rig.store.taken_over = True
    job = a_job(asset_path="asset/stored", resumed=True, resumed_from=Stage.UPSCALING)
    await rig.run(job, lease_ends_in=-1.0)
    assert rig.bundle.front.stages(job.id) == []
