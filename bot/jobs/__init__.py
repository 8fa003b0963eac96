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

What the rest of the bot uses is here (``__all__``): the queue and its configuration,
what a front end implements (:class:`FrontEnd`) and is handed, the metrics protocol,
and the store and a job's trail for the owner's ``job`` command. The defaults the
owner's settings start from are in :mod:`bot.jobs.config`; what only the tests use (the
parts and their constants) is imported from its module.

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
from bot.jobs.intake import FetchSource, too_large_text
from bot.jobs.metrics import NO_JOB_METRICS, JobMetrics, Outcome
from bot.jobs.model import (
    CancelOutcome,
    DeliveryFailed,
    FrontEnd,
    InputRefused,
    Job,
    JobFailure,
    JobRequest,
    JobResult,
    JobStatus,
    LimitReached,
    Progress,
    QueueClosed,
    QueueFull,
    Source,
    Stage,
    WaitReason,
)
from bot.jobs.queue import JobQueue, instance_name
from bot.jobs.settlement import ChargedListener
from bot.jobs.store import JobStore
from bot.jobs.trail import JobTrail, find_trail, format_trail

__all__ = [
    "NO_JOB_METRICS",
    "CancelOutcome",
    "ChargedListener",
    "DeliveryFailed",
    "FetchSource",
    "FrontEnd",
    "InputRefused",
    "Job",
    "JobFailure",
    "JobMetrics",
    "JobQueue",
    "JobRequest",
    "JobResult",
    "JobStatus",
    "JobStore",
    "JobTrail",
    "LimitReached",
    "Outcome",
    "Progress",
    "QueueClosed",
    "QueueConfig",
    "QueueFull",
    "Source",
    "Stage",
    "WaitReason",
    "find_trail",
    "format_trail",
    "instance_name",
    "too_large_text",
]
