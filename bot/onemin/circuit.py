"""A circuit breaker for 1min.ai, shared by every process through the database.

When 1min.ai refuses the key (401) or says the account has no credits (406), calling it
again for every queued job only fails again. :meth:`Circuit.trip` opens the circuit:
new upscales are refused at once at no cost, queued jobs wait (and are refunded if it
stays open longer than ``give_up``), and nothing calls 1min.ai but one probe every
``probe_interval`` seconds, made by whichever process claims it first. A probe that
succeeds closes the circuit. Opening and closing are single conditional updates, so each
incident is announced exactly once across the fleet (``on_change``).

With :mod:`bot.db.signals` every process hears at once when the circuit opens or closes,
so the state it read is kept until then (and re-read every
:data:`bot.db.signals.FALLBACK_POLL` seconds in case a wake-up was lost); while the circuit
is closed nothing here touches the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.db import Database
from bot.db.outages import report_db_outage
from bot.db.signals import FALLBACK_POLL, Signal, Signals
from bot.failures import FailureKind
from bot.timings import CIRCUIT_CHECK_INTERVAL

log = logging.getLogger(__name__)

NAME = "onemin"
CACHE_SECONDS = 0.5  # how long a read of the state is reused without wake-ups


@dataclass(frozen=True, slots=True)
class CircuitState:
    open: bool
    reason: FailureKind | None = None
    opened_at: float | None = None  # Unix seconds

    @property
    def open_for(self) -> float:
        return 0.0 if self.opened_at is None else max(0.0, time.time() - self.opened_at)


@dataclass(frozen=True, slots=True)
class CircuitEvent:
    """An incident began (``opened``) or ended; ``reason`` is why it opened."""

    opened: bool
    reason: FailureKind | None
    duration: float = 0.0  # seconds it stayed open (on close)


CLOSED = CircuitState(False)

Probe = Callable[[FailureKind], Awaitable[None]]
Listener = Callable[[CircuitEvent], Awaitable[None]]


class Circuit:
    """Whether 1min.ai may be called; see the module docstring."""

    def __init__(
        self,
        db: Database,
        *,
        probe: Probe,
        probe_interval: float = 180.0,
        check_interval: float = CIRCUIT_CHECK_INTERVAL,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.time,
        signals: Signals | None = None,
    ) -> None:
        self._db = db
        self._probe = probe
        self.probe_interval = probe_interval
        self.check_interval = check_interval  # seconds between looks while it is open
        self._clock = clock
        self._listeners: list[Listener] = []
        self._cached: tuple[float, CircuitState] | None = None
        self._signals = signals
        # Without wake-ups another process's change is seen within ``cache_seconds``.
        self._cache_for = FALLBACK_POLL if signals is not None else cache_seconds
        self._changed = asyncio.Event()
        if signals is not None:
            signals.subscribe(self._on_signal)

    def _on_signal(self, signal: Signal, payload: str) -> None:
        if signal is Signal.CIRCUIT:
            self.forget()

    def forget(self) -> None:
        """Read the shared state again next time (it changed somewhere in the fleet)."""
        self._cached = None
        self._changed.set()

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` when this process opens or closes the circuit."""
        self._listeners.append(listener)

    async def state(self) -> CircuitState:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self._cache_for:
            return self._cached[1]
        row = await self._db.fetchone(
            "SELECT state, reason, opened_at FROM service_circuit WHERE name = ?", (NAME,)
        )
        if row is None or row["state"] != "open":
            state = CLOSED
        else:
            reason = FailureKind(row["reason"]) if row["reason"] else None
            opened = float(row["opened_at"]) if row["opened_at"] is not None else None
            state = CircuitState(True, reason, opened)
        self._cached = (now, state)
        return state

    async def trip(self, reason: FailureKind) -> bool:
        """Open the circuit for ``reason``; True when this call opened it."""
        now = self._clock()
        changed = await self._db.write(
            "INSERT INTO service_circuit (name, state, reason, opened_at, next_probe)"
            " VALUES (?, 'open', ?, ?, ?) ON CONFLICT (name) DO UPDATE SET state = 'open',"
            " reason = excluded.reason, opened_at = excluded.opened_at,"
            " next_probe = excluded.next_probe WHERE service_circuit.state = 'closed'",
            (NAME, reason.value, now, now + self.probe_interval),
        )
        self._cached = None
        if changed:
            await self._tell_fleet()
            log.warning(
                "1min.ai %s: no more calls until it accepts again (probing every %.0f s)",
                "refused the API key"
                if reason is FailureKind.UNAUTHORIZED
                else "is out of credits",
                self.probe_interval,
            )
            await self._announce(CircuitEvent(True, reason))
        return bool(changed)

    async def close(self) -> bool:
        """Close the circuit; True when this call closed it."""
        state = await self.state()
        changed = await self._db.write(
            "UPDATE service_circuit SET state = 'closed', next_probe = NULL"
            " WHERE name = ? AND state = 'open'",
            (NAME,),
        )
        self._cached = None
        if changed:
            await self._tell_fleet()
            log.warning("1min.ai accepts calls again; the circuit is closed")
            await self._announce(CircuitEvent(False, state.reason, state.open_for))
        return bool(changed)

    async def _tell_fleet(self) -> None:
        if self._signals is None:
            return
        try:
            await self._signals.send(Signal.CIRCUIT)
        except Exception as exc:
            report_db_outage(log, "telling the fleet the circuit changed", exc)

    async def _announce(self, event: CircuitEvent) -> None:
        for listener in self._listeners:
            try:
                await listener(event)
            except Exception:
                log.warning("Could not announce the 1min.ai circuit change", exc_info=True)

    async def probe_if_due(self) -> None:
        """If the circuit is open and a probe is due, claim it (once fleet-wide) and run it."""
        state = await self.state()
        if not state.open or state.reason is None:
            return
        now = self._clock()
        claimed = await self._db.write(
            "UPDATE service_circuit SET next_probe = ? WHERE name = ? AND state = 'open'"
            " AND (next_probe IS NULL OR next_probe <= ?)",
            (now + self.probe_interval, NAME, now),
        )
        if not claimed:
            return
        try:
            await self._probe(state.reason)
        except Exception as exc:
            log.info("1min.ai probe failed (%s); the circuit stays open", type(exc).__name__)
            return
        await self.close()

    async def run(self, stopping: asyncio.Event) -> None:
        """Probe while open, until ``stopping`` is set.

        While the circuit is closed this waits for it to change (a wake-up, or the
        cached state running out), so a healthy bot makes no calls here.
        """
        while not stopping.is_set():
            is_open = False
            try:
                await self.probe_if_due()
                is_open = (await self.state()).open
            except Exception as exc:
                report_db_outage(log, "checking the 1min.ai circuit", exc)
            self._changed.clear()
            wait = min(self.check_interval, self.probe_interval) if is_open else self._cache_for
            waiters = [asyncio.ensure_future(stopping.wait())]
            if not is_open:
                waiters.append(asyncio.ensure_future(self._changed.wait()))
            try:
                await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
