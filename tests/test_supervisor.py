"""The job queue's supervisor of side tasks (:mod:`bot.jobs.supervisor`)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bot.jobs.supervisor import Supervisor
from bot.retry import Backoff

NO_WAIT = Backoff(base=0.0, cap=0.0)


async def test_a_side_task_that_raises_is_logged_at_error_and_started_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stopping = asyncio.Event()
    supervisor = Supervisor(stopping, backoff=NO_WAIT)
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError("a bug in the loop")
        await stopping.wait()

    with caplog.at_level(logging.ERROR, "bot.jobs.supervisor"):
        supervisor.start("jobs-test", loop)
        async with asyncio.timeout(5):
            while runs < 3:  # noqa: ASYNC110 - counts the restarts
                await asyncio.sleep(0.01)
        stopping.set()
        await supervisor.join()
    assert runs == 3 and supervisor.restarts == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all(r.exc_info for r in errors)
    assert "jobs-test task ended by an error" in errors[0].getMessage()


async def test_a_side_task_that_returns_while_the_queue_runs_is_started_again() -> None:
    stopping = asyncio.Event()
    supervisor = Supervisor(stopping, backoff=NO_WAIT)
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            stopping.set()

    supervisor.start("jobs-test", loop)
    async with asyncio.timeout(5):
        await supervisor.join()
    assert runs == 2 and supervisor.restarts == 1


async def test_a_side_task_that_ends_because_the_queue_stops_is_not_started_again() -> None:
    stopping = asyncio.Event()
    supervisor = Supervisor(stopping, backoff=NO_WAIT)
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        await stopping.wait()

    supervisor.start("jobs-test", loop)
    await asyncio.sleep(0)
    stopping.set()
    async with asyncio.timeout(5):
        await supervisor.join()
    assert runs == 1 and supervisor.restarts == 0
