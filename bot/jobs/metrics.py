"""What the job queue tells the metrics about its jobs: four calls, and a no-op default.

The queue (:mod:`bot.jobs`) calls a :class:`JobMetrics` at four moments of a job's run
in this process; :class:`bot.app.metrics.Metrics` turns them into the Prometheus series of
``docs/metrics.md`` (``upscale_jobs_total``, ``upscale_failures_total``, ``upscale_stage_seconds``,
``upscale_credits_total``, ``upscale_jobs_in_flight``). Without ``METRICS_PORT`` the queue
gets :data:`NO_JOB_METRICS`, which does nothing. This module imports neither Discord nor
prometheus_client.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from bot.failures import FailureKind
from bot.jobs.model import Job, Stage


class Outcome(StrEnum):
    """How a job ended (the ``outcome`` label of ``upscale_jobs_total``)."""

    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobMetrics(Protocol):
    """Called by the queue, on the event loop; each call must be cheap and never raise."""

    def job_started(self, job: Job) -> None:
        """This process took ``job`` on (claimed it, or took it over) and runs it now."""

    def job_stage(self, job: Job, stage: Stage) -> None:
        """``job`` moved to ``stage`` (the queue's progress report, any stage)."""

    def job_ended(
        self, job_id: str, outcome: Outcome, kind: FailureKind | None = None, credits: int = 0
    ) -> None:
        """``job_id`` was settled here: ``credits`` committed (delivered) or refunded."""

    def job_left(self, job_id: str) -> None:
        """This process's run of ``job_id`` is over (ended, stopped or handed back)."""


class NoJobMetrics:
    """The queue's default: metrics are off."""

    def job_started(self, job: Job) -> None:
        pass

    def job_stage(self, job: Job, stage: Stage) -> None:
        pass

    def job_ended(
        self, job_id: str, outcome: Outcome, kind: FailureKind | None = None, credits: int = 0
    ) -> None:
        pass

    def job_left(self, job_id: str) -> None:
        pass


NO_JOB_METRICS: JobMetrics = NoJobMetrics()
