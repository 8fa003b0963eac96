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
:meth:`Pipeline._record`: it changes the job only while this process holds its lease,
and raises :class:`~bot.jobs.model.Stopped` when it does not (the job was cancelled, or
taken over by another process).
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
from bot.db import Transaction
from bot.db.signals import Signal
from bot.failures import FailureKind
from bot.images.workers import ImageWorkers, ResultUnusable
from bot.jobs.model import (
    Job,
    JobFailed,
    JobResult,
    JobStatus,
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
from bot.onemin.circuit import Circuit
from bot.onemin.client import OneMinClient, OutOfCredits, RateLimited, Unauthorized
from bot.onemin.pacing import waiting_hook
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
    ) -> None:
        super().__init__(parts)
        self._onemin = onemin
        self._settlement = settlement
        self._positions = positions
        self._workers = image_workers
        self._circuit = circuit
        self._slots = slots

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
            if self._circuit is None:
                await self._settlement.failed(job, failure_for(exc), exc)
                return
            # Not this job's fault: it waits in line while the circuit is open.
            await self._circuit.trip(exc.kind)
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
        self._slots.freed()
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
        """Wait in the slot line (see :mod:`bot.jobs.slots`) until fewer than
        ``max_concurrent`` jobs are with 1min.ai fleet-wide, then move this one there:
        to ``uploading``, or to ``upscaling`` when it resumes with its asset stored.
        Raises :class:`Stopped` when the job was cancelled or taken over while it waited.
        """
        stage = Stage.UPLOADING if job.asset_path is None else Stage.UPSCALING
        await self._slots.take(
            lambda: self._try_slot(job, stage),
            waiting=lambda: self._reporter.progress(job, Progress(Stage.WAITING)),
        )
        self._entered(job, stage)

    async def _try_slot(self, job: Job, stage: Stage) -> int | None:
        """One look for a slot, atomic under a fleet-wide lock: the slots taken before
        this job took one, or None when every slot is taken."""
        now = time.time()
        async with self._db.transaction(urgent=True) as tx:
            await tx.lock(SLOT_LOCK)
            taken = await self._store.slots_taken(tx, job.id, now)
            if taken >= self._config.max_concurrent:
                return None
            await self._record(job, stage, tx=tx)
        return taken

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

    async def _record(
        self,
        job: Job,
        stage: Stage,
        *,
        tx: Transaction | None = None,
        asset_path: str | None = None,
        result_url: str | None = None,
        record_id: str | None = None,
    ) -> None:
        """The one write that moves a job forward: record its new stage (and what it
        produced), in ``tx`` when given, if this process still holds the job; else
        raise :class:`Stopped`."""
        changed = await self._store.advance(
            job.id, stage, tx=tx, asset_path=asset_path, result_url=result_url, record_id=record_id
        )
        if not changed:
            raise Stopped("cancelled, or taken over by another process")

    async def _advance(
        self,
        job: Job,
        stage: Stage,
        *,
        asset_path: str | None = None,
        result_url: str | None = None,
        record_id: str | None = None,
    ) -> None:
        """Record the job's new stage (see :meth:`_record`) and report it."""
        await self._record(
            job, stage, asset_path=asset_path, result_url=result_url, record_id=record_id
        )
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
