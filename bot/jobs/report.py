"""What the queue tells the world about a job: the front end, the log, and the metrics.

One place says each thing once:

* every stage change logs one INFO line naming the job (its whole id; the result's
  footer shows its first characters), the guild, the stage and this process (host,
  shards and pid, as in the job's trail), so a member's "where is my upscale?" can be
  followed through the logs of a fleet;
* the front end hears progress and endings (a failing front end never fails a job);
* the metrics, when the bot exports them, count stages, endings and credits.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from bot.failures import FailureKind
from bot.jobs.model import FrontEnd, Job, JobFailure, Progress, Stage

log = logging.getLogger("bot.jobs")


class QueueMetrics(Protocol):
    """What the queue reports to the metrics (see :mod:`bot.metrics`)."""

    def job_ended(self, outcome: str, kind: FailureKind | None) -> None: ...

    def stage_done(self, stage: str, seconds: float) -> None: ...

    def credits_settled(self, state: str, amount: int) -> None: ...


class Reporter:
    """Tells the front end, the log and the metrics about jobs; see the module docstring."""

    def __init__(self, process: str) -> None:
        self.process = process
        self.front_end: FrontEnd | None = None
        self.metrics: QueueMetrics | None = None
        # When each job this process works on entered its current stage (for the
        # stage-time histogram); dropped when the job ends here.
        self._entered: dict[str, tuple[str, float]] = {}

    @property
    def front(self) -> FrontEnd:
        if self.front_end is None:
            raise RuntimeError("no front end attached to the job queue")
        return self.front_end

    # -- stages ------------------------------------------------------------------------

    def stage(self, job: Job, stage: Stage | str, detail: str = "") -> None:
        """Log a stage change of ``job`` and time the stage it left."""
        now = time.monotonic()
        name = str(stage)
        previous = self._entered.get(job.id)
        if previous is not None and self.metrics is not None:
            self.metrics.stage_done(previous[0], now - previous[1])
        self._entered[job.id] = (name, now)
        log.info(
            "Job %s guild %d: %s%s [%s]",
            job.id,
            job.guild_id,
            name,
            f" ({detail})" if detail else "",
            self.process,
        )

    def forget(self, job_id: str) -> None:
        """This process no longer works on the job."""
        self._entered.pop(job_id, None)

    def progress(self, job: Job, progress: Progress) -> None:
        if self.front_end is None:
            return
        try:
            self.front_end.progress(job, progress)
        except Exception:
            log.warning("Progress report for job %s failed", job.id, exc_info=True)

    # -- endings -----------------------------------------------------------------------

    def delivered(self, job: Job, cost: int) -> None:
        self.stage(job, "delivered")
        self.forget(job.id)
        if self.metrics is not None:
            self.metrics.job_ended("delivered", None)
            self.metrics.credits_settled("committed", cost)

    def failed(self, job: Job, kind: FailureKind, refunded: int) -> None:
        self.stage(job, "failed", kind.value)
        self.forget(job.id)
        if self.metrics is not None:
            self.metrics.job_ended("failed", kind)
            if refunded:
                self.metrics.credits_settled("refunded", refunded)

    def cancelled(self, job_id: str, guild_id: int, actor_id: int, refunded: int) -> None:
        log.info(
            "Job %s guild %d: cancelled (by %d) [%s]", job_id, guild_id, actor_id, self.process
        )
        self.forget(job_id)
        if self.metrics is not None:
            self.metrics.job_ended("cancelled", FailureKind.CANCELLED)
            if refunded:
                self.metrics.credits_settled("refunded", refunded)

    async def tell_failed(self, job: Job, failure: JobFailure) -> None:
        try:
            await self.front.failed(job, failure)
        except Exception:
            log.warning("Could not tell the member about failed job %s", job.id, exc_info=True)

    async def tell_ended(self, job_id: str) -> None:
        if self.front_end is None:
            return
        try:
            await self.front_end.ended(job_id)
        except Exception:
            log.warning("Could not stop showing job %s", job_id, exc_info=True)

    async def tell_resumed(self, job: Job) -> None:
        try:
            await self.front.resumed(job)
        except Exception:
            log.warning("Could not tell the member job %s continues", job.id, exc_info=True)

    async def tell_paused(self, job: Job) -> None:
        try:
            await self.front.paused(job)
        except Exception:
            log.warning("Could not tell the member job %s is paused", job.id, exc_info=True)
