"""The upscale job queue: durable, paced, shared by every process on one database.

This is the core of the product and imports nothing from Discord. :class:`JobQueue`
(:mod:`bot.jobs.queue`) is the facade the cogs and services use; the parts behind it
each have a module of their own:

* :mod:`bot.jobs.model`: jobs, their status and stages, requests, results, failures,
  errors, and the :class:`FrontEnd` protocol the Discord side implements;
* :mod:`bot.jobs.store`: every statement on ``jobs``, ``job_inputs``, ``compare_crops``,
  with the list of hot statements a test plans against a year of history;
* :mod:`bot.jobs.intake`: a job recorded at the acknowledgement, its image taken in;
* :mod:`bot.jobs.runner`: running jobs here, over four parts: :mod:`bot.jobs.dispatcher`
  (claims, and when to look for them), :mod:`bot.jobs.leases` (what this process holds,
  renewed), :mod:`bot.jobs.slots` (the line of jobs waiting for an upscale slot),
  :mod:`bot.jobs.pipeline` (a claimed job's work, each stage recorded);
* :mod:`bot.jobs.positions`: places in line;
* :mod:`bot.jobs.settlement`: delivered and charged, failed or cancelled and refunded;
* :mod:`bot.jobs.recovery`: start-up recovery and housekeeping (retention);
* :mod:`bot.jobs.report`: the log line per stage, the front end, the metrics;
* :mod:`bot.jobs.work`: CPU and file work run in threads.

Durability. A job is a row in ``jobs`` from the moment the member sees "thinking", with
its credit reservation; its prepared input is a row in ``job_inputs``. Each stage is
recorded as it happens, and a process runs a job under a lease; after a restart, or
when a process dies, the job continues from its last recorded stage, so every job is
delivered once and charged once. Credits are committed in the transaction that marks
the job delivered; a failure refunds in the transaction that records it. A job is
refunded only when finishing is impossible.

Fleet-wide limits. At most ``max_concurrent`` jobs are with 1min.ai at once across all
processes, and every 1min.ai request passes the :class:`bot.onemin.pacing.RateGate`.
"""

from bot.jobs.config import QueueConfig
from bot.jobs.dispatcher import CLAIM_AHEAD
from bot.jobs.intake import INTAKE_CONCURRENCY, PREPARE_CONCURRENCY, FetchSource
from bot.jobs.model import (
    CANCELLABLE_STAGES,
    UNFINISHED,
    CancelOutcome,
    DeliveryFailed,
    FrontEnd,
    InputRefused,
    Job,
    JobFailed,
    JobFailure,
    JobRequest,
    JobResult,
    JobStatus,
    LimitReached,
    PreparedInfo,
    Progress,
    QueueClosed,
    QueueFull,
    Source,
    Stage,
    Stopped,
    WaitReason,
)
from bot.jobs.pipeline import RESULT_MAX_BYTES
from bot.jobs.queue import JobQueue, instance_name
from bot.jobs.recovery import COMPARE_RETENTION_DAYS
from bot.jobs.store import JobStore, TrailEvent

__all__ = [
    "CANCELLABLE_STAGES",
    "CLAIM_AHEAD",
    "COMPARE_RETENTION_DAYS",
    "INTAKE_CONCURRENCY",
    "PREPARE_CONCURRENCY",
    "RESULT_MAX_BYTES",
    "UNFINISHED",
    "CancelOutcome",
    "DeliveryFailed",
    "FetchSource",
    "FrontEnd",
    "InputRefused",
    "Job",
    "JobFailed",
    "JobFailure",
    "JobQueue",
    "JobRequest",
    "JobResult",
    "JobStatus",
    "JobStore",
    "LimitReached",
    "PreparedInfo",
    "Progress",
    "QueueClosed",
    "QueueConfig",
    "QueueFull",
    "Source",
    "Stage",
    "Stopped",
    "TrailEvent",
    "WaitReason",
    "instance_name",
]
