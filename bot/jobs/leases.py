"""Leases: which jobs this process holds, and their renewal.

A process runs a job (or takes over an intake) under a lease, taken by the claim
(:mod:`bot.jobs.dispatcher`) and renewed every third of a lease while this process
holds any: a job it runs, an intake it took over, or an intake of its own in progress
(:class:`bot.jobs.intake.Intake` records those with a lease of this process). When a
process dies, another takes its jobs over once their leases run out; at shutdown the
leases are handed back at once (:meth:`Leases.release_all`).

What this process holds, and the lease end its last renewal wrote, are kept here and
nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from bot.jobs.intake import Intake
from bot.jobs.model import Job, JobStatus
from bot.jobs.parts import Part, Parts

log = logging.getLogger(__name__)


class Leases(Part):
    """The leases this process holds; see the module docstring."""

    def __init__(self, parts: Parts, *, intake: Intake) -> None:
        super().__init__(parts)
        self._intake = intake
        self._jobs: dict[str, Job] = {}  # jobs this process runs
        self._intakes: set[str] = set()  # intakes this process took over
        # The lease end the last renewal that succeeded wrote (time.time()), or None.
        self.renewed_until: float | None = None

    def hold(self, job: Job) -> None:
        """This process runs ``job`` now (claimed; its lease taken)."""
        self._jobs[job.id] = job

    def hold_intake(self, job_id: str) -> None:
        """This process takes in again an intake it took over."""
        self._intakes.add(job_id)

    def release(self, job_id: str) -> None:
        """This process's run of the job is over (ended, stopped or handed back)."""
        self._jobs.pop(job_id, None)

    def release_intake(self, job_id: str) -> None:
        self._intakes.discard(job_id)

    def holds(self, job_id: str) -> bool:
        """True while this process runs the job and has not settled it."""
        job = self._jobs.get(job_id)
        return job is not None and job.status is JobStatus.RUNNING

    @property
    def holding(self) -> bool:
        """True while this process holds any lease (a job, an intake)."""
        return bool(self._jobs or self._intakes or self._intake.busy)

    async def keep(self, stopping: asyncio.Event) -> None:
        """Renew this process's leases every third of a lease until ``stopping`` is set."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._config.lease / 3)
            if stopping.is_set() or not self.holding:
                continue
            try:
                await self.renew()
            except Exception:
                log.warning("Could not renew job leases", exc_info=True)

    async def renew(self) -> None:
        """Renew every lease this process holds, for a whole lease from now."""
        until = time.time() + self._config.lease
        await self._store.renew(until)
        self.renewed_until = until

    async def release_all(self) -> list[Job]:
        """Hand this process's jobs back, their progress kept (shutdown); returns them."""
        return await self._store.release_owned()
