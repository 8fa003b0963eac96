"""Short clocks for end-to-end tests: the bot's own waits, shortened.

The real ones (:mod:`bot.timings`) make a member wait a second for the first progress
line and a restarted process 5.5 s for its IDENTIFY turn; a test would spend most of its
time waiting them out. :data:`SHORT_TIMINGS` keeps every wait's order (progress edits
still throttled, IDENTIFYs still spaced by more than the emulator's window) on a scale
of tenths of a second. ``running_bot`` uses them unless a test passes ``timings=``; bot
processes get them through :data:`TIMINGS_ENV` (see :func:`timings_env`).
"""

from __future__ import annotations

import dataclasses
import json

from bot.timings import IDENTIFY_INTERVAL, IDENTIFY_SPACING, Timings

SHORT_TIMINGS = Timings(
    progress_interval=0.5,
    first_progress_delay=0.2,
    place_interval_per_place=0.125,
    place_interval_max=5.0,
    lookup_backoff=0.05,
    circuit_check_interval=0.05,
    job_poll_interval=0.5,
    identify_spacing=0.55,
    onemin_backoff_base=0.02,
    rate_backoff_base=0.1,
    rate_backoff_cap=3.0,
    startup_first_retry=0.3,
    startup_max_retry=2.0,
)
REAL_TIMINGS = Timings()  # what python -m bot uses (benchmarks measure with these)
TIMINGS_ENV = "TEST_TIMINGS"  # JSON of Timings fields, read by tests.bot_process


def identify_window(timings: Timings) -> float:
    """The IDENTIFY window for the Discord emulator that a bot on ``timings`` respects:
    Discord's 5 s for the real spacing, shorter in proportion for shorter ones."""
    return timings.identify_spacing * IDENTIFY_INTERVAL / IDENTIFY_SPACING


def timings_env(timings: Timings = SHORT_TIMINGS) -> dict[str, str]:
    """The variable that makes a bot process (``tests.bot_process``) use ``timings``."""
    return {TIMINGS_ENV: json.dumps(dataclasses.asdict(timings))}


def timings_from(raw: str | None) -> Timings | None:
    """The timings a bot process was given in :data:`TIMINGS_ENV`, or None."""
    return Timings(**json.loads(raw)) if raw else None
