"""The work pipeline: what happens to a job this process claimed, until it is settled.

Upload (unless the asset is stored), upscale (unless the result URL is stored),
download and check the result, deliver, settle. Each stage is recorded as it happens, so
a job cut off anywhere continues from its last recorded stage: no second upload of an
uploaded asset, no second upscale once its record was stored (a call cut off in flight
is repeated), and a job cut off while delivering first looks for its posted result
(and, when it is there, is settled without a word to the member: the result is what
they see). A 429 sends the job back to wait with backoff, up to ``busy_timeout``;
1min.ai refusing the account (401, 406) opens the circuit and hands the job back to
wait in line.

Before it calls 1min.ai the job takes an upscale slot (:mod:`bot.jobs.slots`), reading
its input meanwhile. Every write that moves a job forward goes through one method,
:meth:`bot.jobs.stages.StageWriter.record`: it names the job's claim, so it changes the
job only while this process still holds it, and raises :class:`~bot.jobs.model.Stopped`
when it does not (the job was cancelled, or taken over by another process or by this one).

A database that blinks costs nothing (:mod:`bot.db.transient`): every database operation
of a job is tried again through an outage (:func:`bot.db.outages.through_outages`), so
the job waits instead of dying, and what a paid call produced (the uploaded asset, the
upscaler's record and result URL, the downloaded file) is kept in memory and recorded
when the database answers again; the upscaler is never called again for it. If the job
was taken over meanwhile, what the call produced is still kept with the job for its new
holder (:meth:`bot.jobs.store.RunStatements.salvage`), which reads it again right before its
own paid call. The fence (:mod:`bot.jobs.leases`): before a paid call and before the
delivery this process confirms it still holds the job, the delivery runs only while its
lease holds, and progress is reported only while it is known to hold.
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
from bot.db.outages import report_db_outage, through_outages
from bot.db.signals import Signal
from bot.db.transient import is_transient
from bot.failures import FailureKind
from bot.images.workers import ImageWorkers, ResultUnusable
from bot.jobs.leases import Leases
from bot.jobs.model import (
    Job,
    JobFailed,
    JobResult,
    Progress,
    Stage,
    Stopped,
    WaitReason,
    failure_for,
)
from bot.jobs.parts import Part, Parts
from bot.jobs.positions import Positions
from bot.jobs.settlement import Settlement
from bot.jobs.slots import SlotLine
from bot.jobs.stages import StageWriter
from bot.onemin.circuit import Circuit
from bot.onemin.client import (
    OneMinClient,
    OneMinError,
    OutOfCredits,
    RateLimited,
    Unauthorized,
)
from bot.onemin.pacing import before_send, waiting_hook
from bot.retry import retry

log = logging.getLogger(__name__)

# The largest result we accept from 1min.ai: 4x of a 1536 px side, lossless, with margin.
# It is streamed into a spool file, never held in memory.
RESULT_MAX_BYTES = 200 * 1024 * 1024
SLOT_LOCK = "jobs:slot"

_T = TypeVar("_T")


class Pipeline(Part):
    """Runs claimed jobs to their end; see the module docstring."""

    def __init__(
        self,
        parts: Parts,
        *,
        onemin: OneMinClient,
        settlement: Settlement,
        positions: Positions,
        image_workers: ImageWorkers,
        circuit: Circuit | None,
        slots: SlotLine,
        leases: Leases,
    ) -> None:
        super().__init__(parts)
        self._leases = leases
        self._onemin = onemin
        self._settlement = settlement
        self._positions = positions
        self._workers = image_workers
        self._circuit = circuit
        self._slots = slots
        self._stages = StageWriter(parts, leases=leases, positions=positions)

    def result_path(self, job: Job) -> Path:
        """Where the job's result is downloaded (removed when the job's run ends here)."""
        return self.spool_dir / f"result-{job.id}.img"

    async def run(self, job: Job) -> None:
        """Run a claimed job until it is settled, stopped or handed back."""
        try:
            await self._run_and_settle(job)
        finally:
            # Delivered, failed, stopped or cancelled: the result file is not needed any
            # more (a job run again downloads it again from its stored URL).
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.result_path(job).unlink, missing_ok=True)

    async def _run_and_settle(self, job: Job) -> None:
        self._reporter.log_stage(job, "claimed", f"from {job.resumed_from}" if job.resumed else "")
        hook = waiting_hook.set(
            lambda place: self._stages.progress(
                job, Progress(Stage.WAITING, place, WaitReason.RATE_LIMIT)
            )
        )
        # A request for this job is sent only while this process holds it, however long
        # it waited for its turn in the fleet's rate window.
        check = before_send.set(lambda: self._leases.confirm(job))
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
                await self._stages.advance(job, Stage.DELIVERING)
                await self._leases.confirm(job)
                async with self._leases.fence(job):
                    message_id = await self._reporter.front.deliver(job, result)
        except Stopped as why:
            log.info("Job %s stopped here: %s", job.id, why)
            return
        except asyncio.CancelledError:
            raise
        except (Unauthorized, OutOfCredits) as exc:
            if self._circuit is None:
                await self._settlement.fail_and_tell(job, failure_for(exc), exc)
                return
            # Not this job's fault: it waits in line while the circuit is open.
            circuit, kind = self._circuit, exc.kind
            await through_outages(
                lambda: circuit.trip(kind),
                logger=log,
                doing="opening the 1min.ai circuit",
                still=lambda: self._leases.runs(job),
            )
            await self._stages.hand_back(job, f"1min.ai refused: {exc.kind}")
            return
        except Exception as exc:
            failure = failure_for(exc)
            if failure.kind is FailureKind.BUG and is_transient(exc):
                # A database outage not retried where it happened (1min.ai's and the
                # job's own errors are failures, not this): not the job's fault. Its lease
                # lapses and it continues from its recorded stage, here or elsewhere.
                report_db_outage(log, "running a job", exc)
                return
            await self._settlement.fail_and_tell(job, failure, exc)
            return
        finally:
            waiting_hook.reset(hook)
            before_send.reset(check)
        await self._settlement.settle_delivery(job, result, message_id)

    async def _work(self, job: Job) -> JobResult:
        input_image = None
        if job.result_url is None:
            input_image = await self._upscale(job)
        else:
            await self._stages.advance(job, Stage.DOWNLOADING)
        self._slots.freed()
        # The result (up to RESULT_MAX_BYTES) goes straight to a file; the check (a full
        # decode: 64 MB for a 4096x4096 result) of a large result is made in the image
        # worker, from that file, with the input's Compare crop (the result's side of
        # the comparison is cut at click time, from the posted result).
        result_url = job.result_url
        assert result_url is not None  # stored before, or made just now
        path = self.result_path(job)
        byte_count = await self._onemin.download_to(result_url, path, RESULT_MAX_BYTES)
        if input_image is None:  # resumed past its upload: read it for the Compare crop
            input_image = await self._read_input(job)
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
            temporary_url=result_url,
            elapsed=job.elapsed,
            crops=checked.crops,
        )

    async def _upscale(self, job: Job) -> bytes | None:
        """Take a slot, upload (unless the asset is stored) and upscale (unless a result
        is stored by now); returns the input when it was read (for the Compare crop)."""
        # The input is read while the job waits for its slot (a job claimed ahead waits
        # for one), so the upload can start the moment it has it.
        reading = asyncio.create_task(self._input(job)) if job.asset_path is None else None
        try:
            # Uploading, or upscaling with the asset stored; the job's stored products are
            # read again in the same transaction (see _try_slot).
            await self._take_slot(job)
        except BaseException:
            await _cancel(reading)
            raise
        input_image = None
        if _has_result(job):
            await _cancel(reading)
            await self._stages.advance(job, Stage.DOWNLOADING)
        else:
            if reading is not None and job.asset_path is None:
                input_image = data = await reading
                prepared = job.input
                asset = await self._paced(
                    job,
                    lambda: self._onemin.upload(
                        data, prepared.filename, images.CONTENT_TYPES[prepared.format]
                    ),
                )
                del data
                # After this, too late to cancel.
                job.asset_path = asset
                await self._stages.advance(job, Stage.UPSCALING, asset_path=asset)
            else:
                await _cancel(reading)
            asset_path = job.asset_path
            assert asset_path is not None  # uploaded just now, or stored before
            record = await self._paced(
                job, lambda: self._onemin.upscale(asset_path, job.output_format)
            )
            job.result_url = record.temporary_url
            job.record_id = record.record_uuid
            await self._stages.advance(
                job, Stage.DOWNLOADING, result_url=job.result_url, record_id=job.record_id
            )
        await self._signals.send(Signal.SLOT)  # its slot is free for the next job
        return input_image

    async def _read_input(self, job: Job) -> bytes | None:
        return await through_outages(
            lambda: self._store.runs.read_input(job.id),
            logger=log,
            doing="reading a job's input",
            still=lambda: self._leases.runs(job),
        )

    async def _input(self, job: Job) -> bytes:
        data = await self._read_input(job)
        if data is None:
            raise JobFailed(FailureKind.INPUT_LOST, "the job's input is no longer stored")
        return data

    async def _take_slot(self, job: Job) -> None:
        """Wait in the slot line (see :mod:`bot.jobs.slots`) until fewer than
        ``max_concurrent`` jobs are with 1min.ai fleet-wide, then move this one there:
        to ``uploading``, or to ``upscaling`` when it resumes with its asset stored.
        Raises :class:`Stopped` when the job was cancelled or taken over while it waited.
        """
        stage = Stage.UPLOADING if job.asset_path is None else Stage.UPSCALING
        await self._slots.take(
            lambda: through_outages(
                lambda: self._try_slot(job, stage),
                logger=log,
                doing="taking an upscale slot",
                still=lambda: self._leases.runs(job),
            ),
            waiting=lambda: self._stages.progress(job, Progress(Stage.WAITING)),
        )
        self._stages.entered(job, stage)

    async def _try_slot(self, job: Job, stage: Stage) -> int | None:
        """One look for a slot, atomic under a fleet-wide lock: the slots taken before
        this job took one, or None when every slot is taken. With the slot it reads the
        job's stored products again: a worker that lost the job may have kept its paid
        call's product with it since this claim read the row."""
        now = time.time()
        async with self._db.transaction(urgent=True) as tx:
            await tx.lock(SLOT_LOCK)
            taken = await self._store.runs.count_slots_taken(tx, job.id, now)
            if taken >= self._config.max_concurrent:
                return None
            until = await self._stages.record(job, stage, tx=tx)
            products = await self._store.runs.products(tx, job.id)
        self._leases.extended(job, until)
        if products is not None:
            job.asset_path = job.asset_path or products["asset_path"]
            job.result_url = job.result_url or products["result_url"]
            job.record_id = job.record_id or products["record_id"]
        return taken

    async def _paced(self, job: Job, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run a 1min.ai call while this process holds the job; a 429 sends the job back
        to wait, up to ``busy_timeout``.

        Each try confirms the job's lease first: never a paid call for a job this process
        lost. A database outage met on the way (in the fleet's rate window, which every
        request passes before it is sent: the request it stopped was not sent) is waited
        out and the call tried again, its lease confirmed again: the job does not die of
        it."""
        deadline = time.monotonic() + self._config.busy_timeout

        async def held_call() -> _T:
            await self._leases.confirm(job)
            return await call()

        def try_once() -> Awaitable[_T]:
            return through_outages(
                held_call,
                logger=log,
                doing="pacing a 1min.ai call",
                still=lambda: self._leases.runs(job),
                unless=OneMinError,  # the call itself failed: never repeated here
            )

        def wait(err: RateLimited, attempt: int) -> float | None:
            delay = err.retry_after or self._config.rate_backoff.delay(attempt)
            if time.monotonic() + delay > deadline:
                return None
            log.info("Job %s rate limited by 1min.ai; waiting %.1f s", job.id, delay)
            self._stages.progress(job, Progress(Stage.WAITING, 1, WaitReason.RATE_LIMIT))
            return delay

        return await retry(try_once, RateLimited, wait)


def _has_result(job: Job) -> bool:
    """True when the job's upscale result is stored (read again with its slot)."""
    return job.result_url is not None


async def _cancel(task: asyncio.Task[bytes] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
    if task is not None:
        await asyncio.gather(task, return_exceptions=True)
