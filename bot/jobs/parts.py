"""What every part of the job queue works with, handed to each in one piece.

The parts of :mod:`bot.jobs` (intake, runner, settlement, recovery) share the database,
the store of the job tables, the ledger, the fleet's wake-ups and the reporter (front
end, log, metrics); :class:`JobQueue` builds them once and gives each part this bundle
with what is its own; each part is a :class:`Part`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.db import Database
from bot.jobs.report import Reporter
from bot.jobs.store import JobStore
from bot.ledger import Ledger
from bot.signals import Signals


@dataclass(frozen=True, slots=True)
class Parts:
    db: Database
    store: JobStore
    ledger: Ledger
    signals: Signals
    reporter: Reporter


class Part:
    """A part of the queue: it keeps what every part works with, for its own use."""

    def __init__(self, parts: Parts) -> None:
        self._db = parts.db
        self._store = parts.store
        self._ledger = parts.ledger
        self._signals = parts.signals
        self._reporter = parts.reporter
