"""A running job's stages: the one write that moves a job forward, and what is said of it.

Every write that moves a job forward goes through :meth:`StageWriter.record`: it names
the job's claim (:mod:`bot.jobs.store`), so it changes the job only while this process
still holds it, extends the job's lease, and is tried again through a database outage
(:func:`bot.db.outages.through_outages`). When the job was taken over meanwhile, the
write raises :class:`~bot.jobs.model.Stopped`, and what the job's paid calls produced is
kept with the job for its new holder (its salvage). Progress is reported only while this
process's lease on the job is known to hold (:mod:`bot.jobs.leases`).
"""

from __future__ import annotations

import logging
import time

from bot.db import Transaction
from bot.db.outages import through_outages
from bot.db.signals import Signal
from bot.jobs.leases import Leases
from bot.jobs.model import Job, JobStatus, Progress, Stage, Stopped
from bot.jobs.parts import Part, Parts
from bot.jobs.positions import Positions

log = logging.getLogger(__name__)


class StageWriter(Part):
    """Records and reports a running job's stages; see the module docstring."""

    def __init__(self, parts: Parts, *, leases: Leases, positions: Positions) -> None:
        super().__init__(parts)
        self._leases = leases
        self._positions = positions

    async def record(
        self,
        job: Job,
        stage: Stage,
        *,
        tx: Transaction | None = None,
        asset_path: str | None = None,
        result_url: str | None = None,
        record_id: str | None = None,
    ) -> float:
        """The one write that moves a job forward: record its new stage (and what it
        produced) under the job's claim, extending its lease; returns the lease's new
        end. In ``tx`` when given (its caller tries the whole transaction again through
        an outage), else tried again through an outage here. Raises :class:`Stopped`
        when this process no longer holds the job; what the job's calls produced is then
        kept with the job for its new holder."""
        until = 0.0

        async def write() -> bool:
            nonlocal until
            until = time.time() + self._config.lease
            return await self._store.runs.advance(
                job.id,
                job.claims,
                stage,
                lease_until=until,
                tx=tx,
                asset_path=asset_path,
                result_url=result_url,
                record_id=record_id,
            )

        if tx is not None:
            changed = await write()
        else:
            changed = await through_outages(
                write,
                logger=log,
                doing="recording a job's stage",
                still=lambda: self._leases.runs(job),
            )
        if changed:
            if tx is None:
                self._leases.extended(job, until)
            return until
        if tx is None and (asset_path or result_url or record_id):
            await through_outages(
                lambda: self._store.runs.salvage(
                    job.id, asset_path=asset_path, result_url=result_url, record_id=record_id
                ),
                logger=log,
                doing="keeping a paid call's product",
            )
            log.info("Job %s was taken over; what its 1min.ai call made is kept for it", job.id)
        raise Stopped("cancelled, or taken over by another process")

    async def advance(
        self,
        job: Job,
        stage: Stage,
        *,
        asset_path: str | None = None,
        result_url: str | None = None,
        record_id: str | None = None,
    ) -> None:
        """Record the job's new stage (see :meth:`record`) and report it."""
        await self.record(
            job, stage, asset_path=asset_path, result_url=result_url, record_id=record_id
        )
        self.entered(job, stage)

    def progress(self, job: Job, progress: Progress) -> None:
        """Report progress while this process's lease on the job is known to hold (a
        worker that lost it shows nothing more)."""
        if self._leases.valid(job.id):
            self._reporter.show_progress(job, progress)

    def entered(self, job: Job, stage: Stage) -> None:
        job.stage = stage
        self._reporter.log_stage(job, stage)
        self.progress(job, Progress(stage))

    async def hand_back(self, job: Job, why: str) -> None:
        """Put a running job back in line, its recorded progress kept (not a restart: its
        member is not told it "continues" when it runs again)."""
        handed = await through_outages(
            lambda: self._store.runs.hand_back(job.id, job.claims, why),
            logger=log,
            doing="handing a job back",
            still=lambda: self._leases.runs(job),
        )
        if not handed:
            return
        was = job.stage
        job.status = JobStatus.QUEUED  # its stage stays: it continues from there
        self._reporter.log_stage(job, "handed back", why)
        self._positions.watch(job)
        await self._signals.send(Signal.QUEUED)
        if was in (Stage.UPLOADING, Stage.UPSCALING):
            await self._signals.send(Signal.SLOT)
        await self._positions.refresh()
