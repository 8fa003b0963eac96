"""Fakes around one part of the job queue, to test it alone (no database, no 1min.ai).

:func:`parts_with` builds the :class:`bot.jobs.parts.Parts` bundle a part is given: a
database whose transactions only record the locks they take, signals and a front end
that record what they were told, the store the test passes (a fake with just the
statements the part under test uses), the queue's configuration and a spool directory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bot.db.signals import Signal
from bot.jobs import Job, JobFailure, JobResult, JobStatus, Progress, Source, Stage
from bot.jobs.config import QueueConfig
from bot.jobs.model import PreparedInfo
from bot.jobs.parts import Parts
from bot.jobs.report import Reporter

PROCESS = "test-host/all:1.abcdef"


@dataclass
class FakeTransaction:
    """A transaction that only records the locks it takes."""

    locks: list[str] = field(default_factory=list)

    async def lock(self, *keys: str) -> None:
        self.locks.extend(keys)


@dataclass
class FakeDatabase:
    """Hands out :class:`FakeTransaction` s and keeps them, in order."""

    transactions: list[FakeTransaction] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def transaction(self, *, urgent: bool = False) -> AsyncIterator[FakeTransaction]:
        tx = FakeTransaction()
        self.transactions.append(tx)
        yield tx


@dataclass
class RecordedSignals:
    """Signals sent, as (signal, payload, sent inside a transaction)."""

    sent: list[tuple[Signal, str, bool]] = field(default_factory=list)

    async def send(self, signal: Signal, payload: str = "", *, tx: object = None) -> None:
        self.sent.append((signal, payload, tx is not None))

    def kinds(self) -> list[Signal]:
        return [signal for signal, _, _ in self.sent]


@dataclass
class RecordingFront:
    """A front end (:class:`bot.jobs.FrontEnd`) that records what it was told; a result
    it posts gets ``message_id``."""

    message_id: int = 42
    shown: list[tuple[str, Progress]] = field(default_factory=list)
    posted: list[str] = field(default_factory=list)
    failures: list[tuple[str, JobFailure]] = field(default_factory=list)

    def stages(self, job_id: str) -> list[Stage]:
        """The stages shown for ``job_id``, in order."""
        return [p.stage for j, p in self.shown if j == job_id]

    def show_progress(self, job: Job, progress: Progress) -> None:
        self.shown.append((job.id, progress))

    async def deliver(self, job: Job, result: JobResult) -> int | None:
        self.posted.append(job.id)
        return self.message_id

    async def find_delivered(self, job: Job) -> int | None:
        return None

    async def tell_failed(self, job: Job, failure: JobFailure) -> None:
        self.failures.append((job.id, failure))

    async def tell_resumed(self, job: Job) -> None:
        pass

    async def tell_paused(self, job: Job) -> None:
        pass

    async def stop_showing(self, job_id: str) -> None:
        pass


@dataclass
class Bundle:
    """What :func:`parts_with` made: the bundle, and the fakes in it."""

    parts: Parts
    db: FakeDatabase
    signals: RecordedSignals
    front: RecordingFront
    reporter: Reporter


# The groups of statements a JobStore holds (store.intake, store.claims...).
STORE_GROUPS = frozenset({"intake", "claims", "runs", "endings", "housekeeping", "views"})


@dataclass(frozen=True)
class EveryGroup:
    """A :class:`bot.jobs.store.JobStore` whose every group of statements is one fake
    (anything else, such as ``owner``, is the fake's own)."""

    statements: object

    def __getattr__(self, name: str) -> object:
        return self.statements if name in STORE_GROUPS else getattr(self.statements, name)


def parts_with(store: object, config: QueueConfig, spool_dir: Path) -> Bundle:
    """A :class:`Parts` bundle around ``store`` (a fake of the statements a part uses,
    whichever of the store's groups they belong to)."""
    db = FakeDatabase()
    signals = RecordedSignals()
    front = RecordingFront()
    reporter = Reporter(PROCESS)
    reporter.front_end = front
    parts = Parts(
        db=cast(Any, db),
        store=cast(Any, EveryGroup(store)),
        ledger=cast(Any, None),  # no part tested alone touches the ledger
        signals=cast(Any, signals),
        reporter=reporter,
        config=config,
        spool_dir=spool_dir,
    )
    return Bundle(parts, db, signals, front, reporter)


def a_job(number: int = 1, **recorded: Any) -> Job:
    """A running job with its input taken in; ``recorded`` sets any other field."""
    job = Job(
        id=f"job-{number:04d}",
        guild_id=100,
        channel_id=200,
        member_id=301,
        output_format="png",
        source=Source(f"https://cdn.example/attachments/{number}/cat.png", "cat.png"),
        context="",
        reservation_id=f"reservation-{number}",
        created_at=0.0,
        status=JobStatus.RUNNING,
        stage=Stage.QUEUED,
        prepared=PreparedInfo(
            filename="cat.png",
            format="png",
            original_size=(64, 48),
            size=(64, 48),
            source_format="png",
            notes=(),
            input_bytes=100,
        ),
    )
    for name, value in recorded.items():
        setattr(job, name, value)
    return job


def config(**options: Any) -> QueueConfig:
    """A queue configuration: 2 slots, unless ``options`` say otherwise."""
    values: dict[str, Any] = {"max_concurrent": 2, "max_per_member": 2, "cost": 1}
    values.update(options)
    return QueueConfig(**values)
