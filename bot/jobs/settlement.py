"""How a job ends: delivered and charged, failed and refunded, or cancelled and refunded.

Each ending is one transaction: the job's row, the ledger's settlement, the removal of
its stored input (and, when delivered, its Compare crops), and the wake-up that tells
the fleet it ended. Every ending is guarded by the job's status (and, for a job this
process runs, by the claim that holds it), so a job is settled exactly once whichever
process gets there first; the interaction token is erased in the same statement. A
database that does not answer is waited for: the transaction is tried again until it
answers (:func:`bot.db.outages.through_outages`), so a job never ends unsettled because
its database blinked.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bot.db.outages import report_db_outage, through_outages
from bot.db.signals import Signal
from bot.db.transient import db_outage
from bot.failures import FailureKind
from bot.jobs.model import (
    SLOT_STAGES,
    UNFINISHED,
    CancelOutcome,
    DeliveryFailed,
    Job,
    JobFailure,
    JobResult,
    JobStatus,
    Stage,
)
from bot.jobs.parts import Part, Parts

log = logging.getLogger(__name__)

ChargedListener = Callable[[Job], Awaitable[None]]


class Settlement(Part):
    """Ends jobs; see the module docstring."""

    def __init__(self, parts: Parts) -> None:
        super().__init__(parts)
        self._charged: list[ChargedListener] = []

    def subscribe_charged(self, listener: ChargedListener) -> None:
        self._charged.append(listener)

    async def settle_delivery(
        self, job: Job, result: JobResult | None, message_id: int | None
    ) -> bool:
        """Mark the job delivered and charge it; False when another process took it
        over meanwhile (it finds the posted message and settles the job itself)."""
        changed = await through_outages(
            lambda: self._mark_delivered_and_charge(job, result, message_id),
            logger=log,
            doing="settling a delivered job",
        )
        if not changed:
            log.warning("Job %s was taken over while delivering; settled there", job.id)
            return False
        job.status, job.stage = JobStatus.DELIVERED, Stage.DONE
        self._reporter.log_delivered(job, self._config.cost)
        for listener in self._charged:
            try:
                await listener(job)
            except Exception as exc:
                if db_outage(exc) is None:
                    log.warning("A listener failed after job %s was charged", job.id, exc_info=exc)
                else:
                    report_db_outage(log, "telling listeners a job was charged", exc)
        return True

    async def _mark_delivered_and_charge(
        self, job: Job, result: JobResult | None, message_id: int | None
    ) -> bool:
        async with self._db.transaction() as tx:
            changed = await self._store.endings.mark_delivered(
                tx,
                job.id,
                job.claims,
                size=result.size if result else None,
                byte_count=result.byte_count if result else None,
                message_id=message_id,
            )
            if not changed:
                return False
            await self._ledger.commit(job.reservation_id, tx=tx)
            await self._store.endings.delete_input(tx, job.id)
            if result is not None and result.crops is not None:
                await self._store.endings.save_crops(tx, job.id, result.crops)
            await self._signals.send(Signal.ENDED, job.id, tx=tx)
        return True

    async def fail_and_tell(
        self, job: Job, failure: JobFailure, exc: BaseException | None = None
    ) -> bool:
        """Record the failure of a job this process runs and refund it
        (:meth:`settle_failure`), then tell the member. False if already settled."""
        _log_failure(job, failure, exc)
        if not await self.settle_failure(job, failure.kind, owned=True):
            return False
        await self._reporter.tell_failed(job, failure)
        return True

    async def settle_failure(self, job: Job, kind: FailureKind, *, owned: bool) -> bool:
        """Record the failure and refund, in one transaction; the member is not told
        here. False if already settled.

        ``owned``: only if this process still holds the job by its claim (else whoever
        holds it).
        """
        refunded = await through_outages(
            lambda: self._mark_failed_and_refund(job, kind, owned=owned),
            logger=log,
            doing="settling a failed job",
        )
        if refunded is None:
            return False
        job.status = JobStatus.FAILED
        self._reporter.log_failed(job, kind, self._config.cost if refunded else 0)
        return True

    async def _mark_failed_and_refund(
        self, job: Job, kind: FailureKind, *, owned: bool
    ) -> bool | None:
        """One try: True when refunded, False when there was nothing to refund, None
        when the job had been settled already (or taken over)."""
        async with self._db.transaction() as tx:
            claim = job.claims if owned else None
            if not await self._store.endings.mark_failed(tx, job.id, kind, claim=claim):
                return None
            refunded = False
            if job.reservation_id:
                refunded = await self._ledger.refund(job.reservation_id, kind.value, tx=tx)
            await self._store.endings.delete_input(tx, job.id)
            await self._signals.send(Signal.ENDED, job.id, tx=tx)
            if job.stage in SLOT_STAGES:
                await self._signals.send(Signal.SLOT, tx=tx)
        return refunded

    async def cancel(self, job_id: str, actor_id: int, *, moderator: bool) -> CancelOutcome:
        """Cancel and refund a job not yet sent to the upscaler (requester or moderator)."""
        async with self._db.transaction() as tx:
            row = await self._store.endings.read_for_cancel(tx, job_id)
            if row is None:
                return CancelOutcome.NOT_FOUND
            if int(row["member_id"]) != actor_id and not moderator:
                return CancelOutcome.NOT_ALLOWED
            if row["status"] not in UNFINISHED:
                return CancelOutcome.FINISHED
            if not await self._store.endings.mark_cancelled(tx, job_id, actor_id):
                return CancelOutcome.TOO_LATE
            refunded = False
            if row["reservation_id"]:
                refunded = await self._ledger.refund(
                    row["reservation_id"], FailureKind.CANCELLED, tx=tx
                )
            await self._store.endings.delete_input(tx, job_id)
            await self._signals.send(Signal.ENDED, job_id, tx=tx)
            await self._signals.send(Signal.SLOT, tx=tx)  # it may have held one (uploading)
        self._reporter.log_cancelled(
            job_id, int(row["guild_id"]), actor_id, self._config.cost if refunded else 0
        )
        return CancelOutcome.CANCELLED


def _log_failure(job: Job, failure: JobFailure, exc: BaseException | None) -> None:
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
