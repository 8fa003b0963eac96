"""What the queue tells the world about a job: the front end, the log, and the metrics.

One place says each thing once:

* every stage change logs one INFO line naming the job (its whole id; the result's
  footer shows its first characters), the guild, the stage and this process (host,
  shards and pid, as in the job's trail), so a member's "where is my upscale?" can be
  followed through the logs of a fleet;
* the front end hears progress and endings (a failing front end never fails a job);
* the metrics (:mod:`bot.jobs.metrics`; a no-op unless the bot exports them) hear when
  this process takes a job on, every stage it reports, how the job ended, and when its
  run here is over.
"""

from __future__ import annotations

import logging

from bot.failures import FailureKind
from bot.jobs.metrics import NO_JOB_METRICS, JobMetrics, Outcome
from bot.jobs.model import FrontEnd, Job, JobFailure, Progress, Stage

log = logging.getLogger("bot.jobs")


class Reporter:
    """Tells the front end, the log and the metrics about jobs; see the module docstring."""

    def __init__(self, process: str, metrics: JobMetrics = NO_JOB_METRICS) -> None:
        self.process = process
        self.front_end: FrontEnd | None = None
        self.metrics = metrics

    @property
    def front(self) -> FrontEnd:
        if self.front_end is None:
            raise RuntimeError("no front end attached to the job queue")
        return self.front_end

    # -- stages ------------------------------------------------------------------------

    def log_stage(self, job: Job, stage: Stage | str, detail: str = "") -> None:
        """Log a stage change of ``job`` (one INFO line: job, guild, stage, process)."""
        name = str(stage)
        log.info(
            "Job %s guild %d: %s%s [%s]",
            job.id,
            job.guild_id,
            name,
            f" ({detail})" if detail else "",
            self.process,
        )

    def started(self, job: Job) -> None:
        """This process took the job on and runs it now."""
        self.metrics.job_started(job)

    def left(self, job_id: str) -> None:
        """This process's run of the job is over (ended, stopped or handed back)."""
        self.metrics.job_left(job_id)

    def show_progress(self, job: Job, progress: Progress) -> None:
        """The job moved: the metrics hear its stage, the front end shows it."""
        self.metrics.job_stage(job, progress.stage)
        if self.front_end is None:
            return
        try:
            self.front_end.show_progress(job, progress)
        except Exception:
            log.warning("Progress report for job %s failed", job.id, exc_info=True)

    # -- endings -----------------------------------------------------------------------

    def log_delivered(self, job: Job, cost: int) -> None:
        """The job was delivered and charged: its log line, and the metrics."""
        self.log_stage(job, "delivered")
        self.metrics.job_ended(job.id, Outcome.DELIVERED, credits=cost)

    def log_failed(self, job: Job, kind: FailureKind, refunded: int) -> None:
        """The job failed (``refunded`` credits back): its log line, and the metrics."""
        self.log_stage(job, "failed", kind.value)
        self.metrics.job_ended(job.id, Outcome.FAILED, kind, credits=refunded)

    def log_cancelled(self, job_id: str, guild_id: int, actor_id: int, refunded: int) -> None:
        """The job was cancelled by ``actor_id``: its log line, and the metrics."""
        log.info(
            "Job %s guild %d: cancelled (by %d) [%s]", job_id, guild_id, actor_id, self.process
        )
        self.metrics.job_ended(job_id, Outcome.CANCELLED, credits=refunded)

    # -- the front end (what it raises is logged, never passed on) ---------------------

    async def tell_failed(self, job: Job, failure: JobFailure) -> None:
        try:
            await self.front.tell_failed(job, failure)
        except Exception:
            log.warning("Could not tell the member about failed job %s", job.id, exc_info=True)

    async def stop_showing(self, job_id: str) -> None:
        if self.front_end is None:
            return
        try:
            await self.front_end.stop_showing(job_id)
        except Exception:
            log.warning("Could not stop showing job %s", job_id, exc_info=True)

    async def tell_resumed(self, job: Job) -> None:
        try:
            await self.front.tell_resumed(job)
        except Exception:
            log.warning("Could not tell the member job %s continues", job.id, exc_info=True)

    async def tell_paused(self, job: Job) -> None:
        try:
            await self.front.tell_paused(job)
        except Exception:
            log.warning("Could not tell the member job %s is paused", job.id, exc_info=True)
