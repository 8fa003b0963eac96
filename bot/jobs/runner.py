"""Running jobs: claims, leases, upscale slots and the work pipeline.

Claims. The dispatcher takes the oldest waiting job (or one whose lease ran out) while
the fleet works on fewer than ``max_concurrent * CLAIM_AHEAD`` jobs, under a fleet-wide
lock; it also takes in again an intake whose process died. It sleeps until woken (a job
queued, a slot freed, a job ended, the circuit changed: :mod:`bot.db.signals`) and looks
again on its own only every ``poll_interval`` seconds (:data:`bot.timings.FALLBACK_POLL`),
with one cheap read, so an idle process costs almost nothing. A job waiting for a slot
likewise sleeps until one is freed anywhere, looking again every ``poll_interval``.

Leases. A process runs a job under a lease it renews every third of the lease; when a
process dies, another takes its jobs over once their leases run out. A dead process
wakes nobody, so the look before a claim also reads when another process's next lease
runs out, and the dispatcher looks again then if nothing wakes it sooner.

Slots. At most ``max_concurrent`` jobs are with 1min.ai (uploading or upscaling) across
the fleet; a job claimed ahead reads its input and waits for a slot, woken when one is
freed anywhere. Until it has one it has not called 1min.ai and can still be cancelled.

The pipeline. Upload (unless the asset is stored), upscale (unless the result URL is
stored), download and check the result, deliver, settle. Each stage is recorded as it
happens, so a job cut off anywhere continues from its last recorded stage: no second
upload of an uploaded asset, no second upscale once its record was stored (a call cut
off in flight is repeated), and a job cut off while delivering first looks for its
posted result (and, when it is there, is settled without a word to the member: the
result is what they see). A 429 sends the job back to wait with backoff, up to
``busy_timeout``; 1min.ai refusing the account (401, 406) opens the circuit and hands
the job back to wait in line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from bot import images
from bot.db.signals import Signal
from bot.failures import FailureKind
from bot.images.workers import ImageWorkers, ResultUnusable
from bot.jobs.intake import INTAKE_CONCURRENCY, Intake
from bot.jobs.model import (
    SLOT_STAGES,
    InputRefused,
    Job,
    JobFailed,
    JobFailure,
    JobResult,
    JobStatus,
    Progress,
    Stage,
    Stopped,
    WaitReason,
    failure_for,
)
from bot.jobs.parts import Part, Parts
from bot.jobs.positions import Positions, WaitInfo
from bot.jobs.settlement import Settlement
from bot.onemin.circuit import Circuit
from bot.onemin.client import OneMinClient, OutOfCredits, RateLimited, Unauthorized
from bot.onemin.pacing import waiting_hook
from bot.retry import retry

log = logging.getLogger(__name__)

# The largest result we accept from 1min.ai: 4x of a 1536 px side, lossless, with margin.
# It is streamed into a spool file, never held in memory.
RESULT_MAX_BYTES = 200 * 1024 * 1024
CLAIM_LOCK = "jobs:claim"
SLOT_LOCK = "jobs:slot"
# Jobs worked on at once, per slot: while K jobs are with 1min.ai (uploading or
# upscaling), up to K more are claimed and wait for a slot with their input loaded, and
# downloads and deliveries overlap the next uploads and upscales. Bounds memory.
CLAIM_AHEAD = 2
# Seconds after another process's lease runs out before looking (clocks of a fleet's
# machines differ a little; a look that comes too early finds nothing and waits again).
LAPSE_MARGIN = 0.05
# Waits after 429s without Retry-After.

_T = TypeVar("_T")


class Runner(Part):
    """Claims and runs jobs in this process; see the module docstring."""

    def __init__(
        self,
        parts: Parts,
        *,
        onemin: OneMinClient,
        intake: Intake,
        settlement: Settlement,
        positions: Positions,
        image_workers: ImageWorkers,
        circuit: Circuit | None,
        on_poll: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(parts)
        self._onemin = onemin
        self._intake = intake
        self._settlement = settlement
        self._positions = positions
        self._workers = image_workers
        self.circuit = circuit
        self._on_poll = on_poll
        self._running: dict[str, asyncio.Task[None]] = {}
        self._jobs: dict[str, Job] = {}  # the jobs of _running
        self._intakes: dict[str, asyncio.Task[None]] = {}
        self._wakeup = asyncio.Event()
        # This process's jobs waiting for an upscale slot, in claim order (see _take_slot).
        self._slot_line: list[asyncio.Event] = []
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._claims = True
        self._intakes_may_lapse = True  # see _claim_round
        self._next_lapse: float | None = None  # see _until_next_look
        self.closed = False

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, *, claim: bool = True) -> None:
        """Renew leases and (with ``claim``) claim and run jobs."""
        if self._tasks:
            return
        self._claims = claim
        self._tasks = [
            asyncio.create_task(self._renew_leases(), name="jobs-lease"),
            asyncio.create_task(self._dispatch(), name="jobs-dispatch"),
        ]

    def wake(self) -> None:
        self._wakeup.set()

    def on_signal(self, signal: Signal, payload: str) -> None:
        """A wake-up from the fleet (or this process): a freed slot wakes the head of the
        slot line; work queued, a job ended (room in the fleet) or the circuit changing
        wakes the dispatcher. Another process's claim changes nothing here."""
        if signal is Signal.SLOT:
            self._slot_freed()
        elif signal is not Signal.CLAIMED:
            self._wakeup.set()

    @property
    def busy(self) -> bool:
        return bool(self._running or self._intakes)

    @property
    def in_flight(self) -> int:
        return len(self._running) + len(self._intakes)

    def running(self, job_id: str) -> bool:
        return job_id in self._running

    def holds(self, job_id: str) -> bool:
        """True while this process runs the job and has not settled it."""
        job = self._jobs.get(job_id)
        return job is not None and job.status is JobStatus.RUNNING

    def stop_job(self, job_id: str) -> None:
        """Stop this process's work on a job settled elsewhere (e.g. cancelled)."""
        task = self._running.get(job_id) or self._intakes.get(job_id)
        if task is not None:
            task.cancel()

    async def stop(self, grace: float, *, hand_back: bool = True) -> list[Job]:
        """Stop claiming; running work gets ``grace`` s; the rest is handed back.

        Returns the jobs handed back (their members are told by the caller). Without
        ``hand_back`` their leases are left to run out, as a process that died would
        leave them.
        """
        self.closed = True
        self._wakeup.set()
        self._stopping.set()
        # The dispatcher and the lease renewer stop by themselves (they check closed):
        # cancelling one in the middle of a database transaction would leave it open.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        work = [*self._running.values(), *self._intakes.values()]
        if work:
            _, still = await asyncio.wait(work, timeout=grace)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        return await self._store.release_owned() if hand_back else []

    # -- claiming ----------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while not self.closed:
            self._wakeup.clear()
            try:
                started = await self._claim_round()
            except Exception:
                log.warning("Could not claim a job; trying again", exc_info=True)
                started = False
            if started:
                continue
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._until_next_look())
            except TimeoutError:
                # Nothing woke us for a while, or another process's lease ran out: look
                # around as the wake-ups would have made us (a notification may have
                # been lost, and a dead process sends none).
                self._intakes_may_lapse = True
                if self._on_poll is not None:
                    with contextlib.suppress(Exception):
                        await self._on_poll()

    def _until_next_look(self) -> float:
        """Seconds until the dispatcher looks on its own: the fallback interval, or less
        when another process's lease runs out sooner (a process that dies wakes nobody)."""
        wait = self._config.poll_interval
        lapse, self._next_lapse = self._next_lapse, None
        if lapse is not None:
            wait = min(wait, max(0.0, lapse - time.time()) + LAPSE_MARGIN)
        return wait

    async def _claim_round(self) -> bool:
        """Claim and start what this process can now; True when it started something.

        Nothing is read while this process has no room for more work. Otherwise one
        cheap read first says whether a claim's transaction is worth making (most
        wake-ups in a busy fleet are about jobs other processes hold). Intakes lapse
        only when a process dies or restarts, so they are looked for at start, on the
        slow fallback look, and while the last look found some.
        """
        job_room = len(self._running) < self._config.max_concurrent * CLAIM_AHEAD
        intake_room = self._intakes_may_lapse and len(self._intakes) < INTAKE_CONCURRENCY
        if not self._claims or not (job_room or intake_room) or await self._service_refusing():
            return False
        now = time.time()
        look = await self._store.anything_to_claim(now)
        jobs, intakes = look.jobs, look.intakes
        self._intakes_may_lapse = intakes
        self._next_lapse = look.next_lapse
        started = False
        if intakes and intake_room:
            intake = await self._claim_intake(now)
            if intake is not None:
                self._start_intake(intake)
                started = True
        if jobs and job_room:
            job = await self._claim(now)
            if job is not None:
                self._start(job)
                started = True
        return started

    async def _service_refusing(self) -> bool:
        """True while the 1min.ai circuit is open: jobs wait in line (see bot.onemin.circuit).

        When it has been open longer than ``circuit_give_up``, waiting jobs are refunded.
        """
        if self.circuit is None:
            return False
        state = await self.circuit.state()
        if not state.open:
            return False
        if state.open_for > self._config.circuit_give_up:
            await self._refund_waiting(state.reason or FailureKind.CIRCUIT_OPEN)
        return True

    async def line_waits(self) -> WaitInfo:
        """Why the whole line waits (1min.ai refusing the bot's account), and until when
        it waits at most before it is refunded; None when it does not."""
        if self.circuit is None:
            return None
        state = await self.circuit.state()
        if not state.open:
            return None
        opened = state.opened_at if state.opened_at is not None else time.time()
        return (WaitReason.SERVICE_REFUSING, opened + self._config.circuit_give_up)

    async def _refund_waiting(self, kind: FailureKind) -> None:
        rows = await self._store.waiting_rows()
        for row in rows:
            job = Job.from_row(row)
            if await self._settlement.settle_failed(job, kind, owned=False):
                self._positions.unwatch(job.id)
                await self._reporter.tell_failed(job, JobFailure(kind))
        if rows:
            log.warning("Refunded %d waiting jobs: 1min.ai kept refusing", len(rows))

    async def _claim(self, now: float) -> Job | None:
        """Take the oldest waiting job (or one whose lease ran out) if the fleet works on
        fewer than ``max_concurrent * CLAIM_AHEAD`` jobs (upscales themselves are limited
        to ``max_concurrent`` by :meth:`_take_slot`)."""
        async with self._db.transaction() as tx:
            await tx.lock(CLAIM_LOCK)
            if await self._store.live_leases(tx, now) >= self._config.max_concurrent * CLAIM_AHEAD:
                return None
            row = await self._store.next_claimable(tx, now)
            if row is None:
                return None
            if not await self._store.claim(tx, row["id"], now, self._config.lease):
                self._wakeup.set()  # cancelled meanwhile: look again at once
                return None
            await self._signals.send(Signal.CLAIMED, row["id"], tx=tx)
            if row["status"] == JobStatus.RUNNING and row["stage"] in SLOT_STAGES:
                # Taken over from a dead process that held a slot: the slot is free now
                # (a dead process frees nothing itself), for whoever waits first.
                await self._signals.send(Signal.SLOT, tx=tx)
        job = Job.from_row(row)
        took_over = row["status"] == JobStatus.RUNNING
        job.status = JobStatus.RUNNING
        job.claims += 1
        job.resumed = bool(row["resume_notice"]) or took_over
        job.resumed_from = job.stage
        if job.stage in SLOT_STAGES:
            job.stage = Stage.QUEUED  # no slot until _take_slot gives it one (see CLAIM)
        if took_over:
            log.info("Took over job %s (its lease ran out)", job.id)
        return job

    async def _claim_intake(self, now: float) -> Job | None:
        """Take over an intake whose process died (its lease ran out)."""
        async with self._db.transaction() as tx:
            await tx.lock(CLAIM_LOCK)
            row = await self._store.next_lapsed_intake(tx, now)
            if row is None or not await self._store.claim_intake(
                tx, row["id"], now, self._config.lease
            ):
                return None
        job = Job.from_row(row)
        job.resumed = True
        log.info("Taking in job %s again (its intake was cut off)", job.id)
        return job

    def _start(self, job: Job) -> None:
        self._positions.unwatch(job.id)
        self._reporter.started(job)
        task = asyncio.create_task(self._run(job), name=f"upscale-job-{job.id[:8]}")
        self._running[job.id] = task
        self._jobs[job.id] = job
        task.add_done_callback(lambda _: self._finished(job))
        self._positions.refresh_soon()

    def _finished(self, job: Job) -> None:
        self._running.pop(job.id, None)
        self._jobs.pop(job.id, None)
        self._reporter.left(job.id)
        self._wakeup.set()
        if job.stage in SLOT_STAGES:
            self._slot_freed()  # it ended (failed, stopped) while it held a slot

    def _start_intake(self, job: Job) -> None:
        task = asyncio.create_task(self._resume_intake(job), name=f"intake-{job.id[:8]}")
        self._intakes[job.id] = task
        task.add_done_callback(lambda _: self._intake_done(job.id))

    def _intake_done(self, job_id: str) -> None:
        self._intakes.pop(job_id, None)
        self._wakeup.set()

    async def _resume_intake(self, job: Job) -> None:
        """Take in again the image of a job whose intake was cut off."""
        await self._reporter.tell_resumed(job)
        try:
            await self._intake.take_in(job)
        except InputRefused as exc:
            await self._reporter.tell_failed(job, failure_for(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("Intake of job %s failed unexpectedly", job.id, exc_info=exc)
            await self._settlement.failed(job, JobFailure(FailureKind.BUG), exc)

    async def _renew_leases(self) -> None:
        """Renew this process's leases every third of a lease."""
        while not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._config.lease / 3)
            if self.closed or not (self._running or self._intakes or self._intake.busy):
                continue
            try:
                await self._store.renew(time.time() + self._config.lease)
            except Exception:
                log.warning("Could not renew job leases", exc_info=True)

    # -- running -----------------------------------------------------------------------

    def result_path(self, job: Job) -> Path:
        """Where the job's result is downloaded (removed when the job's run ends here)."""
        return self.spool_dir / f"result-{job.id}.img"

    async def _run(self, job: Job) -> None:
        try:
            await self._run_and_settle(job)
        finally:
            # Delivered, failed, stopped or cancelled: the result file is not needed any
            # more (a job run again downloads it again from its stored URL).
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.result_path(job).unlink, missing_ok=True)

    async def _run_and_settle(self, job: Job) -> None:
        self._reporter.stage(job, "claimed", f"from {job.resumed_from}" if job.resumed else "")
        hook = waiting_hook.set(
            lambda place: self._reporter.progress(
                job, Progress(Stage.WAITING, place, WaitReason.RATE_LIMIT)
            )
        )
        message_id = None
        result: JobResult | None = None
        try:
            if job.resumed_from is Stage.DELIVERING:
                # Look for the result before saying anything: if it was posted, it is
                # what the member sees, and the job only needs settling.
                message_id = await self._reporter.front.find_delivered(job)
            if message_id is None:
                if job.resumed:
                    await self._reporter.tell_resumed(job)
                result = await self._work(job)
                await self._advance(job, Stage.DELIVERING)
                message_id = await self._reporter.front.deliver(job, result)
        except Stopped as why:
            log.info("Job %s stopped here: %s", job.id, why)
            return
        except asyncio.CancelledError:
            raise
        except (Unauthorized, OutOfCredits) as exc:
            if self.circuit is None:
                await self._settlement.failed(job, failure_for(exc), exc)
                return
            # Not this job's fault: it waits in line while the circuit is open.
            await self.circuit.trip(exc.kind)
            await self._hand_back(job, f"1min.ai refused: {exc.kind}")
            return
        except Exception as exc:
            await self._settlement.failed(job, failure_for(exc), exc)
            return
        finally:
            waiting_hook.reset(hook)
        await self._settlement.delivered(job, result, message_id)

    async def _work(self, job: Job) -> JobResult:
        input_image: bytes | None = None
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
                input_image = data  # kept for the Compare crop (small: at most ~1 MP)
                prepared = job.input
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
            job.record_id = record.record_uuid
            await self._advance(
                job, Stage.DOWNLOADING, result_url=job.result_url, record_id=job.record_id
            )
            await self._signals.send(Signal.SLOT)  # its slot is free for the next job
        else:
            await self._advance(job, Stage.DOWNLOADING)
        self._slot_freed()
        # The result (up to RESULT_MAX_BYTES) goes straight to a file; the check (a full
        # decode: 64 MB for a 4096x4096 result) of a large result is made in the image
        # worker, from that file, with the input's Compare crop (the result's side of
        # the comparison is cut at click time, from the posted result).
        path = self.result_path(job)
        byte_count = await self._onemin.download_to(job.result_url, path, RESULT_MAX_BYTES)
        if input_image is None:  # resumed past its upload: read it for the Compare crop
            input_image = await self._store.read_input(job.id)
        try:
            checked = await self._workers.check_result(path, input_image, job.input.size)
        except ResultUnusable as exc:
            raise JobFailed(FailureKind.BAD_RESULT, str(exc)) from exc
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

    async def _input(self, job: Job) -> bytes:
        data = await self._store.read_input(job.id)
        if data is None:
            raise JobFailed(FailureKind.INPUT_LOST, "the job's input is no longer stored")
        return data

    async def _take_slot(self, job: Job) -> None:
        """Wait until fewer than ``max_concurrent`` jobs are with 1min.ai fleet-wide
        (uploading or upscaling), then move this one there, atomically under a
        fleet-wide lock: to ``uploading``, or to ``upscaling`` when it resumes with its
        asset stored.

        The jobs of this process wait in one line, in claim order: only its head looks
        for a slot (when one is freed anywhere in the fleet, or every ``poll_interval``
        seconds), and hands the turn on when it has one; a freed slot does not send
        every waiting job to the database at once. Raises :class:`Stopped` when the job
        was cancelled or taken over while it waited.
        """
        stage = Stage.UPLOADING if job.asset_path is None else Stage.UPSCALING
        turn = asyncio.Event()
        self._slot_line.append(turn)
        if self._slot_line[0] is turn:
            turn.set()
        told = False
        more_free = False
        try:
            while True:
                if turn.is_set():
                    turn.clear()
                    taken = await self._try_slot(job, stage)
                    if taken is not None:
                        # Another slot is free if this look saw one, or if one was freed
                        # while it ran (that wake-up was meant for the head: pass it on).
                        more_free = taken + 1 < self._config.max_concurrent or turn.is_set()
                        break
                if not told:
                    told = True
                    self._reporter.progress(job, Progress(Stage.WAITING))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(turn.wait(), self._config.poll_interval)
                if self._slot_line[0] is turn:
                    turn.set()  # the head looks again after poll_interval anyway
        finally:
            head = self._slot_line[0] is turn
            self._slot_line.remove(turn)
            if head and self._slot_line and more_free:
                self._slot_line[0].set()  # another slot was free: the next one looks now
        self._entered(job, stage)

    async def _try_slot(self, job: Job, stage: Stage) -> int | None:
        """One look for a slot: the slots taken before this job took one, or None when
        every slot is taken."""
        now = time.time()
        async with self._db.transaction(urgent=True) as tx:
            await tx.lock(SLOT_LOCK)
            taken = await self._store.slots_taken(tx, job.id, now)
            if taken >= self._config.max_concurrent:
                return None
            if not await self._store.advance(job.id, stage, tx=tx):
                raise Stopped("cancelled, or taken over by another process")
        return taken

    def _slot_freed(self) -> None:
        """A slot was freed (here, or anywhere in the fleet): the head of the line looks."""
        if self._slot_line:
            self._slot_line[0].set()

    async def _paced(self, job: Job, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run a 1min.ai call; a 429 sends the job back to wait, up to ``busy_timeout``."""
        deadline = time.monotonic() + self._config.busy_timeout

        def wait(err: RateLimited, attempt: int) -> float | None:
            delay = err.retry_after or self._config.rate_backoff.delay(attempt)
            if time.monotonic() + delay > deadline:
                return None
            log.info("Job %s rate limited by 1min.ai; waiting %.1f s", job.id, delay)
            self._reporter.progress(job, Progress(Stage.WAITING, 1, WaitReason.RATE_LIMIT))
            return delay

        return await retry(call, RateLimited, wait)

    async def _advance(
        self,
        job: Job,
        stage: Stage,
        *,
        asset_path: str | None = None,
        result_url: str | None = None,
        record_id: str | None = None,
    ) -> None:
        """Record the job's new stage (and what it produced) if this process still owns
        it, else :class:`Stopped`."""
        changed = await self._store.advance(
            job.id, stage, asset_path=asset_path, result_url=result_url, record_id=record_id
        )
        if not changed:
            raise Stopped("cancelled, or taken over by another process")
        self._entered(job, stage)

    def _entered(self, job: Job, stage: Stage) -> None:
        job.stage = stage
        self._reporter.stage(job, stage)
        self._reporter.progress(job, Progress(stage))

    async def _hand_back(self, job: Job, why: str) -> None:
        """Put a running job back in line, its recorded progress kept (not a restart: its
        member is not told it "continues" when it runs again)."""
        if not await self._store.hand_back(job.id, why):
            return
        was = job.stage
        job.status = JobStatus.QUEUED  # its stage stays: it continues from there
        self._reporter.stage(job, "handed back", why)
        self._positions.watch(job)
        await self._signals.send(Signal.QUEUED)
        if was in (Stage.UPLOADING, Stage.UPSCALING):
            await self._signals.send(Signal.SLOT)
        await self._positions.refresh()
