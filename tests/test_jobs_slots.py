"""The slot line alone (:mod:`bot.jobs.slots`), with a fake fleet instead of the database.

A look is a function the line is given; here :class:`Fleet` counts the slots taken and
records who looked, in order. The poll interval is long unless a test is about it, so a
job looks only when the line lets it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from bot.jobs.model import Stopped
from bot.jobs.slots import SlotLine, SlotLook

NEVER = 3600.0  # seconds: a poll interval no test waits for


@dataclass
class Fleet:
    """The fleet's slots as the looks see them: ``taken`` of ``slots``."""

    slots: int
    taken: int = 0
    looks: list[str] = field(default_factory=list)  # who looked, in order
    holders: list[str] = field(default_factory=list)  # who took a slot, in order
    waited: list[str] = field(default_factory=list)  # who was told to wait, in order

    def look(self, name: str) -> SlotLook:
        async def one_look() -> int | None:
            self.looks.append(name)
            await asyncio.sleep(0)  # a look is a round trip: others run meanwhile
            if self.taken >= self.slots:
                return None
            before = self.taken
            self.taken += 1
            self.holders.append(name)
            return before

        return one_look

    def waiting(self, name: str) -> Callable[[], None]:
        return lambda: self.waited.append(name)

    def free_one(self) -> None:
        self.taken -= 1


def enter(
    line: SlotLine, fleet: Fleet, name: str, look: SlotLook | None = None
) -> asyncio.Task[None]:
    return asyncio.create_task(
        line.take(look or fleet.look(name), waiting=fleet.waiting(name)), name=name
    )


async def until(predicate: Callable[[], bool]) -> None:
    """Let the line's tasks run until ``predicate`` holds."""
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 - the tasks set no event to wait on
            await asyncio.sleep(0)


async def settle() -> None:
    """Let every ready task run until none is left to run (no timer fires meanwhile)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_freed_slot_goes_to_the_jobs_in_claim_order() -> None:
    """With one slot, the jobs take it one after another in the order they entered."""
    fleet = Fleet(slots=1)
    line = SlotLine(slots=1, poll_interval=NEVER)
    tasks = [enter(line, fleet, name) for name in ("a", "b", "c")]
    for holders in (["a"], ["a", "b"], ["a", "b", "c"]):
        await until(lambda: fleet.holders == holders)  # noqa: B023
        fleet.free_one()
        line.freed()
    await asyncio.gather(*tasks)
    assert fleet.holders == ["a", "b", "c"]


async def test_only_the_head_of_the_line_looks() -> None:
    """While every slot is taken, a freed slot sends only the first waiting job to look."""
    fleet = Fleet(slots=1, taken=1)
    line = SlotLine(slots=1, poll_interval=NEVER)
    tasks = [enter(line, fleet, name) for name in ("a", "b", "c")]
    await until(lambda: fleet.looks == ["a"])
    line.freed()
    await until(lambda: fleet.looks == ["a", "a"])
    await settle()
    assert fleet.looks == ["a", "a"]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_look_that_sees_another_free_slot_lets_the_next_job_look_at_once() -> None:
    """Two free slots: the first job takes one and the second looks without a wake-up."""
    fleet = Fleet(slots=2)
    line = SlotLine(slots=2, poll_interval=NEVER)
    tasks = [enter(line, fleet, name) for name in ("a", "b")]
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)
    assert fleet.holders == ["a", "b"]


async def test_the_last_free_slot_taken_leaves_the_next_job_waiting() -> None:
    """The head takes the only free slot: the next job does not look until one is freed."""
    fleet = Fleet(slots=2, taken=1)
    line = SlotLine(slots=2, poll_interval=NEVER)
    first = enter(line, fleet, "a")
    second = enter(line, fleet, "b")
    await first
    await settle()
    assert fleet.looks == ["a"] and len(line) == 1
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)


async def test_a_slot_freed_while_the_head_looks_is_passed_to_the_next_job() -> None:
    """A wake-up that arrives during the head's look was meant for a waiting job: the
    next job looks at once, although the head's look saw no other free slot."""
    fleet = Fleet(slots=2, taken=1)
    line = SlotLine(slots=2, poll_interval=NEVER)
    looking = asyncio.Event()
    go_on = asyncio.Event()

    async def slow_look() -> int | None:
        fleet.looks.append("a")
        before = fleet.taken  # one slot free: this look takes the last one
        looking.set()
        await go_on.wait()
        fleet.taken += 1
        fleet.holders.append("a")
        return before

    first = enter(line, fleet, "a", slow_look)
    second = enter(line, fleet, "b")
    await looking.wait()
    fleet.free_one()
    line.freed()
    go_on.set()
    async with asyncio.timeout(5):
        await asyncio.gather(first, second)
    assert fleet.holders == ["a", "b"]


async def test_a_waiting_job_is_reported_waiting_once() -> None:
    """A job told to wait hears it once, however often it looks again."""
    fleet = Fleet(slots=1, taken=1)
    line = SlotLine(slots=1, poll_interval=NEVER)
    task = enter(line, fleet, "a")
    for looks in (1, 2, 3):
        await until(lambda: len(fleet.looks) == looks)  # noqa: B023
        line.freed()
    fleet.free_one()
    line.freed()
    await task
    assert fleet.waited == ["a"]


async def test_a_job_that_finds_a_slot_at_once_is_not_reported_waiting() -> None:
    fleet = Fleet(slots=1)
    line = SlotLine(slots=1, poll_interval=NEVER)
    await enter(line, fleet, "a")
    assert fleet.waited == []


async def test_the_head_looks_again_after_the_poll_interval_when_nothing_wakes_it() -> None:
    """A lost wake-up costs a poll interval, not the slot: the head looks on its own."""
    fleet = Fleet(slots=1, taken=1)
    line = SlotLine(slots=1, poll_interval=0.01)
    task = enter(line, fleet, "a")
    await until(lambda: len(fleet.looks) >= 3)
    fleet.free_one()
    await task
    assert fleet.holders == ["a"]


async def test_a_look_that_raises_ends_the_wait_and_leaves_the_line() -> None:
    """A job stopped during its look (cancelled, taken over) raises and is out of line."""
    line = SlotLine(slots=1, poll_interval=NEVER)

    async def stopped() -> int | None:
        raise Stopped("cancelled, or taken over by another process")

    with pytest.raises(Stopped):
        await line.take(stopped, waiting=lambda: None)
    assert len(line) == 0


async def test_a_cancelled_waiting_job_leaves_the_line() -> None:
    fleet = Fleet(slots=1, taken=1)
    line = SlotLine(slots=1, poll_interval=NEVER)
    task = enter(line, fleet, "a")
    await until(lambda: fleet.waited == ["a"])
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(line) == 0
