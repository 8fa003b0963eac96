"""The upscale job queue: admission, spooling, bounded concurrency, settlement, recovery.

This is the core of the product and imports nothing from Discord. A front end (the
upscale cog) drives it in this order::

    with queue.admit(guild_id, member_id) as ticket:      # per-member cap; raises QueueFull
        path = queue.spool_path(ticket)                    # download the attachment here
        prepared = await queue.prepare(ticket, path, name)  # validate in a thread; ImageRejected
        job = await queue.submit(ticket, request, prepared, observer)  # reserve; LimitReached

and implements :class:`JobObserver` to show progress, deliver the result and report a
failure. Credits are committed only after ``observer.deliver`` returns, in the same
transaction that marks the job delivered; every failure refunds in the same transaction
that records it. Inputs wait on disk in the spool directory, never in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from bot import images
from bot.db import Database
from bot.ledger import Denial, Ledger, Reservation
from bot.onemin import OneMinClient, OneMinError, RateLimited

log = logging.getLogger(__name__)

# The largest result we accept from 1min.ai: 4x of a 1536 px side, lossless, with margin.
RESULT_MAX_BYTES = 200 * 1024 * 1024
# Image decodes in flight at once while validating inputs; bounds memory under bursts.
PREPARE_CONCURRENCY = 2
# A result must be at least this much larger per side than the input (catches an
# unchanged or tiny "upscaled" image).
MIN_RESULT_SCALE = 2.0

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class Stage(StrEnum):
    """Where a job is; shown to the user."""

    QUEUED = "queued"
    UPLOADING = "uploading"
    UPSCALING = "upscaling"
    DOWNLOADING = "downloading"
    DELIVERING = "delivering"
    DONE = "done"


class QueueFull(Exception):
    """The member already has their maximum number of jobs queued or running."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"member has {limit} jobs queued or running")
        self.limit = limit


class LimitReached(Exception):
    """The ledger refused the reservation."""

    def __init__(self, denial: Denial) -> None:
        super().__init__(denial.reason)
        self.denial = denial


class QueueClosed(Exception):
    """The queue is shutting down and takes no new jobs."""


class DeliveryFailed(Exception):
    """The front end could not deliver the result; ``kind`` says why."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind = kind


class BadResult(Exception):
    """1min.ai returned something that is not a proper upscale of the input."""

    kind = "bad_result"


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What the front end knows about the request."""

    guild_id: int
    channel_id: int
    member_id: int
    role_ids: Collection[int]
    output_format: str = "png"


@dataclass(slots=True)
class Job:
    """One accepted upscale. ``context`` is the front end's own (e.g. the interaction)."""

    id: str
    request: JobRequest
    prepared: PreparedInfo
    input_path: Path
    reservation: Reservation
    observer: JobObserver
    ticket: Ticket
    created: float = field(default_factory=time.monotonic)
    stage: Stage = Stage.QUEUED
    context: Any = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # set once settled

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.created


@dataclass(frozen=True, slots=True)
class PreparedInfo:
    """What validation found, without the bytes (those wait in the spool file)."""

    filename: str
    format: str
    original_size: tuple[int, int]
    size: tuple[int, int]
    source_format: str
    notes: tuple[str, ...]
    input_bytes: int


@dataclass(frozen=True, slots=True)
class JobResult:
    """The upscaled image handed to the front end for delivery."""

    data: bytes
    format: str
    size: tuple[int, int]
    temporary_url: str
    elapsed: float


@dataclass(frozen=True, slots=True)
class JobFailure:
    """Why a job failed, for the user's message."""

    kind: str
    retry_after: float | None = None
    detail: str = ""


class JobObserver(Protocol):
    """Implemented by the front end for each job."""

    def progress(self, job: Job, stage: Stage, position: int | None) -> None:
        """The job moved (``position``: its 1-based place in line while queued).

        Called synchronously from the queue: schedule any slow work, never block.
        """

    async def deliver(self, job: Job, result: JobResult) -> int | None:
        """Post the result; return the message id. Raise :class:`DeliveryFailed` on failure."""

    async def failed(self, job: Job, failure: JobFailure) -> None:
        """Tell the user the job failed (its credits have been refunded)."""


class Ticket:
    """A claimed per-member job slot, held from admission until the job ends."""

    def __init__(self, queue: JobQueue, key: tuple[int, int]) -> None:
        self.id = uuid.uuid4().hex
        self._queue = queue
        self._key = key
        self.submitted = False
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._queue._release_slot(self._key)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.submitted:
            self.release()
            self._queue._discard_spool(self.id)


def _utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class JobQueue:
    """Runs at most ``max_concurrent`` jobs; each member at most ``max_per_member``."""

    def __init__(
        self,
        *,
        db: Database,
        ledger: Ledger,
        onemin: OneMinClient,
        spool_dir: Path,
        max_concurrent: int,
        max_per_member: int,
        cost: int,
        limits: images.ImageLimits | None = None,
    ) -> None:
        self._db = db
        self._ledger = ledger
        self._onemin = onemin
        self.spool_dir = spool_dir
        self.max_concurrent = max_concurrent
        self.max_per_member = max_per_member
        self.cost = cost
        self.limits = limits or images.ImageLimits()
        self._slots: dict[tuple[int, int], int] = {}
        self._pending: deque[Job] = deque()
        self._wakeup = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._prepare_gate = asyncio.Semaphore(PREPARE_CONCURRENCY)
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Create the spool directory and start the workers."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._worker(), name=f"upscale-worker-{i}")
                for i in range(self.max_concurrent)
            ]

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop taking jobs; let running ones finish for ``grace`` s, then cancel them.

        Cancelled and still-queued jobs are refunded and their users told.
        """
        self._closed = True
        while self._pending:
            job = self._pending.popleft()
            await self._fail(job, JobFailure("shutdown"))
        running = list(self._running.values())
        for worker in self._workers:  # take no more jobs from the line
            worker.cancel()
        if running:
            _, still = await asyncio.wait(running, timeout=grace)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    # -- admission ---------------------------------------------------------------------

    def active_jobs(self, guild_id: int, member_id: int) -> int:
        """Jobs the member has queued or running (including ones being prepared)."""
        return self._slots.get((guild_id, member_id), 0)

    def queue_length(self) -> int:
        return len(self._pending)

    def admit(self, guild_id: int, member_id: int) -> Ticket:
        """Claim a job slot for the member, or raise :class:`QueueFull`/:class:`QueueClosed`."""
        if self._closed:
            raise QueueClosed
        key = (guild_id, member_id)
        if self._slots.get(key, 0) >= self.max_per_member:
            raise QueueFull(self.max_per_member)
        self._slots[key] = self._slots.get(key, 0) + 1
        return Ticket(self, key)

    def _release_slot(self, key: tuple[int, int]) -> None:
        left = self._slots.get(key, 0) - 1
        if left > 0:
            self._slots[key] = left
        else:
            self._slots.pop(key, None)

    def spool_path(self, ticket: Ticket, suffix: str = "in") -> Path:
        return self.spool_dir / f"{ticket.id}.{suffix}"

    def _discard_spool(self, job_id: str) -> None:
        for path in self.spool_dir.glob(f"{job_id}.*"):
            with contextlib.suppress(OSError):
                path.unlink()

    async def prepare(self, ticket: Ticket, source: Path, filename: str) -> PreparedInfo:
        """Validate and convert the spooled download; the result replaces it on disk.

        Raises :class:`bot.images.ImageRejected` with a message for the user.
        """
        async with self._prepare_gate:
            prepared = await asyncio.to_thread(_prepare_and_trim, source, filename, self.limits)
            target = self.spool_path(ticket, prepared.format)
            await asyncio.to_thread(_write_file, target, prepared.data)
        await asyncio.to_thread(source.unlink, missing_ok=True)
        return PreparedInfo(
            filename=prepared.filename,
            format=prepared.format,
            original_size=prepared.original_size,
            size=prepared.size,
            source_format=prepared.source_format,
            notes=prepared.notes,
            input_bytes=len(prepared.data),
        )

    async def submit(
        self,
        ticket: Ticket,
        request: JobRequest,
        prepared: PreparedInfo,
        observer: JobObserver,
        *,
        context: Any = None,
    ) -> Job:
        """Reserve the credits and queue the job. Raises :class:`LimitReached`."""
        if self._closed:
            raise QueueClosed
        outcome = await self._ledger.reserve(
            request.guild_id, request.member_id, request.role_ids, self.cost, job_id=ticket.id
        )
        if isinstance(outcome, Denial):
            raise LimitReached(outcome)
        job = Job(
            id=ticket.id,
            request=request,
            prepared=prepared,
            input_path=self.spool_path(ticket, prepared.format),
            reservation=outcome,
            observer=observer,
            ticket=ticket,
            context=context,
        )
        try:
            async with self._db.transaction() as tx:
                await tx.execute(
                    "INSERT INTO jobs (id, guild_id, channel_id, member_id, reservation_id,"
                    " output_format, source_name, input_path, input_bytes, input_width,"
                    " input_height, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        job.id,
                        request.guild_id,
                        request.channel_id,
                        request.member_id,
                        outcome.id,
                        request.output_format,
                        prepared.filename,
                        str(job.input_path),
                        prepared.input_bytes,
                        prepared.size[0],
                        prepared.size[1],
                        _utcnow(),
                    ),
                )
        except BaseException:
            await self._ledger.refund(outcome.id, "not queued")
            raise
        ticket.submitted = True
        self._pending.append(job)
        self._wakeup.set()
        return job

    def position(self, job: Job) -> int | None:
        """1-based place in line, or None when the job is no longer waiting."""
        for index, queued in enumerate(self._pending):
            if queued is job:
                return index + 1
        return None

    # -- running -----------------------------------------------------------------------

    async def _next(self) -> Job:
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        job = self._pending.popleft()
        if not self._pending:
            self._wakeup.clear()
        return job

    async def _worker(self) -> None:
        while True:
            job = await self._next()
            self._notify_positions()
            # Each job runs in its own task, so shutdown can wait for (or cancel) the jobs
            # without touching the workers.
            task = asyncio.create_task(self._run_job(job), name=f"upscale-job-{job.id[:8]}")
            self._running[job.id] = task
            try:
                await asyncio.shield(task)
            finally:
                self._running.pop(job.id, None)

    async def _run_job(self, job: Job) -> None:
        try:
            await self._run(job)
        except asyncio.CancelledError:
            # Stopped by shutdown: refund and tell the member before going away.
            await asyncio.shield(self._fail(job, JobFailure("shutdown")))
            raise

    def _notify_positions(self) -> None:
        for index, job in enumerate(self._pending):
            _report(job, Stage.QUEUED, index + 1)

    async def _stage(self, job: Job, stage: Stage) -> None:
        job.stage = stage
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE jobs SET status = 'running', stage = ?,"
                " started_at = COALESCE(started_at, ?) WHERE id = ?",
                (stage.value, _utcnow(), job.id),
            )
        _report(job, stage, None)

    async def _run(self, job: Job) -> None:
        try:
            result = await self._upscale(job)
            await self._stage(job, Stage.DELIVERING)
            message_id = await job.observer.deliver(job, result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = _failure_for(exc)
            if failure.kind == "bug":
                log.error("Job %s failed unexpectedly", job.id, exc_info=exc)
            elif failure.kind == "out_of_credits":
                log.warning("1min.ai is out of credits: the owner must top up (job %s)", job.id)
            elif failure.kind == "unauthorized":
                log.warning("1min.ai refused the API key (job %s): check ONEMIN_API_KEY", job.id)
            elif isinstance(exc, DeliveryFailed):
                log.warning("Job %s could not be delivered: %s", job.id, failure.detail)
            else:
                log.info("Job %s failed: %s (%s)", job.id, failure.kind, failure.detail)
            await self._fail(job, failure)
            return
        await self._succeed(job, result, message_id)

    async def _upscale(self, job: Job) -> JobResult:
        await self._stage(job, Stage.UPLOADING)
        data = await asyncio.to_thread(job.input_path.read_bytes)
        asset = await self._onemin.upload(
            data, job.prepared.filename, CONTENT_TYPES[job.prepared.format]
        )
        del data
        await self._stage(job, Stage.UPSCALING)
        record = await self._onemin.upscale(asset, job.request.output_format)
        await self._stage(job, Stage.DOWNLOADING)
        raw = await self._onemin.download(record.temporary_url, RESULT_MAX_BYTES)
        fmt, size = await asyncio.to_thread(_check_result, raw, job.prepared.size)
        return JobResult(
            data=raw,
            format=fmt,
            size=size,
            temporary_url=record.temporary_url,
            elapsed=job.elapsed,
        )

    async def _succeed(self, job: Job, result: JobResult, message_id: int | None) -> None:
        async with self._db.transaction() as tx:
            await self._ledger.commit(job.reservation.id, tx=tx)
            await tx.execute(
                "UPDATE jobs SET status = 'delivered', stage = 'done', output_width = ?,"
                " output_height = ?, output_bytes = ?, message_id = ?, finished_at = ?"
                " WHERE id = ?",
                (result.size[0], result.size[1], len(result.data), message_id, _utcnow(), job.id),
            )
        job.stage = Stage.DONE
        self._finish(job)

    async def _fail(self, job: Job, failure: JobFailure) -> None:
        async with self._db.transaction() as tx:
            await self._ledger.refund(job.reservation.id, failure.kind, tx=tx)
            await tx.execute(
                "UPDATE jobs SET status = 'failed', error_kind = ?, finished_at = ? WHERE id = ?",
                (failure.kind, _utcnow(), job.id),
            )
        self._finish(job)
        try:
            await job.observer.failed(job, failure)
        except Exception:
            log.warning("Could not tell the member about failed job %s", job.id, exc_info=True)

    def _finish(self, job: Job) -> None:
        job.ticket.release()
        self._discard_spool(job.id)
        job.settled.set()

    # -- recovery ----------------------------------------------------------------------

    async def recover(
        self, notify: Callable[[int, int, str], Awaitable[None]] | None = None
    ) -> list[str]:
        """Settle jobs a crash left unfinished: refund them and tell their members.

        ``notify(channel_id, member_id, job_id)`` posts the notice. Returns the job ids.
        """
        rows = await self._db.fetchall(
            "SELECT id, channel_id, member_id, reservation_id FROM jobs"
            " WHERE status IN ('queued', 'running')"
        )
        recovered: list[str] = []
        for row in rows:
            async with self._db.transaction() as tx:
                if row["reservation_id"]:
                    await self._ledger.refund(row["reservation_id"], "restart", tx=tx)
                await tx.execute(
                    "UPDATE jobs SET status = 'failed', error_kind = 'restart', finished_at = ?"
                    " WHERE id = ?",
                    (_utcnow(), row["id"]),
                )
            self._discard_spool(row["id"])
            recovered.append(row["id"])
            if notify is not None:
                try:
                    await notify(row["channel_id"], row["member_id"], row["id"])
                except Exception:
                    log.warning("Could not post the restart notice for job %s", row["id"])
        await self._ledger.refund_unsettled()
        # Every job is settled now: whatever is left in the spool (e.g. a download cut
        # off by the crash before its job was recorded) belongs to nobody.
        orphans = await asyncio.to_thread(_clear_dir, self.spool_dir)
        if orphans:
            log.info("Removed %d orphaned spool files", orphans)
        if recovered:
            log.info("Refunded %d jobs left unfinished by a restart", len(recovered))
        return recovered


def _report(job: Job, stage: Stage, position: int | None) -> None:
    try:
        job.observer.progress(job, stage, position)
    except Exception:
        log.warning("Progress report for job %s failed", job.id, exc_info=True)


def _prepare_and_trim(
    source: Path, filename: str, limits: images.ImageLimits
) -> images.PreparedImage:
    """Validate and convert, then hand the decode's freed memory back to the OS.

    A 40 MB input decodes to hundreds of MB of short-lived buffers; glibc keeps freed
    blocks in per-thread arenas, so without a trim every queued job would leave several
    MB of resident memory behind.
    """
    try:
        return images.prepare_input(source, filename, limits)
    finally:
        _malloc_trim()


def _malloc_trim() -> None:
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


def _clear_dir(directory: Path) -> int:
    removed = 0
    if directory.is_dir():
        for path in directory.iterdir():
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def _write_file(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _check_result(raw: bytes, input_size: tuple[int, int]) -> tuple[str, tuple[int, int]]:
    """Decode the result's header: it must be an image clearly larger than the input."""
    try:
        fmt, size = images.describe_image(raw)
    except Exception as exc:
        raise BadResult("result is not a decodable image") from exc
    if size[0] < input_size[0] * MIN_RESULT_SCALE or size[1] < input_size[1] * MIN_RESULT_SCALE:
        raise BadResult(f"result {size} is not an upscale of {input_size}")
    return fmt, size


def _failure_for(exc: BaseException) -> JobFailure:
    if isinstance(exc, RateLimited):
        return JobFailure(exc.kind, retry_after=exc.retry_after, detail=str(exc))
    if isinstance(exc, OneMinError):
        return JobFailure(exc.kind, detail=str(exc))
    if isinstance(exc, DeliveryFailed):
        return JobFailure(exc.kind, detail=str(exc))
    if isinstance(exc, BadResult):
        return JobFailure(exc.kind, detail=str(exc))
    return JobFailure("bug", detail=type(exc).__name__)
