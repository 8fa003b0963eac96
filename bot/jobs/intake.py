"""Taking a job in: recorded at the acknowledgement, then its image fetched and checked.

A job exists from just after the member sees "thinking" (the front end journals that
gap, and tells the member if a restart falls in it). :meth:`Intake.accept` records it,
under the id the request names when it names one, with the attachment's URL and its
file name, cleaned (:func:`bot.images.clean_filename`: the name every later step uses),
and reserves its credits in one transaction, after the member's cap
(``MAX_JOBS_PER_USER``) is checked in that same transaction, under the guild's lock, so
concurrent requests can never pass it. The job starts in status
``intake``, under a lease held by this process.

:meth:`Intake.take_in` then downloads the image into the spool, validates and converts
it in a thread, and stores the prepared input with the job, which moves into line
(``queued``). At most ``INTAKE_CONCURRENCY`` intakes run at once, in arrival order; a
burst interleaved would finish every intake late, the first ones included, while
1min.ai sat idle. Anything wrong with the image fails the job and refunds it in one
transaction, and raises :class:`InputRefused` with the member's words; so does a
database whose disk is full when the image is stored (the member hears it in those
words, and that nothing was charged).

A process killed during intake leaves the job in ``intake``: the next start, or (in a
fleet) another process once the lease runs out, takes it in again from the stored URL.
If the attachment is gone by then, the job is refunded and the member told so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from bot import images
from bot.db import utc_now
from bot.db.outages import report_db_outage, through_outages
from bot.db.signals import Signal
from bot.db.transient import DbOutageKind, db_outage
from bot.failures import FailureKind
from bot.i18n import Text
from bot.images.download import DownloadFailed, DownloadTooLarge, SourceGone
from bot.jobs.model import (
    InputRefused,
    Job,
    JobRequest,
    JobStatus,
    LimitReached,
    PreparedInfo,
    QueueClosed,
    QueueFull,
    Stage,
)
from bot.jobs.parts import Part, Parts
from bot.jobs.positions import Positions
from bot.jobs.settlement import Settlement
from bot.jobs.work import prepare_and_trim
from bot.ledger import Denial, guild_lock

log = logging.getLogger(__name__)

# Intakes (download, validation, recording) in progress at once; the rest wait their turn
# in arrival order.
INTAKE_CONCURRENCY = 4
# Image decodes in flight at once while validating inputs; bounds memory under bursts.
PREPARE_CONCURRENCY = 2

# Downloads a member's image: (url, path, max_bytes) -> bytes written. Raises
# DownloadTooLarge, SourceGone or DownloadFailed (see bot.images.download).
FetchSource = Callable[[str, Path, int], Awaitable[int]]


def too_large_text(max_bytes: int) -> Text:
    """The image is over ``max_bytes``: by its declared size (refused before the
    acknowledgement, :mod:`cogs.intake`) or while it downloads (the job fails)."""
    return Text.of("error.too_large_download", max_mb=max_bytes // 1_000_000)


DOWNLOAD_FAILED = Text.of("error.download_failed")
SOURCE_GONE = Text.of("error.source_gone")
DATABASE_FULL = Text.of("error.database_full")


def _with_clean_name(request: JobRequest) -> JobRequest:
    """``request`` with its image's file name cleaned: the job is recorded, logged, sent
    to 1min.ai and posted under that name only (:func:`bot.images.clean_filename`)."""
    source = request.source
    clean = dataclasses.replace(source, filename=images.clean_filename(source.filename))
    return dataclasses.replace(request, source=clean)


@dataclass(slots=True)
class _GuildTurn:
    """A guild's lock in this process, and how many acceptances hold or wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Intake(Part):
    """Records jobs and takes their images in; see the module docstring."""

    def __init__(
        self,
        parts: Parts,
        *,
        positions: Positions,
        settlement: Settlement,
        fetch: FetchSource,
        closed: Callable[[], bool],
    ) -> None:
        super().__init__(parts)
        self._positions = positions
        self._settlement = settlement
        self._fetch = fetch
        self._closed = closed
        self._gate = asyncio.Semaphore(INTAKE_CONCURRENCY)
        self._prepare_gate = asyncio.Semaphore(PREPARE_CONCURRENCY)
        self._in_progress: set[str] = set()
        # Acceptances of one guild queue here, in this process, for the guild's lock: a
        # burst in one guild then holds one database connection, not one per request
        # waiting for the lock, and leaves the others to the jobs already in line.
        # (Only guilds with acceptances in progress have one.)
        self._guild_turns: dict[int, _GuildTurn] = {}

    @contextlib.asynccontextmanager
    async def _guild_turn(self, guild_id: int) -> AsyncIterator[None]:
        """This process's turn at ``guild_id``'s lock; forgotten once nobody holds or waits
        for it, so a bot in many guilds keeps a lock only for those accepting right now."""
        turn = self._guild_turns.get(guild_id)
        if turn is None:
            turn = self._guild_turns[guild_id] = _GuildTurn()
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if not turn.users:
                del self._guild_turns[guild_id]

    @property
    def busy(self) -> bool:
        """True while this process takes an image in."""
        return bool(self._in_progress)

    async def accept(self, request: JobRequest) -> Job:
        """Record the job and reserve its credits, or raise :class:`QueueFull`,
        :class:`LimitReached` or :class:`QueueClosed` (then nothing is recorded)."""
        if self._closed():
            raise QueueClosed
        now = utc_now()
        job = Job.requested(_with_clean_name(request), now.timestamp())
        await self._ledger.ensure_guild(request.guild_id)  # a write once per guild
        async with self._guild_turn(request.guild_id), self._db.transaction() as tx:
            # The cap is checked under the guild's lock, which the reservation takes
            # too (SQLite: every writer is serialised), so two requests of one member
            # cannot both pass it.
            await tx.lock(guild_lock(request.guild_id))
            active = await self._store.intake.count_member_unfinished(
                tx, request.guild_id, request.member_id
            )
            if active >= self._config.max_per_member:
                raise QueueFull(self._config.max_per_member)
            outcome = await self._ledger.reserve(
                request.guild_id,
                request.member_id,
                request.role_ids,
                self._config.cost,
                job_id=job.id,
                tx=tx,
            )
            if isinstance(outcome, Denial):
                raise LimitReached(outcome)
            job.reservation_id = outcome.id
            await self._store.intake.insert_job(tx, job, time.time() + self._config.lease)
        self._reporter.log_stage(job, Stage.RECEIVING, job.source.filename)
        return job

    async def take_in(self, job: Job) -> bool:
        """Fetch, check and store the job's image; the job then waits in line.

        Returns False when the job was cancelled or taken over meanwhile. Raises
        :class:`InputRefused` (the job failed and refunded) when the image cannot be used.
        """
        self._in_progress.add(job.id)
        try:
            async with self._gate:
                return await self._take_in(job)
        finally:
            self._in_progress.discard(job.id)
            await asyncio.to_thread(self._discard_spool, job.id)

    async def _take_in(self, job: Job) -> bool:
        path = self.spool_dir / f"{job.id}.in"
        try:
            await self._fetch(job.source.url, path, self._config.limits.max_bytes)
            async with self._prepare_gate:
                prepared = await asyncio.to_thread(
                    prepare_and_trim, path, job.source.filename, self._config.limits
                )
        except DownloadTooLarge:
            await self._refuse(
                job, FailureKind.INPUT_INVALID, too_large_text(self._config.limits.max_bytes)
            )
        except SourceGone:
            await self._refuse(job, FailureKind.SOURCE_GONE, SOURCE_GONE)
        except DownloadFailed:
            await self._refuse(job, FailureKind.SOURCE_FAILED, DOWNLOAD_FAILED)
        except images.ImageRejected as exc:
            await self._refuse(job, FailureKind.INPUT_INVALID, exc.text)
        info = PreparedInfo.of(prepared)
        # Through a database outage the image waits here (the job is recorded and its
        # credit reserved: it must not die of it); the write names the intake's claim.
        try:
            stored = await through_outages(
                functools.partial(self._store_input, job, info, prepared.data),
                logger=log,
                doing="storing a job's image",
            )
        except Exception as exc:
            if db_outage(exc) is not DbOutageKind.DISK_FULL:
                raise
            # The image cannot be kept until an owner frees space. The member is told so,
            # and that nothing was charged: the job ends here, refunded (its row and the
            # ledger's change in place), and is not taken in again later.
            report_db_outage(log, "storing a job's image", exc)
            await self._refuse(job, FailureKind.INPUT_LOST, DATABASE_FULL)
        del prepared
        if not stored:
            log.info("Job %s was cancelled or taken over during its intake", job.id)
            return False
        job.prepared = info
        job.status = JobStatus.QUEUED
        job.stage = Stage.QUEUED
        self._reporter.log_stage(job, Stage.QUEUED, f"{info.size[0]}x{info.size[1]} {info.format}")
        self._positions.watch(job)
        await self._positions.refresh()
        return True

    async def _store_input(self, job: Job, info: PreparedInfo, data: bytes) -> bool:
        async with self._db.transaction(urgent=True) as tx:
            stored = await self._store.intake.store_input(tx, job, info, data)
            if stored:
                await self._signals.send(Signal.QUEUED, tx=tx)
        return stored

    async def _refuse(self, job: Job, kind: FailureKind, text: Text) -> NoReturn:
        """Fail and refund the job for its image; raises :class:`InputRefused`."""
        log.info("Job %s: image refused (%s: %s)", job.id, kind, text.english())
        await self._settlement.settle_failure(job, kind, owned=True)
        raise InputRefused(kind, text)

    def _discard_spool(self, job_id: str) -> None:
        for path in self.spool_dir.glob(f"{job_id}.*"):
            with contextlib.suppress(OSError):
                path.unlink()
