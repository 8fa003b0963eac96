"""The job queue's limits and clocks, in one value (:class:`QueueConfig`).

The queue's collaborators (database, ledger, 1min.ai client, circuit, workers) are
handed to :class:`bot.jobs.queue.JobQueue` one by one; everything that is a number
an owner or a test tunes travels in this one frozen value, which every part of the
queue reads from its :class:`bot.jobs.parts.Parts` bundle.

The defaults are written here; the owner's settings take theirs from these constants,
and the process builds a :class:`QueueConfig` from the settings
(:func:`bot.app.services.queue_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.db.signals import FALLBACK_POLL
from bot.images import ImageLimits
from bot.retry import Backoff
from bot.timings import RATE_BACKOFF_BASE, RATE_BACKOFF_CAP

LEASE = 30.0  # seconds a claim holds unless renewed: a dead process's jobs wait this long
BUSY_TIMEOUT = 1800.0  # seconds a job may wait out 1min.ai's rate limit (429s)
MAX_AGE = 86_400.0  # seconds after which an unfinished job fails on recovery
CIRCUIT_GIVE_UP = 3600.0  # seconds queued jobs wait for 1min.ai to accept the bot again
RETENTION_DAYS = 30  # days a finished job's row is kept
PURGE_INTERVAL = 3600.0  # seconds between housekeeping rounds
PURGE_FIRST_DELAY = 60.0  # seconds after start-up before the first round
RATE_BACKOFF = Backoff(base=RATE_BACKOFF_BASE, cap=RATE_BACKOFF_CAP)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """What the queue allows and how long it waits (seconds unless said otherwise)."""

    max_concurrent: int  # upscales in flight fleet-wide
    max_per_member: int  # unfinished jobs a member may have
    cost: int  # credits an upscale costs
    limits: ImageLimits = field(default_factory=ImageLimits)
    lease: float = LEASE  # a claim's lease, renewed every third of it
    busy_timeout: float = BUSY_TIMEOUT  # waiting out 429s this long fails
    max_age: float = MAX_AGE  # unfinished this long: fails on recovery
    poll_interval: float = FALLBACK_POLL  # the look for work nobody woke the queue for
    circuit_give_up: float = CIRCUIT_GIVE_UP  # refused this long: refunded
    retention_days: float = RETENTION_DAYS  # finished jobs kept (days)
    purge_interval: float = PURGE_INTERVAL
    purge_first_delay: float = PURGE_FIRST_DELAY
    rate_backoff: Backoff = RATE_BACKOFF  # waits after 1min.ai says "too many requests"
