"""The fleet-wide 1min.ai circuit breaker and rate window, on both database engines.

Two objects opened on one database stand for two processes of a fleet.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import pytest

from bot.failures import FailureKind
from bot.onemin.circuit import Circuit, CircuitEvent
from bot.onemin.pacing import RateGate
from tests.harness import eventually
from tests.support.databases import Databases

CACHE = 0.05  # seconds a circuit reuses a read of the shared state, in these tests


class Clock:
    """Unix time that moves only when the test says (for probe intervals)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Probe:
    def __init__(self, succeed: bool = True) -> None:
        self.succeed = succeed
        self.calls: list[FailureKind] = []

    async def __call__(self, reason: FailureKind) -> None:
        self.calls.append(reason)
        if not self.succeed:
            raise RuntimeError("still refused")


async def test_only_one_of_two_processes_opens_the_circuit(databases: Databases) -> None:
    """Two processes hitting 401 at once: one opening, one announcement."""
    events: list[CircuitEvent] = []
    circuits = [Circuit(await databases.open(), probe=Probe()) for _ in range(2)]
    for circuit in circuits:
        circuit.subscribe(lambda e: _record(events, e))
    opened = await asyncio.gather(*(c.trip(FailureKind.UNAUTHORIZED) for c in circuits))
    assert sorted(opened) == [False, True]
    assert [e.opened for e in events] == [True]
    state = await circuits[1].state()
    assert state.open and state.reason is FailureKind.UNAUTHORIZED


async def _record(events: list[CircuitEvent], event: CircuitEvent) -> None:
    events.append(event)


async def test_a_due_probe_runs_once_across_processes_and_closes(databases: Databases) -> None:
    """When a probe is due, exactly one process runs it; its success closes the circuit
    and announces the recovery once."""
    probes = [Probe(), Probe()]
    events: list[CircuitEvent] = []
    clock = Clock()
    circuits = [
        Circuit(
            await databases.open(), probe=p, probe_interval=60, cache_seconds=CACHE, clock=clock
        )
        for p in probes
    ]
    for circuit in circuits:
        circuit.subscribe(lambda e: _record(events, e))
    await circuits[0].trip(FailureKind.OUT_OF_CREDITS)
    clock.now += 60  # the probe is due
    await asyncio.gather(*(c.probe_if_due() for c in circuits))
    assert sum(len(p.calls) for p in probes) == 1
    assert next(p for p in probes if p.calls).calls == [FailureKind.OUT_OF_CREDITS]
    assert [e.opened for e in events] == [True, False]
    await asyncio.sleep(CACHE)  # another process sees it within its cache time
    assert not (await circuits[1].state()).open


async def test_a_failing_probe_keeps_the_circuit_open(databases: Databases) -> None:
    """A probe that is still refused leaves the circuit open and announces nothing."""
    events: list[CircuitEvent] = []
    clock = Clock()
    probe = Probe(succeed=False)
    circuit = Circuit(await databases.open(), probe=probe, probe_interval=60, clock=clock)
    circuit.subscribe(lambda e: _record(events, e))
    await circuit.trip(FailureKind.UNAUTHORIZED)
    clock.now += 60  # the probe is due
    await circuit.probe_if_due()
    assert probe.calls == [FailureKind.UNAUTHORIZED]
    assert (await circuit.state()).open
    assert [e.opened for e in events] == [True]


async def test_no_probe_before_its_interval(databases: Databases) -> None:
    """Right after opening, no probe is made (1min.ai is left alone until it is due)."""
    probe = Probe()
    circuit = Circuit(await databases.open(), probe=probe, probe_interval=60)
    await circuit.trip(FailureKind.UNAUTHORIZED)
    await circuit.probe_if_due()
    assert probe.calls == []


async def test_two_processes_share_one_rate_window(databases: Databases) -> None:
    """With 4 requests per window shared by two processes, the 5th waits for the window
    to move, whichever process asks."""
    gates = [RateGate(await databases.open(), 4, window=1.0) for _ in range(2)]
    started = time.monotonic()
    await asyncio.gather(*(gates[i % 2].acquire() for i in range(4)))
    assert time.monotonic() - started < 0.8
    await gates[1].acquire()
    assert time.monotonic() - started >= 0.95


async def test_requests_ready_together_take_their_turns_in_one_round(
    databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests that queue while the first one is recorded are recorded together by the
    next in line (one transaction, not one each), and never past the window."""
    db = await databases.open()
    gate = RateGate(db, 5, window=1.0)
    rounds = 0
    transaction = db.transaction

    def counted(*, urgent: bool = False) -> Any:
        nonlocal rounds
        rounds += 1
        return transaction(urgent=urgent)

    monkeypatch.setattr(db, "transaction", counted)
    started = time.monotonic()
    await asyncio.gather(*(gate.acquire() for _ in range(5)))
    assert rounds == 2 and time.monotonic() - started < 0.8
    await gate.acquire()  # the 6th waits for the window to move
    assert time.monotonic() - started >= 0.95


@pytest.mark.parametrize("waiters", [3])
async def test_waiting_requests_hear_their_place_in_line(
    databases: Databases, waiters: int
) -> None:
    """Requests that wait for the window are told their 1-based place, first come first."""
    from bot.onemin.pacing import waiting_hook

    gate = RateGate(await databases.open(), 1, window=0.5)
    await gate.acquire()
    places: dict[int, list[int]] = {i: [] for i in range(waiters)}

    async def ask(i: int) -> None:
        waiting_hook.set(places[i].append)
        await gate.acquire()

    tasks = []
    for i in range(waiters):
        tasks.append(asyncio.create_task(ask(i)))
        await eventually(functools.partial(bool, places[i]))  # in line (told) before the next
    await asyncio.gather(*tasks)
    assert [p[0] for p in places.values()] == [1, 2, 3]


async def test_a_request_whose_job_was_lost_while_it_waited_is_stopped_before_it_is_sent(
    databases: Databases,
) -> None:
    """The task's before_send check runs after the turn is recorded (the wait for it may
    outlast the job's lease) and what it raises stops the request."""
    from bot.onemin.pacing import before_send

    db = await databases.open()
    gate = RateGate(db, 5, window=1.0)
    seen: list[int] = []

    async def lost() -> None:
        seen.append(await gate.window_used())
        raise LookupError("the job was taken over")

    before_send.set(lost)
    with pytest.raises(LookupError):
        await gate.acquire()
    assert seen == [1]  # checked once its turn was recorded
