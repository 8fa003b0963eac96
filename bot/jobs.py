"""The upscale job queue: durable, paced, shared by every process on one database.

This is the core of the product and imports nothing from Discord. A front end (the
upscale cog) drives it in this order::

    async with await queue.admit(guild_id, member_id) as ticket:  # per-member cap
        path = queue.spool_path(ticket)                     # download the attachment here
        prepared = await queue.prepare(ticket, path, name)  # validate in a thread; ImageRejected
        job = await queue.submit(ticket, request, prepared)  # reserve + record; LimitReached

and implements :class:`FrontEnd` (once, for every job) to show progress, deliver the
result, find a result that was already delivered, and report a failure.

Durability. A job is a row in ``jobs`` and its prepared input a row in ``job_inputs``,
written in the same transaction as its credit reservation. Each stage the job completes
is recorded as it happens: the 1min.ai asset path after the upload, the result URL after
the ``IMAGE_UPSCALER`` call, ``delivering`` before the result is posted. A process runs a
job under a lease (renewed while it runs); after a restart, or when a process dies and
its lease runs out, the job continues from its last recorded stage: no second upload of
an uploaded asset, no second upscale call once its record was stored (a call cut off in
flight is repeated), and before posting a result that was being delivered the front end
looks for the message first, so every job is delivered once and charged once. Credits
are committed in the transaction that marks the job delivered; a failure refunds in the
transaction that records it. A job is refunded only when finishing is impossible: its
input is lost, it stayed unfinished longer than ``max_age``, or delivery failed for good.

Fleet-wide limits. At most ``max_concurrent`` jobs hold a live lease at once across all
processes (claims are serialised by a database lock), and every 1min.ai request passes
the :class:`bot.pacing.RateGate`. A 429 sends the job back to wait with backoff; it fails
as "busy" only after ``busy_timeout`` seconds.

Memory. Queued inputs wait in the database (``job_inputs``). A result is streamed into
this process's spool (``result-<job>.img``, removed when the job's run ends), then
checked, cropped for Compare and fitted from that file by :mod:`bot.workers` (a large
one in the image worker process), so this process never holds a whole large result.

Cancel. A job that is queued, or running but not yet sent to the upscaler, can be
cancelled by its requester or a moderator: the same transaction marks it cancelled and
refunds it, and the guarded stage change before the upscale call then stops the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from bot import compare, images
from bot.circuit import Circuit
from bot.db import Database, Transaction, ts, utc_now
from bot.failures import FailureKind
from bot.job_metrics import NO_JOB_METRICS, JobMetrics, Outcome
from bot.job_model import (
    CANCELLABLE_STAGES,
    BadResult,
    CancelOutcome,
    DeliveryFailed,
    FrontEnd,
    InputLost,
    Job,
    JobFailure,
    JobRequest,
    JobResult,
    LimitReached,
    PreparedInfo,
    QueueClosed,
    QueueFull,
    Stage,
    Stopped,
    failure_for,
)
from bot.job_work import clear_dir, prepare_and_trim, write_spool_file
from bot.ledger import Denial, Ledger
from bot.onemin import OneMinClient, OutOfCredits, RateLimited, Unauthorized
from bot.pacing import waiting_hook
from bot.workers import ImageWorkers, ResultUnusable

__all__ = [  # the queue's API, with the types it deals in (defined in bot.job_model)
    "CANCELLABLE_STAGES",
    "BadResult",
    "CancelOutcome",
    "DeliveryFailed",
    "FrontEnd",
    "InputLost",
    "Job",
    "JobFailure",
    "JobQueue",
    "JobRequest",
    "JobResult",
    "LimitReached",
    "PreparedInfo",
    "QueueClosed",
    "QueueFull",
    "Stage",
    "Stopped",
    "Ticket",
    "instance_name",
]

log = logging.getLogger(__name__)

# The largest result we accept from 1min.ai: 4x of a 1536 px side, lossless, with margin.
# It is streamed into a spool file, never held in memory.
RESULT_MAX_BYTES = 200 * 1024 * 1024
# Image decodes in flight at once while validating inputs; bounds memory under bursts.
PREPARE_CONCURRENCY = 2
# Intakes (download, validation, recording) in progress at once; the rest wait their turn
# in arrival order. Interleaving a whole burst would finish every intake late, the first
# ones included, while 1min.ai sat idle: in turn, the first jobs start at once.
INTAKE_CONCURRENCY = 4
POLL_INTERVAL = 1.0  # seconds between looks for work another process may have freed
RATE_BACKOFF_BASE = 2.0  # seconds: first wait after a 429 without Retry-After
RATE_BACKOFF_CAP = 60.0  # seconds: longest wait between tries after 429s
CLAIM_LOCK = "jobs:claim"
SLOT_LOCK = "jobs:slot"
# Jobs worked on at once, per slot: while K jobs are with 1min.ai (uploading or
# upscaling), up to K more are claimed and wait for a slot with their input loaded, and
# downloads and deliveries overlap the next uploads and upscales. Bounds memory.
CLAIM_AHEAD = 2
SLOT_POLL = 0.1  # seconds between looks for a slot another process freed
COMPARE_RETENTION_DAYS = 8  # the Compare button works at least a week after delivery
PURGE_INTERVAL = 3600.0  # seconds between purges of expired Compare crops
UNFINISHED = ("queued", "running")

_T = TypeVar("_T")


class Ticket:
    """A claimed per-member slot, held from admission until the job is recorded.

    ``async with ticket`` also waits for one of the queue's intake places (download,
    validation and recording of an image; see :data:`INTAKE_CONCURRENCY`).
    """

    def __init__(self, queue: JobQueue, key: tuple[int, int]) -> None:
        self.id = uuid.uuid4().hex
        self._queue = queue
        self._key = key
        self._released = False
        self._intake = False

    def release(self) -> None:
        if self._intake:
            self._intake = False
            self._queue._intake_gate.release()
        if not self._released:
            self._released = True
            self._queue._release_slot(self._key)

    async def __aenter__(self) -> Ticket:
        await self._queue._intake_gate.acquire()
        self._intake = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
        await asyncio.to_thread(self._queue._discard_spool, self.id)


def instance_name(shard_ids: Collection[int] | None = None) -> str:
    """This process's stable name in the fleet: host and shards.

    A process that restarts under the same name takes its own unfinished jobs back at
    once instead of waiting for their leases to run out.
    """
    shards = ",".join(str(s) for s in sorted(shard_ids)) if shard_ids else "all"
    return f"{socket.gethostname()}/{shards}"


class JobQueue:
    """Runs at most ``max_concurrent`` jobs fleet-wide; each member at most ``max_per_member``."""

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
        lease: float = 30.0,
        busy_timeout: float = 1800.0,
        max_age: float = 86_400.0,
        instance: str | None = None,
        poll_interval: float = POLL_INTERVAL,
        circuit: Circuit | None = None,
        circuit_give_up: float = 3600.0,
        image_workers: ImageWorkers | None = None,
        metrics: JobMetrics = NO_JOB_METRICS,
    ) -> None:
        self._db = db
        self._ledger = ledger
        self._onemin = onemin
        self.spool_dir = spool_dir
        self.max_concurrent = max_concurrent
        self.max_per_member = max_per_member
        self.cost = cost
        self.limits = limits or images.ImageLimits()
        self.lease = lease
        self.busy_timeout = busy_timeout
        self.max_age = max_age
        self.instance = instance or instance_name()
        self.owner = f"{self.instance}:{uuid.uuid4().hex[:8]}"
        self.poll_interval = poll_interval
        self.circuit = circuit
        self.circuit_give_up = circuit_give_up
        # Checks results (and makes their Compare crops) away from the event loop; the
        # queue closes only workers it made itself.
        self._own_workers = image_workers is None
        self.image_workers = image_workers or ImageWorkers()
        self.metrics = metrics  # told when jobs start, change stage and end (bot.job_metrics)
        self.front_end: FrontEnd | None = None
        self._charged_listeners: list[Callable[[Job], Awaitable[None]]] = []
        self._slots: dict[tuple[int, int], int] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._watched: dict[str, Job] = {}  # queued jobs submitted here: shown their place
        self._positions: dict[str, int] = {}
        # Refreshes of the places in line asked for, and the last one a finished read
        # covered (see _refresh_positions).
        self._positions_wanted = 0
        self._positions_done = 0
        self._positions_round = asyncio.Event()
        self._positions_task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()  # set when an upscale of this process answers
        self._tasks: list[asyncio.Task[None]] = []
        self._prepare_gate = asyncio.Semaphore(PREPARE_CONCURRENCY)
        self._intake_gate = asyncio.Semaphore(INTAKE_CONCURRENCY)
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    def attach(self, front_end: FrontEnd) -> None:
        self.front_end = front_end

    def subscribe_charged(self, listener: Callable[[Job], Awaitable[None]]) -> None:
        """Call ``listener`` after a job's credit is charged (e.g. for budget alerts)."""
        self._charged_listeners.append(listener)

    @property
    def _front(self) -> FrontEnd:
        if self.front_end is None:
            raise RuntimeError("no front end attached to the job queue")
        return self.front_end

    def start(self) -> None:
        """Create the spool directory and start claiming jobs and renewing leases."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._dispatch(), name="jobs-dispatch"),
                asyncio.create_task(self._renew_leases(), name="jobs-lease"),
            ]
            if self.circuit is not None:
                self._tasks.append(
                    asyncio.create_task(self.circuit.run(self._stopping), name="jobs-circuit")
                )

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop taking work; running jobs get ``grace`` s, the rest wait for the next start.

        Nothing is refunded: queued jobs stay queued, and jobs stopped mid-way are handed
        back (their lease released) with their recorded progress, so the next start, or
        another process of the fleet, continues them. Their members are told.
        """
        self._closed = True
        self._wakeup.set()
        self._stopping.set()
        # The dispatcher and the lease renewer stop by themselves (they check _closed):
        # cancelling one in the middle of a database transaction would leave it open.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        running = dict(self._running)
        if running:
            _, still = await asyncio.wait(running.values(), timeout=grace)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        if self._own_workers:
            await self.image_workers.close()
        stopped = await self._release_owned()
        for job in stopped:
            with contextlib.suppress(Exception):
                await self._front.paused(job)
        if stopped:
            log.info("%d running jobs will continue at the next start", len(stopped))

    async def _release_owned(self) -> list[Job]:
        """Hand this process's running jobs back to the queue (their progress kept)."""
        async with self._db.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT * FROM jobs WHERE status = 'running' AND lease_owner = ?", (self.owner,)
            )
            await tx.execute(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires = NULL"
                " WHERE status = 'running' AND lease_owner = ?",
                (self.owner,),
            )
        return [Job.from_row(row) for row in rows]

    # -- admission ---------------------------------------------------------------------

    async def active_jobs(self, guild_id: int, member_id: int) -> int:
        """Jobs the member has queued or running (including ones being prepared here)."""
        row = await self._db.fetchone(
            "SELECT COUNT(*) AS n FROM jobs WHERE guild_id = ? AND member_id = ?"
            " AND status IN ('queued', 'running')",
            (guild_id, member_id),
        )
        return (int(row["n"]) if row else 0) + self._slots.get((guild_id, member_id), 0)

    async def admit(self, guild_id: int, member_id: int) -> Ticket:
        """Claim a job slot for the member, or raise :class:`QueueFull`/:class:`QueueClosed`."""
        if self._closed:
            raise QueueClosed
        if await self.active_jobs(guild_id, member_id) >= self.max_per_member:
            raise QueueFull(self.max_per_member)
        key = (guild_id, member_id)
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

    def result_path(self, job: Job) -> Path:
        """Where the job's result is downloaded (removed when the job's run ends here).

        Not named ``<ticket>.*``, so a ticket's clean-up never touches it.
        """
        return self.spool_dir / f"result-{job.id}.img"

    def _discard_spool(self, ticket_id: str) -> None:
        for path in self.spool_dir.glob(f"{ticket_id}.*"):
            with contextlib.suppress(OSError):
                path.unlink()

    async def prepare(self, ticket: Ticket, source: Path, filename: str) -> PreparedInfo:
        """Validate and convert the spooled download; the result replaces it on disk.

        Raises :class:`bot.images.ImageRejected` with a message for the user.
        """
        async with self._prepare_gate:
            prepared = await asyncio.to_thread(prepare_and_trim, source, filename, self.limits)
            target = self.spool_path(ticket, prepared.format)
            await asyncio.to_thread(write_spool_file, target, prepared.data)
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

    async def submit(self, ticket: Ticket, request: JobRequest, prepared: PreparedInfo) -> Job:
        """Reserve the credits and record the job with its input, in one transaction.

        Raises :class:`LimitReached` (nothing recorded) or :class:`QueueClosed`.
        """
        if self._closed:
            raise QueueClosed
        data = await asyncio.to_thread(self.spool_path(ticket, prepared.format).read_bytes)
        now = utc_now()
        job = Job(
            id=ticket.id,
            guild_id=request.guild_id,
            channel_id=request.channel_id,
            member_id=request.member_id,
            output_format=request.output_format,
            prepared=prepared,
            reservation_id="",
            created_at=now.timestamp(),
            context=dict(request.context),
        )
        async with self._db.transaction() as tx:
            outcome = await self._ledger.reserve(
                request.guild_id,
                request.member_id,
                request.role_ids,
                self.cost,
                job_id=job.id,
                tx=tx,
            )
            if isinstance(outcome, Denial):
                raise LimitReached(outcome)
            job.reservation_id = outcome.id
            await _insert_job(tx, job, ts(now))
            await tx.execute("INSERT INTO job_inputs (job_id, data) VALUES (?, ?)", (job.id, data))
        del data
        ticket.release()
        self._watched[job.id] = job
        self._wakeup.set()
        await self._refresh_positions()
        return job

    def position(self, job: Job) -> int | None:
        """1-based place in line as last seen, or None when the job no longer waits."""
        return self._positions.get(job.id)

    # -- cancel ------------------------------------------------------------------------

    async def cancel(self, job_id: str, actor_id: int, *, moderator: bool) -> CancelOutcome:
        """Cancel and refund a job not yet sent to the upscaler (requester or moderator)."""
        async with self._db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT member_id, status, reservation_id FROM jobs WHERE id = ?", (job_id,)
            )
            if row is None:
                return CancelOutcome.NOT_FOUND
            if int(row["member_id"]) != actor_id and not moderator:
                return CancelOutcome.NOT_ALLOWED
            if row["status"] not in UNFINISHED:
                return CancelOutcome.FINISHED
            changed = await tx.execute(
                "UPDATE jobs SET status = 'cancelled', error_kind = ?, finished_at = ?,"
                " lease_owner = NULL WHERE id = ? AND status IN ('queued', 'running')"
                " AND stage IN (?, ?)",
                (FailureKind.CANCELLED, ts(utc_now()), job_id, *CANCELLABLE_STAGES),
            )
            if not changed:
                return CancelOutcome.TOO_LATE
            if row["reservation_id"]:
                await self._ledger.refund(row["reservation_id"], FailureKind.CANCELLED, tx=tx)
            await tx.execute("DELETE FROM job_inputs WHERE job_id = ?", (job_id,))
        self.metrics.job_ended(job_id, Outcome.CANCELLED, credits=self.cost)  # metrics hook
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()  # stop an upload in flight; the job is settled already
        if self.front_end is not None:
            await self.front_end.ended(job_id)
        self._watched.pop(job_id, None)
        self._positions.pop(job_id, None)
        log.info("Job %s cancelled by %d", job_id, actor_id)
        await self._refresh_positions()
        self._wakeup.set()
        return CancelOutcome.CANCELLED

    # -- claiming ----------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while not self._closed:
            try:
                if await self._service_refusing():
                    job = None
                elif len(self._running) < self.max_concurrent * CLAIM_AHEAD:
                    job = await self._claim()
                else:
                    job = None
            except Exception:
                log.warning("Could not claim a job; trying again", exc_info=True)
                job = None
            if job is not None:
                self._start(job)
                continue
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.poll_interval)

    async def _service_refusing(self) -> bool:
        """True while the 1min.ai circuit is open: jobs wait in line (see bot.circuit).

        When it has been open longer than ``circuit_give_up``, waiting jobs are refunded.
        """
        if self.circuit is None:
            return False
        state = await self.circuit.state()
        if not state.open:
            return False
        if state.open_for > self.circuit_give_up:
            await self._refund_waiting(state.reason or FailureKind.CIRCUIT_OPEN)
        return True

    async def _refund_waiting(self, kind: FailureKind) -> None:
        rows = await self._db.fetchall(
            "SELECT * FROM jobs WHERE status = 'queued' ORDER BY created_at, id"
        )
        for row in rows:
            job = Job.from_row(row)
            if await self._settle_failed(job, kind, owned=False):
                self._watched.pop(job.id, None)
                with contextlib.suppress(Exception):
                    await self._front.failed(job, JobFailure(kind))
        if rows:
            log.warning("Refunded %d waiting jobs: 1min.ai kept refusing", len(rows))

    async def _claim(self) -> Job | None:
        """Take the oldest waiting job (or one whose lease ran out) if the fleet works on
        fewer than ``max_concurrent * CLAIM_AHEAD`` jobs (upscales themselves are limited
        to ``max_concurrent`` by :meth:`_take_slot`)."""
        now = time.time()
        async with self._db.transaction() as tx:
            await tx.lock(CLAIM_LOCK)
            row = await tx.fetchone(
                "SELECT COUNT(*) AS n FROM jobs WHERE status = 'running' AND lease_expires > ?",
                (now,),
            )
            if row is not None and int(row["n"]) >= self.max_concurrent * CLAIM_AHEAD:
                return None
            row = await tx.fetchone(
                "SELECT * FROM jobs WHERE status = 'queued'"
                " OR (status = 'running' AND (lease_expires IS NULL OR lease_expires <= ?))"
                " ORDER BY created_at, id LIMIT 1",
                (now,),
            )
            if row is None:
                return None
            # Guarded: on PostgreSQL a Cancel may have committed since the SELECT (the
            # claim lock does not cover it); a cancelled job must never be run.
            claimed = await tx.execute(
                "UPDATE jobs SET status = 'running', lease_owner = ?, lease_expires = ?,"
                " claims = claims + 1, started_at = COALESCE(started_at, ?) WHERE id = ?"
                " AND (status = 'queued' OR (status = 'running'"
                " AND (lease_expires IS NULL OR lease_expires <= ?)))",
                (self.owner, now + self.lease, ts(utc_now()), row["id"], now),
            )
            if not claimed:
                self._wakeup.set()  # look again at once
                return None
        job = Job.from_row(row)
        job.claims += 1
        job.resumed_from = job.stage
        if row["status"] == "running":
            log.info("Took over job %s (its lease ran out)", job.id)
        return job

    def _start(self, job: Job) -> None:
        self._watched.pop(job.id, None)
        self._positions.pop(job.id, None)
        self.metrics.job_started(job)  # metrics hook: timing and jobs in flight
        task = asyncio.create_task(self._run(job), name=f"upscale-job-{job.id[:8]}")
        self._running[job.id] = task
        task.add_done_callback(lambda _: self._finished(job.id))
        asyncio.get_running_loop().create_task(self._refresh_positions())

    def _finished(self, job_id: str) -> None:
        self._running.pop(job_id, None)
        self.metrics.job_left(job_id)  # metrics hook: no longer in flight here
        self._wakeup.set()
        self._slot_freed.set()  # a job that ended while upscaling freed its slot

    async def _renew_leases(self) -> None:
        """Renew this process's leases every third of a lease; purge old crops hourly."""
        next_purge = time.monotonic() + PURGE_INTERVAL
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.lease / 3)
            if not self._closed and time.monotonic() >= next_purge:
                next_purge = time.monotonic() + PURGE_INTERVAL
                with contextlib.suppress(Exception):
                    await self._purge_crops()
            if self._closed or not self._running:
                continue
            try:
                await self._db.write(
                    "UPDATE jobs SET lease_expires = ? WHERE status = 'running'"
                    " AND lease_owner = ?",
                    (time.time() + self.lease, self.owner),
                )
            except Exception:
                log.warning("Could not renew job leases", exc_info=True)

    async def _refresh_positions(self) -> None:
        """Bring the places in line up to date, sharing the work with concurrent callers.

        A burst of submissions would otherwise read the whole queue once per job: calls
        that arrive while a read runs are all served by the next one. Returns once a read
        that started after this call has finished.
        """
        self._positions_wanted += 1
        wanted = self._positions_wanted
        while self._positions_done < wanted:
            if self._positions_task is None or self._positions_task.done():
                self._positions_task = asyncio.create_task(self._positions_loop())
            await self._positions_round.wait()

    async def _positions_loop(self) -> None:
        while self._positions_done < self._positions_wanted:
            covers = self._positions_wanted
            try:
                await self._update_positions()
            finally:
                self._positions_done = covers
                finished, self._positions_round = self._positions_round, asyncio.Event()
                finished.set()

    async def _update_positions(self) -> None:
        """Tell the queued jobs submitted here their place in the fleet's line."""
        if not self._watched:
            self._positions.clear()
            return
        try:
            rows = await self._db.fetchall(
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, id"
            )
        except Exception:
            log.warning("Could not read the queue", exc_info=True)
            return
        positions = {row["id"]: index + 1 for index, row in enumerate(rows)}
        for job_id, job in list(self._watched.items()):
            place = positions.get(job_id)
            if place is None:
                continue
            if self._positions.get(job_id) != place:
                self._positions[job_id] = place
                self._report(job, Stage.QUEUED, place)

    # -- running -----------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        try:
            await self._run_and_settle(job)
        finally:
            # Delivered, failed, stopped or cancelled: the result file is not needed any
            # more (a job run again downloads it again from its stored URL).
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.result_path(job).unlink, missing_ok=True)

    async def _run_and_settle(self, job: Job) -> None:
        hook = waiting_hook.set(lambda place: self._report(job, Stage.WAITING, place))
        try:
            if job.resumed:
                with contextlib.suppress(Exception):
                    await self._front.resumed(job)
            message_id = None
            result: JobResult | None = None
            if job.resumed_from is Stage.DELIVERING:
                message_id = await self._front.find_delivered(job)
            if message_id is None:
                result = await self._work(job)
                await self._advance(job, Stage.DELIVERING)
                message_id = await self._front.deliver(job, result)
        except Stopped as why:
            log.info("Job %s stopped here: %s", job.id, why)
            return
        except asyncio.CancelledError:
            raise
        except (Unauthorized, OutOfCredits) as exc:
            if self.circuit is None:
                await self._fail(job, failure_for(exc), exc)
                return
            # Not this job's fault: it waits in line while the circuit is open.
            await self.circuit.trip(exc.kind)
            await self._hand_back(job)
            return
        except Exception as exc:
            await self._fail(job, failure_for(exc), exc)
            return
        finally:
            waiting_hook.reset(hook)
        await self._succeed(job, result, message_id)

    async def _work(self, job: Job) -> JobResult:
        if job.result_url is None:
            # The input is read while the job waits for its slot (a job claimed ahead waits
            # for one), so the upload can start the moment it has it.
            reading = asyncio.create_task(self._input(job)) if job.asset_path is None else None
            try:
                await self._take_slot(job)  # uploading, or upscaling with the asset stored
            except BaseException:
                if reading is not None:
                    reading.cancel()
                    await asyncio.gather(reading, return_exceptions=True)
                raise
            if reading is not None:
                data = await reading
                prepared = job.prepared
                asset = await self._paced(
                    job,
                    lambda: self._onemin.upload(
                        data, prepared.filename, images.CONTENT_TYPES[prepared.format]
                    ),
                )
                del data
                # After this, too late to cancel.
                await self._advance(job, Stage.UPSCALING, asset_path=asset)
                job.asset_path = asset
            asset_path = job.asset_path
            assert asset_path is not None  # uploaded just now, or stored before a restart
            record = await self._paced(
                job, lambda: self._onemin.upscale(asset_path, job.output_format)
            )
            job.result_url = record.temporary_url
            await self._advance(job, Stage.DOWNLOADING, result_url=job.result_url)
        else:
            await self._advance(job, Stage.DOWNLOADING)
        self._slot_freed.set()  # the upscale answered: its slot is free for the next job
        # The result (up to RESULT_MAX_BYTES) goes straight to a file; the check (a full
        # decode: 64 MB for a 4096x4096 result) and the Compare crops of a large result
        # are made in the image worker, from that file.
        path = self.result_path(job)
        byte_count = await self._onemin.download_to(job.result_url, path, RESULT_MAX_BYTES)
        input_image = await self._stored_input(job)  # for the crops; none without it
        try:
            checked = await self.image_workers.check_result(path, input_image, job.prepared.size)
        except ResultUnusable as exc:
            raise BadResult(str(exc)) from exc
        if checked.crops is None:
            log.info("No comparison for job %s: %s", job.id, checked.no_crops)
        return JobResult(
            path=path,
            byte_count=byte_count,
            format=checked.format,
            size=checked.size,
            temporary_url=job.result_url,
            elapsed=job.elapsed,
            crops=checked.crops,
        )

    async def compare_crops(self, job_id: str) -> compare.CompareCrops | None:
        """The stored crops of a delivered job (kept ``COMPARE_RETENTION_DAYS`` days), or None."""
        row = await self._db.fetchone(
            "SELECT input_crop, result_crop, box FROM compare_crops WHERE job_id = ?", (job_id,)
        )
        if row is None:
            return None
        box, scale = json.loads(row["box"])
        return compare.CompareCrops(
            before=bytes(row["input_crop"]),
            after=bytes(row["result_crop"]),
            box=(int(box[0]), int(box[1]), int(box[2]), int(box[3])),
            scale=(float(scale[0]), float(scale[1])),
        )

    async def _take_slot(self, job: Job) -> None:
        """Wait until fewer than ``max_concurrent`` jobs are with 1min.ai fleet-wide
        (uploading or upscaling), then move this one there, atomically under a
        fleet-wide lock: to ``uploading``, or to ``upscaling`` when it resumes with its
        asset stored.

        Until then the job has not called 1min.ai and can still be cancelled. Raises
        :class:`Stopped` when it was cancelled or taken over while it waited.
        """
        stage = Stage.UPLOADING if job.asset_path is None else Stage.UPSCALING
        told = False
        while True:
            self._slot_freed.clear()
            now = time.time()
            async with self._db.transaction(urgent=True) as tx:
                await tx.lock(SLOT_LOCK)
                row = await tx.fetchone(
                    "SELECT COUNT(*) AS n FROM jobs WHERE status = 'running'"
                    " AND stage IN ('uploading', 'upscaling') AND lease_expires > ?"
                    " AND id <> ?",
                    (now, job.id),
                )
                if row is None or int(row["n"]) < self.max_concurrent:
                    changed = await tx.execute(
                        "UPDATE jobs SET stage = ? WHERE id = ? AND status = 'running'"
                        " AND lease_owner = ?",
                        (stage.value, job.id, self.owner),
                    )
                    if not changed:
                        raise Stopped("cancelled, or taken over by another process")
                    break
            if not told:
                told = True
                self._report(job, Stage.WAITING, None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), SLOT_POLL)
        job.stage = stage
        self._report(job, stage, None)

    async def _paced(self, job: Job, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run a 1min.ai call; a 429 sends the job back to wait, up to ``busy_timeout``."""
        deadline = time.monotonic() + self.busy_timeout
        attempt = 0
        while True:
            try:
                return await call()
            except RateLimited as err:
                attempt += 1
                ceiling = min(RATE_BACKOFF_CAP, RATE_BACKOFF_BASE * 2 ** (attempt - 1))
                delay = err.retry_after or random.uniform(ceiling / 2, ceiling)
                if time.monotonic() + delay > deadline:
                    raise
                log.info("Job %s rate limited by 1min.ai; waiting %.1f s", job.id, delay)
                self._report(job, Stage.WAITING, 1)
                await asyncio.sleep(delay)

    async def _hand_back(self, job: Job) -> None:
        """Put a running job back in line, its recorded progress kept."""
        await self._db.write(
            "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires = NULL"
            " WHERE id = ? AND status = 'running' AND lease_owner = ?",
            (job.id, self.owner),
        )
        self._watched[job.id] = job
        await self._refresh_positions()

    async def _input(self, job: Job) -> bytes:
        data = await self._stored_input(job)
        if data is None:
            raise InputLost("the job's input is no longer stored")
        return data

    async def _stored_input(self, job: Job) -> bytes | None:
        row = await self._db.fetchone("SELECT data FROM job_inputs WHERE job_id = ?", (job.id,))
        return None if row is None else bytes(row["data"])

    async def _advance(
        self,
        job: Job,
        stage: Stage,
        *,
        asset_path: str | None = None,
        result_url: str | None = None,
    ) -> None:
        """Record the job's new stage, with the uploaded asset or the upscale's result
        URL when given, if this process still owns it (else :class:`Stopped`)."""
        changed = await self._db.write(
            "UPDATE jobs SET stage = ?, asset_path = COALESCE(?, asset_path),"
            " result_url = COALESCE(?, result_url)"
            " WHERE id = ? AND status = 'running' AND lease_owner = ?",
            (stage.value, asset_path, result_url, job.id, self.owner),
            urgent=True,
        )
        if not changed:
            raise Stopped("cancelled, or taken over by another process")
        job.stage = stage
        self._report(job, stage, None)

    def _report(self, job: Job, stage: Stage, position: int | None) -> None:
        self.metrics.job_stage(job, stage)  # metrics hook: closes the last stage's time
        if self.front_end is None:
            return
        try:
            self.front_end.progress(job, stage, position)
        except Exception:
            log.warning("Progress report for job %s failed", job.id, exc_info=True)

    async def _succeed(self, job: Job, result: JobResult | None, message_id: int | None) -> None:
        async with self._db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE jobs SET status = 'delivered', stage = 'done', output_width = ?,"
                " output_height = ?, output_bytes = ?, message_id = ?, finished_at = ?,"
                " lease_owner = NULL WHERE id = ? AND status = 'running' AND lease_owner = ?",
                (
                    result.size[0] if result else None,
                    result.size[1] if result else None,
                    result.byte_count if result else None,
                    message_id,
                    ts(utc_now()),
                    job.id,
                    self.owner,
                ),
            )
            if not changed:
                # Another process took the job over while this one was delivering; it
                # finds the posted message and settles the job itself.
                log.warning("Job %s was taken over while delivering; settled there", job.id)
                return
            await self._ledger.commit(job.reservation_id, tx=tx)
            await tx.execute("DELETE FROM job_inputs WHERE job_id = ?", (job.id,))
            if result is not None and result.crops is not None:
                crops = result.crops
                await tx.execute(
                    "INSERT INTO compare_crops (job_id, input_crop, result_crop, box, created_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (job_id) DO NOTHING",
                    (
                        job.id,
                        crops.before,
                        crops.after,
                        json.dumps([list(crops.box), list(crops.scale)]),
                        ts(utc_now()),
                    ),
                )
        job.stage = Stage.DONE
        self.metrics.job_ended(job.id, Outcome.DELIVERED, credits=self.cost)  # metrics hook
        for listener in self._charged_listeners:
            try:
                await listener(job)
            except Exception:
                log.warning("A listener failed after job %s was charged", job.id, exc_info=True)

    async def _fail(self, job: Job, failure: JobFailure, exc: BaseException | None = None) -> None:
        if failure.kind is FailureKind.BUG:
            log.error("Job %s failed unexpectedly", job.id, exc_info=exc)
        elif failure.kind is FailureKind.OUT_OF_CREDITS:
            log.warning("1min.ai is out of credits: the owner must top up (job %s)", job.id)
        elif failure.kind is FailureKind.UNAUTHORIZED:
            log.warning("1min.ai refused the API key (job %s): check ONEMIN_API_KEY", job.id)
        elif isinstance(exc, DeliveryFailed):
            log.warning("Job %s could not be delivered: %s", job.id, failure.detail)
        else:
            log.info("Job %s failed: %s (%s)", job.id, failure.kind, failure.detail)
        if not await self._settle_failed(job, failure.kind, owned=True):
            return
        try:
            await self._front.failed(job, failure)
        except Exception:
            log.warning("Could not tell the member about failed job %s", job.id, exc_info=True)

    async def _settle_failed(self, job: Job, kind: FailureKind, *, owned: bool) -> bool:
        """Record the failure and refund, in one transaction. False if already settled."""
        owner_clause = " AND lease_owner = ?" if owned else ""
        params: tuple[Any, ...] = (kind.value, ts(utc_now()), job.id)
        async with self._db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE jobs SET status = 'failed', error_kind = ?, finished_at = ?,"
                " lease_owner = NULL WHERE id = ? AND status IN ('queued', 'running')"
                + owner_clause,
                params + ((self.owner,) if owned else ()),
            )
            if not changed:
                return False
            if job.reservation_id:
                await self._ledger.refund(job.reservation_id, kind.value, tx=tx)
            await tx.execute("DELETE FROM job_inputs WHERE job_id = ?", (job.id,))
        self.metrics.job_ended(job.id, Outcome.FAILED, kind, credits=self.cost)  # metrics hook
        return True

    # -- recovery ----------------------------------------------------------------------

    async def recover(self, *, single_process: bool) -> list[Job]:
        """At start-up: take this instance's jobs back, refund what cannot be finished.

        With ``single_process`` (SQLite) every running job was this bot's; in a fleet only
        those of this instance are (others are taken over when their leases run out).
        Jobs older than ``max_age``, or whose input was lost, are refunded and their
        members told. Returns the jobs refunded.
        """
        async with self._db.transaction() as tx:
            if single_process:
                await tx.execute(
                    "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires = NULL"
                    " WHERE status = 'running'"
                )
            else:
                await tx.execute(
                    "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires = NULL"
                    " WHERE status = 'running' AND lease_owner LIKE ?",
                    (self.instance + ":%",),
                )
        cutoff = ts(utc_now() - timedelta(seconds=self.max_age))
        rows = await self._db.fetchall(
            "SELECT j.*, (SELECT COUNT(*) FROM job_inputs i WHERE i.job_id = j.id) AS has_input"
            " FROM jobs j WHERE j.status = 'queued' ORDER BY j.created_at, j.id"
        )
        refunded: list[Job] = []
        for row in rows:
            job = Job.from_row(row)
            if row["created_at"] < cutoff:
                kind = FailureKind.EXPIRED
            elif not row["has_input"] and row["asset_path"] is None and row["result_url"] is None:
                kind = FailureKind.INPUT_LOST
            else:
                continue
            if await self._settle_failed(job, kind, owned=False):
                refunded.append(job)
                with contextlib.suppress(Exception):
                    await self._front.failed(job, JobFailure(kind))
        unfinished = await self._db.fetchall(
            "SELECT id FROM jobs WHERE status IN ('queued', 'running')"
        )
        if single_process:
            await self._ledger.refund_unsettled(exclude_job_ids={r["id"] for r in unfinished})
        await self._purge_crops()
        orphans = await asyncio.to_thread(clear_dir, self.spool_dir)
        if orphans:
            log.info("Removed %d orphaned spool files", orphans)
        if unfinished:
            log.info("%d unfinished jobs will continue", len(unfinished))
        if refunded:
            log.info("Refunded %d jobs that can no longer be finished", len(refunded))
        return refunded

    async def _purge_crops(self) -> None:
        """Forget Compare crops older than the retention (the button then says so)."""
        await self._db.write(
            "DELETE FROM compare_crops WHERE created_at < ?",
            (ts(utc_now() - timedelta(days=COMPARE_RETENTION_DAYS)),),
        )

    # -- observation -------------------------------------------------------------------

    def busy_here(self) -> bool:
        """True while this process prepares or runs a job."""
        return bool(self._slots or self._running)

    async def unfinished(self) -> int:
        """Jobs queued or running anywhere in the fleet."""
        row = await self._db.fetchone(
            "SELECT COUNT(*) AS n FROM jobs WHERE status IN ('queued', 'running')"
        )
        return int(row["n"]) if row else 0

    async def waiting(self) -> int:
        """Jobs waiting in line anywhere in the fleet (not yet claimed by a process)."""
        row = await self._db.fetchone("SELECT COUNT(*) AS n FROM jobs WHERE status = 'queued'")
        return int(row["n"]) if row else 0

    async def idle(self) -> bool:
        return not self.busy_here() and await self.unfinished() == 0


async def _insert_job(tx: Transaction, job: Job, created_at: str) -> None:
    prepared = job.prepared
    await tx.execute(
        "INSERT INTO jobs (id, guild_id, channel_id, member_id, reservation_id,"
        " output_format, source_name, source_format, input_format, input_bytes,"
        " input_width, input_height, original_width, original_height, notes, context,"
        " created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            job.id,
            job.guild_id,
            job.channel_id,
            job.member_id,
            job.reservation_id,
            job.output_format,
            prepared.filename,
            prepared.source_format,
            prepared.format,
            prepared.input_bytes,
            prepared.size[0],
            prepared.size[1],
            prepared.original_size[0],
            prepared.original_size[1],
            json.dumps(list(prepared.notes)),
            json.dumps(job.context),
            created_at,
        ),
    )
