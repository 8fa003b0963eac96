"""Running jobs in this process: the four parts that do it, behind one small facade.

* :mod:`bot.jobs.dispatcher`: the claims (jobs, and intakes whose process died), the
  tasks that run them, when to look again, and the 1min.ai circuit check;
* :mod:`bot.jobs.leases`: which jobs this process holds, and their renewal;
* :mod:`bot.jobs.slots`: the slot line, this process's jobs waiting for an upscale
  slot, in claim order;
* :mod:`bot.jobs.pipeline`: a claimed job's work (upload, upscale, download, check,
  deliver, settle), each stage recorded as it happens.

:class:`Runner` builds them from the queue's :class:`~bot.jobs.parts.Parts` and is what
:class:`~bot.jobs.queue.JobQueue` starts, stops and asks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from bot.db.signals import Signal
from bot.images.workers import ImageWorkers
from bot.jobs.dispatcher import Dispatcher
from bot.jobs.intake import Intake
from bot.jobs.leases import Leases
from bot.jobs.model import Job
from bot.jobs.parts import Parts
from bot.jobs.pipeline import Pipeline
from bot.jobs.positions import Positions, WaitInfo
from bot.jobs.settlement import Settlement
from bot.jobs.slots import SlotLine
from bot.onemin.circuit import Circuit
from bot.onemin.client import OneMinClient


class Runner:
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
        config = parts.config
        self._slots = SlotLine(slots=config.max_concurrent, poll_interval=config.poll_interval)
        self._leases = Leases(parts, intake=intake)
        self._pipeline = Pipeline(
            parts,
            onemin=onemin,
            settlement=settlement,
            positions=positions,
            image_workers=image_workers,
            circuit=circuit,
            slots=self._slots,
            leases=self._leases,
        )
        self._dispatcher = Dispatcher(
            parts,
            intake=intake,
            settlement=settlement,
            positions=positions,
            circuit=circuit,
            leases=self._leases,
            pipeline=self._pipeline,
            slots=self._slots,
            on_poll=on_poll,
        )

    def start(self, *, claim: bool = True) -> None:
        """Renew leases and (with ``claim``) claim and run jobs."""
        self._dispatcher.start(claim=claim)

    async def stop(self, grace: float, *, hand_back: bool = True) -> list[Job]:
        """Stop claiming; running work gets ``grace`` s; the rest is handed back (see
        :meth:`bot.jobs.dispatcher.Dispatcher.stop`). Returns the jobs handed back."""
        return await self._dispatcher.stop(grace, hand_back=hand_back)

    def on_signal(self, signal: Signal, payload: str) -> None:
        self._dispatcher.on_signal(signal, payload)

    @property
    def busy(self) -> bool:
        return self._dispatcher.busy

    @property
    def in_flight(self) -> int:
        return self._dispatcher.in_flight

    def running(self, job_id: str) -> bool:
        return self._dispatcher.running(job_id)

    def holds(self, job_id: str) -> bool:
        """True while this process runs the job and has not settled it."""
        return self._leases.holds(job_id)

    def acting_until(self, job_id: str) -> float | None:
        """Until when (``time.time()``) this process may act on a job it runs: its
        lease end known to hold, less a margin; None when it does not run the job."""
        return self._leases.until(job_id)

    def stop_job(self, job_id: str) -> None:
        """Stop this process's work on a job settled elsewhere (e.g. cancelled)."""
        self._dispatcher.stop_job(job_id)

    async def line_waits(self) -> WaitInfo:
        """Why the whole line waits, and until when at most; None when it does not."""
        return await self._dispatcher.line_waits()

    def result_path(self, job: Job) -> Path:
        """Where the job's result is downloaded (removed when the job's run ends here)."""
        return self._pipeline.result_path(job)
