"""The whole line waiting for 1min.ai: while it refuses the bot's account, nothing is
claimed, jobs wait in line, and they are refunded once it has refused them for longer
than ``circuit_give_up`` (:mod:`bot.onemin.circuit`)."""

from __future__ import annotations

import logging
import time

from bot.failures import FailureKind
from bot.jobs.model import Job, JobFailure, WaitReason
from bot.jobs.parts import Part, Parts
from bot.jobs.positions import Positions, WaitInfo
from bot.jobs.settlement import Settlement
from bot.onemin.circuit import Circuit

log = logging.getLogger(__name__)


class ServiceWait(Part):
    """Whether the line waits for 1min.ai, and the refund of a line that waited too long."""

    def __init__(
        self,
        parts: Parts,
        *,
        settlement: Settlement,
        positions: Positions,
        circuit: Circuit | None,
    ) -> None:
        super().__init__(parts)
        self._settlement = settlement
        self._positions = positions
        self._circuit = circuit

    async def refusing(self) -> bool:
        """True while the 1min.ai circuit is open: jobs wait in line.

        When it has been open longer than ``circuit_give_up``, waiting jobs are refunded.
        """
        if self._circuit is None:
            return False
        state = await self._circuit.state()
        if not state.open:
            return False
        if state.open_for > self._config.circuit_give_up:
            await self._refund_waiting(state.reason or FailureKind.CIRCUIT_OPEN)
        return True

    async def line_waits(self) -> WaitInfo:
        """Why the whole line waits (1min.ai refusing the bot's account), and until when
        it waits at most before it is refunded; None when it does not."""
        if self._circuit is None:
            return None
        state = await self._circuit.state()
        if not state.open:
            return None
        opened = state.opened_at if state.opened_at is not None else time.time()
        return (WaitReason.SERVICE_REFUSING, opened + self._config.circuit_give_up)

    async def _refund_waiting(self, kind: FailureKind) -> None:
        rows = await self._store.housekeeping.waiting_rows()
        for row in rows:
            job = Job.from_row(row)
            if await self._settlement.settle_failure(job, kind, owned=False):
                self._positions.unwatch(job.id)
                await self._reporter.tell_failed(job, JobFailure(kind))
        if rows:
            log.warning("Refunded %d waiting jobs: 1min.ai kept refusing", len(rows))
