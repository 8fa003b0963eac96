"""Leases: which jobs this process holds, their renewal, and the fence around them.

A process runs a job (or takes over an intake) under a lease, taken by the claim
(:mod:`bot.jobs.dispatcher`) and renewed every third of a lease while this process
holds any: a job it runs, an intake it took over, or an intake of its own in progress
(:class:`bot.jobs.intake.Intake` records those with a lease of this process). When a
process dies, another takes its jobs over once their leases run out; at shutdown the
leases are handed back at once (:meth:`Leases.release_all`).

Fencing. A worker that lost its job must stop touching it. This process knows, for each
job it runs, until when its lease is known to hold: the lease end its claim, its last
renewal or its last forward write (which extends the lease, :mod:`bot.jobs.store`)
wrote. Past that (a renewal failed: the database did not answer), it sends nothing more
for the job (no progress edit, no delivery, no paid call) until it has confirmed that it
still holds it (:meth:`Leases.confirm`: one write naming its claim, which fails when
another process, or this one, took the job over meanwhile). Work that talks to the
outside while a job is held runs inside :meth:`Leases.fence`, which cuts it off when the
lease is about to lapse. And every write that moves a job forward names the claim that
made it, so a stale holder's write changes nothing.

Renewal extends only leases that have not lapsed (one statement for all of them); a
lapsed one is confirmed job by job when its worker next needs it. While the database
does not answer, renewal tries again sooner than every third of a lease, so that when it
answers the holder keeps its jobs before another process takes them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from bot.db.outages import report_db_outage, through_outages
from bot.jobs.intake import Intake
from bot.jobs.model import Job, JobStatus, Stopped
from bot.jobs.parts import Part, Parts

log = logging.getLogger(__name__)

# Seconds before a lease's end at which this process stops acting on the job: the clocks
# of a fleet differ a little, and a request on the wire needs a moment to land.
FENCE_MARGIN = 1.0
# Seconds between renewals while the database does not answer (at most).
OUTAGE_RENEWAL = 0.5


class Leases(Part):
    """The leases this process holds; see the module docstring."""

    def __init__(self, parts: Parts, *, intake: Intake) -> None:
        super().__init__(parts)
        self._intake = intake
        self._jobs: dict[str, Job] = {}  # jobs this process runs
        self._until: dict[str, float] = {}  # their lease ends known to hold (time.time())
        self._fences: dict[str, set[asyncio.Timeout]] = {}
        self._intakes: set[str] = set()  # intakes this process took over
        # The lease end the last renewal that succeeded wrote (time.time()), or None.
        self.renewed_until: float | None = None

    @property
    def margin(self) -> float:
        """How long before a lease's end this process stops acting on the job."""
        return min(FENCE_MARGIN, self._config.lease / 10)

    def hold(self, job: Job, until: float) -> None:
        """This process runs ``job`` now (claimed; its lease ends at ``until``)."""
        self._jobs[job.id] = job
        self._until[job.id] = until

    def hold_intake(self, job_id: str) -> None:
        """This process takes in again an intake it took over."""
        self._intakes.add(job_id)

    def release(self, job: Job) -> None:
        """This process's run of ``job`` is over (ended, stopped or handed back). A newer
        run of the same job (this process took it over again) keeps its lease."""
        if self._jobs.get(job.id) is job:
            del self._jobs[job.id]
            self._until.pop(job.id, None)

    def release_intake(self, job_id: str) -> None:
        self._intakes.discard(job_id)

    def holds(self, job_id: str) -> bool:
        """True while this process runs the job and has not settled it."""
        job = self._jobs.get(job_id)
        return job is not None and job.status is JobStatus.RUNNING

    def job(self, job_id: str) -> Job | None:
        """The run of ``job_id`` this process holds, if any."""
        return self._jobs.get(job_id)

    def runs(self, job: Job) -> bool:
        """True while ``job`` (this very run of it) is what this process runs."""
        return self._jobs.get(job.id) is job

    def until(self, job_id: str) -> float | None:
        """Until when (``time.time()``) this process may act on the job: its lease end
        known to hold, less the margin; None when it does not run the job."""
        until = self._until.get(job_id)
        return None if until is None or job_id not in self._jobs else until - self.margin

    def valid(self, job_id: str) -> bool:
        """True while this process runs the job and its lease is known to hold."""
        until = self.until(job_id)
        return until is not None and time.time() < until

    def extended(self, job: Job, until: float) -> None:
        """A write naming the job's claim extended its lease to ``until``."""
        if self.runs(job):
            self._until[job.id] = max(until, self._until.get(job.id, 0.0))
            self._reschedule(job.id)

    @property
    def holding(self) -> bool:
        """True while this process holds any lease (a job, an intake)."""
        return bool(self._jobs or self._intakes or self._intake.busy)

    # -- the fence ---------------------------------------------------------------------

    async def confirm(self, job: Job) -> None:
        """Make sure this process still holds ``job`` before it acts on it: at once while
        its lease is known to hold; else one write naming the job's claim, tried again
        through a database outage. Raises :class:`Stopped` when the job was taken over
        (or ended) meanwhile."""
        if self.valid(job.id) and self.runs(job):
            return
        if not self.runs(job):
            raise Stopped("this run of the job is over")
        until = time.time() + self._config.lease
        confirmed = await through_outages(
            lambda: self._store.runs.confirm_lease(job.id, job.claims, until),
            logger=log,
            doing="confirming a job's lease",
            still=lambda: self.runs(job),
        )
        if not confirmed:
            raise Stopped("its lease lapsed and it was taken over")
        log.info("Job %s: its lapsed lease still holds here", job.id)
        self.extended(job, until)

    @contextlib.asynccontextmanager
    async def fence(self, job: Job) -> AsyncIterator[None]:
        """Run the block while this process's lease on ``job`` holds: it is cancelled
        (and :class:`Stopped` raised) when the lease is about to lapse; renewals move
        that moment on. Confirm the lease first (:meth:`confirm`)."""
        loop = asyncio.get_running_loop()
        until = self.until(job.id)
        if until is None:
            raise Stopped("this run of the job is over")
        timeout = asyncio.timeout_at(loop.time() + (until - time.time()))
        fences = self._fences.setdefault(job.id, set())
        fences.add(timeout)
        try:
            async with timeout:
                yield
        except TimeoutError:
            if timeout.expired():
                raise Stopped("its lease was about to lapse") from None
            raise
        finally:
            fences.discard(timeout)
            if not fences:
                self._fences.pop(job.id, None)

    def _reschedule(self, job_id: str) -> None:
        until = self.until(job_id)
        fences = self._fences.get(job_id)
        if until is None or not fences:
            return
        when = asyncio.get_running_loop().time() + (until - time.time())
        for timeout in fences:
            if not timeout.expired():
                timeout.reschedule(when)

    # -- renewal -----------------------------------------------------------------------

    async def keep(self, stopping: asyncio.Event) -> None:
        """Renew this process's leases every third of a lease until ``stopping`` is set;
        while the database does not answer, every :data:`OUTAGE_RENEWAL` seconds."""
        failing = False
        while not stopping.is_set():
            wait = (
                min(OUTAGE_RENEWAL, self._config.lease / 3) if failing else self._config.lease / 3
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)
            if stopping.is_set() or not self.holding:
                failing = False
                continue
            try:
                await self.renew()
            except Exception as exc:
                report_db_outage(log, "renewing job leases", exc)
                failing = True
            else:
                failing = False

    async def renew(self) -> None:
        """Renew every lease this process holds that has not lapsed, for a whole lease
        from now. A lapsed one is left for :meth:`confirm`."""
        now = time.time()
        until = now + self._config.lease
        await self._store.runs.renew(until, now)
        self.renewed_until = until
        for job_id, held in list(self._until.items()):
            if held > now:
                self._until[job_id] = until
                self._reschedule(job_id)

    async def release_all(self) -> list[Job]:
        """Hand this process's jobs back, their progress kept (shutdown); returns them."""
        return await self._store.runs.release_owned()
