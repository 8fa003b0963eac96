"""Start-up recovery, and the housekeeping that keeps the job tables small.

Recovery (at start-up, before new work is accepted): jobs cut off by the previous run
go back in line (their recorded progress kept, their members told once that they
continue), intakes are taken in again, and what cannot be finished is refunded with a
notice: jobs older than ``max_age``, and jobs whose input was lost.

Housekeeping (a periodic task, away from the hot path): finished jobs are deleted
``JOB_RETENTION_DAYS`` after they ended, Compare crops after
:data:`COMPARE_RETENTION_DAYS`, each in small batches with a pause between them, so a
database after a year (or just upgraded) is trimmed without holding up anyone's job.
The ledger and the audit log are the record of spending and are never trimmed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from bot.db import ts, utc_now
from bot.db.outages import report_db_outage
from bot.db.signals import Signal
from bot.failures import FailureKind
from bot.jobs.model import Job, JobFailure, JobStatus
from bot.jobs.parts import Part, Parts
from bot.jobs.settlement import Settlement
from bot.jobs.work import clear_dir

log = logging.getLogger(__name__)

COMPARE_RETENTION_DAYS = 8  # the Compare button works at least a week after delivery
PURGE_BATCH = 200  # rows deleted per transaction
PURGE_PAUSE = 0.1  # seconds between batches: other work goes first

_Deleter = Callable[[str, int], Awaitable[int]]  # (before, batch) -> rows deleted


class Recovery(Part):
    """What a process does at start-up and every hour; see the module docstring."""

    def __init__(self, parts: Parts, *, settlement: Settlement, instance: str) -> None:
        super().__init__(parts)
        self._settlement = settlement
        self.instance = instance

    async def recover(self, *, single_process: bool) -> list[Job]:
        """Take this instance's jobs back, refund what cannot be finished.

        With ``single_process`` (SQLite) every unfinished job was this bot's; in a fleet
        only those of this instance are (others are taken over when their leases run
        out). Returns the jobs refunded.
        """
        await self._store.housekeeping.put_back_cut_off(None if single_process else self.instance)
        cutoff = ts(utc_now() - timedelta(seconds=self._config.max_age))
        refunded: list[Job] = []
        for row in [
            *await self._store.housekeeping.intake_rows(),
            *await self._store.housekeeping.waiting_rows(),
        ]:
            job = Job.from_row(row)
            if row["created_at"] < cutoff:
                kind = FailureKind.EXPIRED
            elif (
                job.status is JobStatus.QUEUED
                and job.asset_path is None
                and job.result_url is None
                and not await self._store.housekeeping.has_input(job.id)
            ):
                kind = FailureKind.INPUT_LOST
            else:
                continue
            if await self._settlement.settle_failure(job, kind, owned=False):
                refunded.append(job)
                await self._reporter.tell_failed(job, JobFailure(kind))
        unfinished = await self._store.views.count_unfinished()
        if single_process:
            ids = {r["id"] for r in await self._store.housekeeping.intake_rows()}
            ids |= {r["id"] for r in await self._store.housekeeping.waiting_rows()}
            await self._ledger.refund_unsettled(exclude_job_ids=ids)
        orphans = await asyncio.to_thread(clear_dir, self.spool_dir)
        if orphans:
            log.info("Removed %d orphaned spool files", orphans)
        if unfinished:
            log.info("%d unfinished jobs will continue", unfinished)
            await self._signals.send(Signal.QUEUED)
        if refunded:
            log.info("Refunded %d jobs that can no longer be finished", len(refunded))
        return refunded

    # -- housekeeping ------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Trim the tables every ``purge_interval`` seconds until ``stopping`` is set."""
        wait = self._config.purge_first_delay
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)
            if stopping.is_set():
                return
            wait = self._config.purge_interval
            try:
                await self.purge(stopping)
            except Exception as exc:
                report_db_outage(log, "keeping the job tables small", exc)

    async def purge(self, stopping: asyncio.Event | None = None) -> tuple[int, int]:
        """Delete finished jobs past retention and old Compare crops; returns the counts."""
        now = utc_now()
        jobs = await self._in_batches(
            self._store.housekeeping.purge_finished,
            ts(now - timedelta(days=self._config.retention_days)),
            stopping,
        )
        crops = await self._in_batches(
            self._store.housekeeping.purge_crops,
            ts(now - timedelta(days=COMPARE_RETENTION_DAYS)),
            stopping,
        )
        if jobs or crops:
            log.info("Deleted %d finished jobs and %d Compare crops past retention", jobs, crops)
        return jobs, crops

    @staticmethod
    async def _in_batches(delete: _Deleter, before: str, stopping: asyncio.Event | None) -> int:
        total = 0
        while stopping is None or not stopping.is_set():
            deleted = await delete(before, PURGE_BATCH)
            total += deleted
            if deleted < PURGE_BATCH:
                break
            await asyncio.sleep(PURGE_PAUSE)
        return total
