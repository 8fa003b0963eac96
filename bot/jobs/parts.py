"""What every part of the job queue works with, handed to each in one piece.

The parts of :mod:`bot.jobs` (intake, settlement, recovery, and the runner's dispatcher,
leases and pipeline) share the database, the store of the job tables, the ledger, the
fleet's wake-ups, the reporter (front end, log, metrics), the queue's configuration and
its spool directory; :class:`JobQueue` builds them once and gives each part this bundle
with what is its own (the runner hands it on to its parts); each part is a :class:`Part`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bot.db import Database
from bot.db.signals import Signals
from bot.jobs.config import QueueConfig
from bot.jobs.report import Reporter
from bot.jobs.store import JobStore
from bot.ledger import Ledger


@dataclass(frozen=True, slots=True)
class Parts:
    db: Database
    store: JobStore
    ledger: Ledger
    signals: Signals
    reporter: Reporter
    config: QueueConfig
    spool_dir: Path  # where inputs and results wait on disk


class Part:
    """A part of the queue: it keeps what every part works with, for its own use."""

    def __init__(self, parts: Parts) -> None:
        self._db = parts.db
        self._store = parts.store
        self._ledger = parts.ledger
        self._signals = parts.signals
        self._reporter = parts.reporter
        self._config = parts.config
        self.spool_dir = parts.spool_dir
