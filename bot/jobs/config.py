"""The job queue's limits and clocks, in one value (:class:`QueueConfig`).

The queue's collaborators (database, ledger, 1min.ai client, circuit, workers) are
handed to :class:`bot.jobs.queue.JobQueue` one by one; everything that is a number
an owner or a test tunes travels in this one frozen value, which every part of the
queue reads from its :class:`bot.jobs.parts.Parts` bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from bot.app.settings import Settings
from bot.db.signals import FALLBACK_POLL
from bot.images import ImageLimits
from bot.retry import Backoff
from bot.timings import RATE_BACKOFF_BASE, RATE_BACKOFF_CAP

PURGE_INTERVAL = 3600.0  # seconds between housekeeping rounds
PURGE_FIRST_DELAY = 60.0  # seconds after start-up before the first round
RATE_BACKOFF = Backoff(base=RATE_BACKOFF_BASE, cap=RATE_BACKOFF_CAP)


def _owner_default(name: str) -> Any:
    """The default of the owner's setting ``name``: written once, in :class:`Settings`."""
    return next(f.default for f in fields(Settings) if f.name == name)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """What the queue allows and how long it waits (seconds unless said otherwise)."""

    max_concurrent: int  # upscales in flight fleet-wide
    max_per_member: int  # unfinished jobs a member may have
    cost: int  # credits an upscale costs
    limits: ImageLimits = field(default_factory=ImageLimits)
    lease: float = _owner_default("job_lease")  # a claim's lease, renewed every third of it
    busy_timeout: float = _owner_default("busy_timeout")  # waiting out 429s this long fails
    max_age: float = _owner_default("job_max_age")  # unfinished this long: fails on recovery
    poll_interval: float = FALLBACK_POLL  # the look for work nobody woke the queue for
    circuit_give_up: float = _owner_default("circuit_give_up")  # refused this long: refunded
    retention_days: float = _owner_default("job_retention_days")  # finished jobs kept (days)
    purge_interval: float = PURGE_INTERVAL
    purge_first_delay: float = PURGE_FIRST_DELAY
    rate_backoff: Backoff = RATE_BACKOFF  # waits after 1min.ai says "too many requests"

    @classmethod
    def from_settings(cls, settings: Settings) -> QueueConfig:
        """The owner's settings (see ``.env.example``) as the queue's configuration."""
        timings = settings.timings
        return cls(
            max_concurrent=settings.max_concurrent_jobs,
            max_per_member=settings.max_jobs_per_user,
            cost=settings.upscale_cost,
            limits=ImageLimits(
                max_pixels=settings.max_input_pixels, max_side=settings.max_input_side
            ),
            lease=settings.job_lease,
            busy_timeout=settings.busy_timeout,
            max_age=settings.job_max_age,
            poll_interval=timings.job_poll_interval,
            circuit_give_up=settings.circuit_give_up,
            retention_days=settings.job_retention_days,
            rate_backoff=Backoff(timings.rate_backoff_base, timings.rate_backoff_cap),
        )
