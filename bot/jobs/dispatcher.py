"""The claim dispatcher: which jobs this process takes on, and when it looks for them.

Claims. The dispatcher takes the oldest waiting job (or one whose lease ran out) while
the fleet works on fewer than ``max_concurrent * CLAIM_AHEAD`` jobs, under a fleet-wide
lock; it also takes in again an intake whose process died. Each job it takes runs in a
task of its own (:mod:`bot.jobs.pipeline`); each intake is taken in again by
:class:`bot.jobs.intake.Intake`. It sleeps until woken (a job queued, a slot freed, a
job ended, the circuit changed: :mod:`bot.db.signals`) and looks again on its own only
every ``poll_interval`` seconds (:data:`bot.timings.FALLBACK_POLL`), with one cheap
read, so an idle process costs almost nothing.

Leases. A claim takes the job's lease; :class:`bot.jobs.leases.Leases` keeps what this
process holds and renews it every third of a lease, in a task the dispatcher starts and
stops with its own. A dead process wakes nobody, so the look before a claim also reads
when another process's next lease runs out, and the dispatcher looks again then if
nothing wakes it sooner.

The circuit. While 1min.ai refuses the bot's account (:mod:`bot.onemin.circuit`)
nothing is claimed: jobs wait in line, and are refunded once it has refused them for
longer than ``circuit_give_up``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from bot.db import Transaction
from bot.db.outages import report_db_outage
from bot.db.signals import Signal
from bot.db.transient import is_transient
from bot.failures import FailureKind
from bot.jobs.intake import INTAKE_CONCURRENCY, Intake
from bot.jobs.leases import Leases
from bot.jobs.model import (
    SLOT_STAGES,
    InputRefused,
    Job,
    JobFailure,
    JobStatus,
    Stage,
    failure_for,
)
from bot.jobs.parts import Part, Parts
from bot.jobs.pipeline import Pipeline
from bot.jobs.positions import Positions, WaitInfo
from bot.jobs.settlement import Settlement
from bot.jobs.slots import SlotLine
from bot.jobs.supervisor import Supervisor
from bot.jobs.waiting import ServiceWait
from bot.onemin.circuit import Circuit

log = logging.getLogger(__name__)

CLAIM_LOCK = "jobs:claim"
# Jobs worked on at once, per slot: while K jobs are with 1min.ai (uploading or
# upscaling), up to K more are claimed and wait for a slot with their input loaded, and
# downloads and deliveries overlap the next uploads and upscales. Bounds memory.
CLAIM_AHEAD = 2
# Seconds after another process's lease runs out before looking (clocks of a fleet's
# machines differ a little; a look that comes too early finds nothing and waits again).
LAPSE_MARGIN = 0.05


class Dispatcher(Part):
    """Claims jobs and starts their work in this process; see the module docstring."""

    def __init__(
        self,
        parts: Parts,
        *,
        intake: Intake,
        settlement: Settlement,
        positions: Positions,
        circuit: Circuit | None,
        leases: Leases,
        pipeline: Pipeline,
        slots: SlotLine,
        on_poll: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(parts)
        self._intake = intake
        self._settlement = settlement
        self._positions = positions
        self._circuit = circuit
        self._service = ServiceWait(
            parts, settlement=settlement, positions=positions, circuit=circuit
        )
        self._leases = leases
        self._pipeline = pipeline
        self._slots = slots
        self._on_poll = on_poll
        self._running: dict[str, asyncio.Task[None]] = {}
        self._intakes: dict[str, asyncio.Task[None]] = {}
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._supervisor = Supervisor(self._stopping)
        self._started = False
        self._claims = True
        self._intakes_may_lapse = True  # see _claim_round
        self._next_lapse: float | None = None  # see _until_next_look
        self.closed = False

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, *, claim: bool = True) -> None:
        """Renew leases and (with ``claim``) claim and run jobs."""
        if self._started:
            return
        self._started = True
        self._claims = claim
        self._supervisor.start("jobs-lease", lambda: self._leases.keep(self._stopping))
        self._supervisor.start("jobs-dispatch", self._dispatch)

    def on_signal(self, signal: Signal, payload: str) -> None:
        """A wake-up from the fleet (or this process): a freed slot wakes the head of the
        slot line; work queued, a job ended (room in the fleet) or the circuit changing
        wakes the dispatcher. Another process's claim changes nothing here."""
        if signal is Signal.SLOT:
            self._slots.freed()
        elif signal is not Signal.CLAIMED:
            self._wakeup.set()

    @property
    def busy(self) -> bool:
        return bool(self._running or self._intakes)

    @property
    def in_flight(self) -> int:
        return len(self._running) + len(self._intakes)

    def running(self, job_id: str) -> bool:
        return job_id in self._running

    def stop_job(self, job_id: str) -> None:
        """Stop this process's work on a job settled elsewhere (e.g. cancelled)."""
        task = self._running.get(job_id) or self._intakes.get(job_id)
        if task is not None:
            task.cancel()

    async def stop(self, grace: float, *, hand_back: bool = True) -> list[Job]:
        """Stop claiming; running work gets ``grace`` s; the rest is handed back.

        Returns the jobs handed back (their members are told by the caller). Without
        ``hand_back`` their leases are left to run out, as a process that died would
        leave them.
        """
        self.closed = True
        self._wakeup.set()
        self._stopping.set()
        # The dispatcher and the lease renewal stop by themselves (they check closed and
        # stopping): cancelling one in the middle of a database transaction would leave
        # it open.
        await self._supervisor.join()
        work = [*self._running.values(), *self._intakes.values()]
        if work:
            _, still = await asyncio.wait(work, timeout=grace)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        return await self._leases.release_all() if hand_back else []

    # -- looking -----------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while not self.closed:
            self._wakeup.clear()
            try:
                started = await self._claim_round()
            except Exception as exc:
                report_db_outage(log, "claiming a job", exc)
                started = False
            if started:
                continue
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._until_next_look())
            except TimeoutError:
                # Nothing woke us for a while, or another process's lease ran out: look
                # around as the wake-ups would have made us (a notification may have
                # been lost, and a dead process sends none).
                self._intakes_may_lapse = True
                if self._on_poll is not None:
                    try:
                        await self._on_poll()
                    except Exception as exc:
                        report_db_outage(log, "reading the queue", exc)

    def _until_next_look(self) -> float:
        """Seconds until the dispatcher looks on its own: the fallback interval, or less
        when another process's lease runs out sooner (a process that dies wakes nobody)."""
        wait = self._config.poll_interval
        lapse, self._next_lapse = self._next_lapse, None
        if lapse is not None:
            wait = min(wait, max(0.0, lapse - time.time()) + LAPSE_MARGIN)
        return wait

    async def _claim_round(self) -> bool:
        """Claim and start what this process can now; True when it started something.

        Nothing is read while this process has no room for more work. Otherwise one
        cheap read first says whether a claim's transaction is worth making (most
        wake-ups in a busy fleet are about jobs other processes hold). Intakes lapse
        only when a process dies or restarts, so they are looked for at start, on the
        slow fallback look, and while the last look found some.
        """
        job_room = len(self._running) < self._config.max_concurrent * CLAIM_AHEAD
        intake_room = self._intakes_may_lapse and len(self._intakes) < INTAKE_CONCURRENCY
        if not self._claims or not (job_room or intake_room) or await self._service.refusing():
            return False
        now = time.time()
        look = await self._store.claims.anything_to_claim(now)
        jobs, intakes = look.jobs, look.intakes
        self._intakes_may_lapse = intakes
        self._next_lapse = look.next_lapse
        started = False
        if intakes and intake_room:
            intake = await self._claim_intake(now)
            if intake is not None:
                self._start_intake(intake)
                started = True
        if jobs and job_room:
            job = await self._claim(now)
            if job is not None:
                self._start(job)
                started = True
        return started

    async def line_waits(self) -> WaitInfo:
        """Why the whole line waits, and until when at most (see :mod:`bot.jobs.waiting`)."""
        return await self._service.line_waits()

    # -- claiming ----------------------------------------------------------------------

    async def _claim(self, now: float) -> Job | None:
        """Take the oldest waiting job (or one whose lease ran out) if the fleet works on
        fewer than ``max_concurrent * CLAIM_AHEAD`` jobs (upscales themselves are limited
        to ``max_concurrent`` by the slot line: :mod:`bot.jobs.slots`)."""
        async with self._db.transaction() as tx:
            await tx.lock(CLAIM_LOCK)
            if (
                await self._store.claims.count_live_leases(tx, now)
                >= self._config.max_concurrent * CLAIM_AHEAD
            ):
                return None
            row = await self._store.claims.next_claimable(tx, now)
            if row is None:
                return None
            if row["id"] in self._running and row["lease_owner"] == self._store.owner:
                # Its lease lapsed here (this process was too slow to renew it) but its run
                # goes on: keep the lease instead of taking the job over from ourselves,
                # which would stop a paid call in flight and make it again.
                await self._keep_own(tx, row["id"], now)
                return None
            if not await self._store.claims.claim(tx, row["id"], now, self._config.lease):
                self._wakeup.set()  # cancelled meanwhile: look again at once
                return None
            await self._signals.send(Signal.CLAIMED, row["id"], tx=tx)
            if row["status"] == JobStatus.RUNNING and row["stage"] in SLOT_STAGES:
                # Taken over from a dead process that held a slot: the slot is free now
                # (a dead process frees nothing itself), for whoever waits first.
                await self._signals.send(Signal.SLOT, tx=tx)
        job = Job.from_row(row)
        job.lease_until = now + self._config.lease
        took_over = row["status"] == JobStatus.RUNNING
        job.status = JobStatus.RUNNING
        job.claims += 1
        job.resumed = bool(row["resume_notice"]) or took_over
        job.resumed_from = job.stage
        if job.stage in SLOT_STAGES:
            job.stage = Stage.QUEUED  # no slot until the slot line gives it one (see CLAIM)
        if took_over:
            log.info("Took over job %s (its lease ran out)", job.id)
        return job

    async def _keep_own(self, tx: Transaction, job_id: str, now: float) -> None:
        job = self._leases.job(job_id)
        if job is None:
            return
        until = now + self._config.lease
        if await self._store.runs.confirm_lease(job_id, job.claims, until, tx=tx):
            log.info("Job %s: its lapsed lease still holds here; kept", job_id)
            self._leases.extended(job, until)
        self._wakeup.set()  # look again at once: another job may be claimable

    async def _claim_intake(self, now: float) -> Job | None:
        """Take over an intake whose process died (its lease ran out)."""
        async with self._db.transaction() as tx:
            await tx.lock(CLAIM_LOCK)
            row = await self._store.claims.next_lapsed_intake(tx, now)
            if row is None or not await self._store.claims.claim_intake(
                tx, row["id"], now, self._config.lease
            ):
                return None
        job = Job.from_row(row)
        job.claims += 1
        job.resumed = True
        log.info("Taking in job %s again (its intake was cut off)", job.id)
        return job

    def _start(self, job: Job) -> None:
        stale = self._running.get(job.id)
        if stale is not None:
            # This process took over its own job: its lease lapsed while the database did
            # not answer. The old run lost its claim (its writes change nothing); stop it.
            log.info("Job %s: its earlier run here lost its lease and stops", job.id)
            stale.cancel()
        self._positions.unwatch(job.id)
        self._reporter.started(job)
        task = asyncio.create_task(self._pipeline.run(job), name=f"upscale-job-{job.id[:8]}")
        self._running[job.id] = task
        self._leases.hold(job, job.lease_until)
        task.add_done_callback(lambda done: self._finished(job, done))
        self._positions.refresh_soon()

    def _finished(self, job: Job, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # The pipeline settles or stops every job itself: this is a bug.
            log.error("Job %s's run ended by an error", job.id, exc_info=task.exception())
        if self._running.get(job.id) is task:
            del self._running[job.id]
            self._reporter.left(job.id)
        self._leases.release(job)
        self._wakeup.set()
        if job.stage in SLOT_STAGES:
            self._slots.freed()  # it ended (failed, stopped) while it held a slot

    def _start_intake(self, job: Job) -> None:
        stale = self._intakes.get(job.id)
        if stale is not None:
            stale.cancel()  # its earlier intake here lost its lease (see _start)
        task = asyncio.create_task(self._resume_intake(job), name=f"intake-{job.id[:8]}")
        self._intakes[job.id] = task
        self._leases.hold_intake(job.id)
        task.add_done_callback(lambda done: self._intake_done(job.id, done))

    def _intake_done(self, job_id: str, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("The intake of job %s ended by an error", job_id, exc_info=task.exception())
        if self._intakes.get(job_id) is task:
            del self._intakes[job_id]
            self._leases.release_intake(job_id)
        self._wakeup.set()

    async def _resume_intake(self, job: Job) -> None:
        """Take in again the image of a job whose intake was cut off."""
        await self._reporter.tell_resumed(job)
        try:
            await self._intake.take_in(job)
        except InputRefused as exc:
            await self._reporter.tell_failed(job, failure_for(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if failure_for(exc).kind is FailureKind.BUG and is_transient(exc):
                report_db_outage(log, "taking a job's image in", exc)  # its lease lapses
                return
            log.error("Intake of job %s failed unexpectedly", job.id, exc_info=exc)
            await self._settlement.fail_and_tell(job, JobFailure(FailureKind.BUG), exc)
