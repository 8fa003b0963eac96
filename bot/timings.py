"""The waits the bot chooses for itself, in one place.

Each is a named constant with its unit, and a field of :class:`Timings` with that
constant as its default; :attr:`bot.app.settings.Settings.timings` carries the ones in force.
No environment variable sets them: the defaults are what Discord and members need. Tests
pass shorter ones (``Settings(timings=Timings(progress_interval=0.2, ...))``) so that
end-to-end tests run on short clocks instead of waiting out real ones.

Waits that owners may tune are settings of their own (``JOB_LEASE_SECONDS``,
``ONEMIN_PROBE_INTERVAL``, ``STARTUP_RETRY_SECONDS``...), not here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CIRCUIT_CHECK_INTERVAL",
    "FALLBACK_POLL",
    "FIRST_PROGRESS_DELAY",
    "IDENTIFY_INTERVAL",
    "IDENTIFY_MARGIN",
    "IDENTIFY_SPACING",
    "LOOKUP_BACKOFF",
    "ONEMIN_BACKOFF_BASE",
    "PLACE_INTERVAL_MAX",
    "PLACE_INTERVAL_PER_PLACE",
    "PROGRESS_INTERVAL",
    "RATE_BACKOFF_BASE",
    "RATE_BACKOFF_CAP",
    "STARTUP_FIRST_RETRY",
    "STARTUP_MAX_RETRY",
    "Timings",
]

PROGRESS_INTERVAL = 2.0  # seconds between progress edits of a member's reply, at least
FIRST_PROGRESS_DELAY = 1.0  # seconds before a job's first progress edit
# A place in line that changed, the stage staying "queued", is edited at most every
# PLACE_INTERVAL_PER_PLACE x the place (2 s up to #4, 10 s at #20), and at least every
# PLACE_INTERVAL_MAX: far back in a long line places change several times a second, and
# an edit per place was the bot's largest cost per job. Stage changes keep
# PROGRESS_INTERVAL.
PLACE_INTERVAL_PER_PLACE = 0.5  # seconds per place in line
PLACE_INTERVAL_MAX = 20.0  # seconds
LOOKUP_BACKOFF = 2.0  # seconds before the second look for an already posted result; doubles
FALLBACK_POLL = 5.0  # seconds: a waiter looks again this often even if nothing woke it
CIRCUIT_CHECK_INTERVAL = 2.0  # seconds between looks at the 1min.ai circuit while it is open
IDENTIFY_INTERVAL = 5.0  # seconds: Discord's IDENTIFY window per concurrency bucket
IDENTIFY_MARGIN = 0.5  # seconds added: an IDENTIFY arrives a little after its turn
IDENTIFY_SPACING = IDENTIFY_INTERVAL + IDENTIFY_MARGIN  # seconds between a bucket's IDENTIFYs
RATE_BACKOFF_BASE = 2.0  # seconds: a job's first wait after a 429 without Retry-After
RATE_BACKOFF_CAP = 60.0  # seconds: its longest wait between tries after 429s
ONEMIN_BACKOFF_BASE = 0.5  # seconds: first wait before retrying a failed 1min.ai call; doubles
STARTUP_FIRST_RETRY = 1.0  # seconds before start-up's second try; doubles after each try
STARTUP_MAX_RETRY = 15.0  # seconds, start-up's longest wait between two tries


@dataclass(frozen=True, slots=True)
class Timings:
    """The bot's own waits (see the module docstring); every field in seconds."""

    progress_interval: float = PROGRESS_INTERVAL
    first_progress_delay: float = FIRST_PROGRESS_DELAY
    place_interval_per_place: float = PLACE_INTERVAL_PER_PLACE
    place_interval_max: float = PLACE_INTERVAL_MAX
    lookup_backoff: float = LOOKUP_BACKOFF
    circuit_check_interval: float = CIRCUIT_CHECK_INTERVAL
    job_poll_interval: float = FALLBACK_POLL  # the job queue's look for work nobody woke it for
    identify_spacing: float = IDENTIFY_SPACING
    onemin_backoff_base: float = ONEMIN_BACKOFF_BASE
    rate_backoff_base: float = RATE_BACKOFF_BASE
    rate_backoff_cap: float = RATE_BACKOFF_CAP
    startup_first_retry: float = STARTUP_FIRST_RETRY
    startup_max_retry: float = STARTUP_MAX_RETRY
