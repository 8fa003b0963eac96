"""The job queue's front door: the small facade the cogs and services use.

The cogs drive a job like this::

    job = await queue.accept(request)   # recorded + reserved at once; QueueFull, LimitReached
    await queue.take_in(job)            # fetch and check the image; InputRefused

and implement :class:`~bot.jobs.model.FrontEnd` (once, for every job, in any process)
to show progress, deliver the result, find a result already delivered, and report a
failure. Everything else happens inside the package, each part in its own module:
:mod:`~bot.jobs.intake`, :mod:`~bot.jobs.runner` (claims, leases, slots, the
pipeline), :mod:`~bot.jobs.positions`, :mod:`~bot.jobs.settlement`,
:mod:`~bot.jobs.recovery` (start-up and housekeeping), over :mod:`~bot.jobs.store`
(every statement on the job tables) and :mod:`bot.db.signals` (wake-ups across the fleet).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Collection
from pathlib import Path

from bot.db import Database
from bot.db.signals import Signal, Signals
from bot.images import compare
from bot.images.workers import ImageWorkers
from bot.jobs.config import QueueConfig
from bot.jobs.intake import FetchSource, Intake
from bot.jobs.metrics import NO_JOB_METRICS, JobMetrics
from bot.jobs.model import (
    CancelOutcome,
    FrontEnd,
    Job,
    JobRequest,
    JobStatus,
    Stage,
)
from bot.jobs.parts import Parts
from bot.jobs.positions import Positions
from bot.jobs.recovery import Recovery
from bot.jobs.report import Reporter
from bot.jobs.runner import Runner
from bot.jobs.settlement import ChargedListener, Settlement
from bot.jobs.store import JobStore
from bot.jobs.supervisor import Supervisor
from bot.jobs.trail import JobTrail, find_trail
from bot.ledger import Ledger
from bot.onemin.circuit import Circuit
from bot.onemin.client import OneMinClient

log = logging.getLogger(__name__)


def instance_name(shard_ids: Collection[int] | None = None) -> str:
    """This process's stable name in the fleet: host and shards.

    A process that restarts under the same name takes its own unfinished jobs back at
    once instead of waiting for their leases to run out.
    """
    shards = ",".join(str(s) for s in sorted(shard_ids)) if shard_ids else "all"
    return f"{socket.gethostname()}/{shards}"


async def _no_fetch(url: str, path: Path, max_bytes: int) -> int:
    raise RuntimeError("this queue was built without a way to fetch images")


class JobQueue:
    """Runs at most ``max_concurrent`` jobs fleet-wide; each member at most ``max_per_member``."""

    def __init__(
        self,
        *,
        db: Database,
        ledger: Ledger,
        onemin: OneMinClient,
        spool_dir: Path,
        config: QueueConfig,
        fetch_source: FetchSource = _no_fetch,
        instance: str | None = None,
        circuit: Circuit | None = None,
        image_workers: ImageWorkers | None = None,
        signals: Signals | None = None,
        metrics: JobMetrics = NO_JOB_METRICS,
    ) -> None:
        self.instance = instance or instance_name()
        self.owner = f"{self.instance}:{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self.config = config
        self.spool_dir = spool_dir
        self.circuit = circuit
        self._db = db
        self._ledger = ledger
        self._own_workers = image_workers is None  # closed here only if made here
        self.image_workers = image_workers or ImageWorkers()
        self.signals = signals or Signals(db)
        self._own_signals = signals is None
        self.store = JobStore(db, owner=self.owner)
        self._reporter = Reporter(self.owner, metrics)
        parts = Parts(db, self.store, ledger, self.signals, self._reporter, config, spool_dir)
        self._settlement = Settlement(parts)
        self._positions = Positions(
            self.store.views, self._reporter, lambda: self._runner.line_waits()
        )
        self._intake = Intake(
            parts,
            positions=self._positions,
            settlement=self._settlement,
            fetch=fetch_source,
            closed=lambda: self._closed,
        )
        self._runner = Runner(
            parts,
            onemin=onemin,
            intake=self._intake,
            settlement=self._settlement,
            positions=self._positions,
            image_workers=self.image_workers,
            circuit=circuit,
            on_poll=self._positions.refresh_if_watching,
        )
        self._recovery = Recovery(parts, settlement=self._settlement, instance=self.instance)
        self.signals.subscribe(self._on_signal)
        self._stopping = asyncio.Event()
        self._supervisor = Supervisor(self._stopping)
        self._signals_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- wiring ------------------------------------------------------------------------

    @property
    def max_per_member(self) -> int:
        return self.config.max_per_member

    @property
    def front_end(self) -> FrontEnd | None:
        return self._reporter.front_end

    def attach(self, front_end: FrontEnd) -> None:
        self._reporter.front_end = front_end

    def subscribe_charged(self, listener: ChargedListener) -> None:
        """Call ``listener`` after a job's credit is charged (e.g. for budget alerts)."""
        self._settlement.subscribe_charged(listener)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, *, claim: bool = True) -> None:
        """Create the spool directory and start claiming jobs, renewing leases, listening
        for wake-ups and keeping the tables small.

        Without ``claim`` this process records jobs and shows their places in line but
        runs none: the other processes of the fleet run them.
        """
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        if self._signals_task is not None:
            return
        self._runner.start(claim=claim)
        self._signals_task = asyncio.create_task(self.signals.start(), name="jobs-signals")
        self._supervisor.start("jobs-housekeeping", lambda: self._recovery.run(self._stopping))
        circuit = self.circuit
        if circuit is not None:
            self._supervisor.start("jobs-circuit", lambda: circuit.run(self._stopping))

    async def shutdown(self, grace: float = 10.0, *, hand_back: bool = True) -> None:
        """Stop taking work; running jobs get ``grace`` s, the rest wait for the next start.

        Nothing is refunded: queued jobs stay queued, and jobs stopped mid-way are handed
        back (their lease released) with their recorded progress, so the next start, or
        another process of the fleet, continues them. Their members are told. Without
        ``hand_back`` nothing is written: the leases run out as if the process had died.
        """
        self._closed = True
        self._stopping.set()
        stopped = await self._runner.stop(grace, hand_back=hand_back)
        await self._supervisor.join()
        if self._signals_task is not None:
            await asyncio.gather(self._signals_task, return_exceptions=True)
        if self._own_workers:
            await self.image_workers.close()
        if stopped:
            await self.signals.send(Signal.QUEUED)
        if self._own_signals:
            await self.signals.close()
        for job in stopped:
            # A job stopped while delivering may already show its result: the next
            # start looks for it first, and a notice here could replace it.
            if job.stage is not Stage.DELIVERING:
                await self._reporter.tell_paused(job)
        if stopped:
            log.info("%d jobs will continue at the next start", len(stopped))

    async def recover(self, *, single_process: bool) -> list[Job]:
        """At start-up: take this instance's jobs back, refund what cannot be finished
        (see :mod:`bot.jobs.recovery`). Returns the jobs refunded."""
        return await self._recovery.recover(single_process=single_process)

    async def purge(self) -> tuple[int, int]:
        """Delete finished jobs past retention and old Compare crops now."""
        return await self._recovery.purge()

    # -- a job -------------------------------------------------------------------------

    async def accept(self, request: JobRequest) -> Job:
        """Record the job and reserve its credits (see :meth:`bot.jobs.intake.Intake.accept`)."""
        return await self._intake.accept(request)

    async def take_in(self, job: Job) -> bool:
        """Fetch, check and store the job's image (see :meth:`bot.jobs.intake.Intake.take_in`)."""
        return await self._intake.take_in(job)

    def position(self, job: Job) -> int | None:
        """1-based place in line as last seen, or None when the job no longer waits."""
        return self._positions.position(job.id)

    async def shows(self, job_id: str) -> bool:
        """True while this process may show the job's progress: it waits in line (or is
        being taken in), or this process runs it. A front end asks before each late edit,
        so that nothing overwrites a result another process posted.

        A job this process runs needs no read: it shows it while its lease is known to
        hold (:meth:`acting_until`); a job it lost (taken over after a stall) stops at its
        next recorded stage.
        """
        if self._runner.holds(job_id):
            until = self._runner.acting_until(job_id)
            return until is not None and time.time() < until
        state = await self.store.views.shown_state(job_id)
        if state is None:
            return False
        status, owner = state
        if status in (JobStatus.INTAKE, JobStatus.QUEUED):
            return True
        return status is JobStatus.RUNNING and owner == self.owner

    def acting_until(self, job_id: str) -> float | None:
        """Until when (``time.time()``) this process may edit the member's reply of a
        job it runs (its lease end known to hold, less a margin); None when it does not
        run the job. A front end bounds each edit by it, retries included."""
        return self._runner.acting_until(job_id)

    async def forget_token(self, job_id: str) -> None:
        """Discord refused the job's interaction token: erase it, so that every process
        answers its member through the channel and none tries the token again."""
        await self.store.views.forget_token(job_id)

    async def cancel(self, job_id: str, actor_id: int, *, moderator: bool) -> CancelOutcome:
        """Cancel and refund a job not yet sent to the upscaler (requester or moderator)."""
        outcome = await self._settlement.cancel(job_id, actor_id, moderator=moderator)
        if outcome is CancelOutcome.CANCELLED:
            await self.signals.send(Signal.CANCELLED, job_id)
            self._stopped(job_id)
            await self._reporter.stop_showing(job_id)
            await self._positions.refresh()
        return outcome

    async def compare_crops(self, job_id: str) -> compare.CompareCrops | None:
        """What a delivered job keeps for Compare (kept a week and a day), or None."""
        return await self.store.views.read_crops(job_id)

    async def trail(self, shown_id: str) -> JobTrail | None:
        """A job by the id shown in a result's footer (or whole), with its trail, its
        outcome and its credits; None when no job, or more than one, has that id."""
        return await find_trail(self.store, self._ledger, shown_id)

    # -- wake-ups ----------------------------------------------------------------------

    def _on_signal(self, signal: Signal, payload: str) -> None:
        self._runner.on_signal(signal, payload)
        if signal is Signal.CIRCUIT and self.circuit is not None:
            self.circuit.forget()
        if signal is Signal.CANCELLED and self._runner.running(payload):
            self._runner.stop_job(payload)  # cancelled in another process: stop its upload
        if signal is not Signal.SLOT:
            self._positions.refresh_soon()

    def _stopped(self, job_id: str) -> None:
        self._positions.unwatch(job_id)
        self._runner.stop_job(job_id)

    # -- observation -------------------------------------------------------------------

    def count_watched(self) -> int:
        """Jobs this process shows a place in line for."""
        return len(self._positions)

    async def count_member_unfinished(self, guild_id: int, member_id: int) -> int:
        """Jobs the member has unfinished (being taken in, waiting or running)."""
        return await self.store.intake.count_member_unfinished(self._db, guild_id, member_id)

    async def count_waiting(self) -> int:
        """Jobs waiting in line anywhere in the fleet (not yet claimed by a process)."""
        return await self.store.views.count_waiting()

    async def idle(self) -> bool:
        """True when this process takes in and runs nothing, and no job is unfinished
        anywhere in the fleet."""
        if self._runner.busy or self._intake.busy:
            return False
        return await self.store.views.count_unfinished() == 0
