"""The progress display of a member's reply (cogs.delivery.ProgressDisplay) alone, with a
fake in place of Discord: what it does when the check before an edit meets a database
that does not answer.

A task whose exception nobody retrieves is reported by asyncio when the task is
collected ("Task exception was never retrieved", logged at ERROR through the loop's
exception handler): the tests collect the display and watch that handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.frontend.replies import ReplyTarget
from cogs.delivery import ProgressDisplay
from tests.harness import eventually


class FakeReplies:
    """Records the edits the display makes."""

    def __init__(self) -> None:
        self.edits: list[dict[str, Any]] = []

    async def edit(self, target: ReplyTarget, **fields: Any) -> object:
        self.edits.append(fields)
        return object()


def target() -> ReplyTarget:
    return ReplyTarget(
        application_id=1, token="token", created_at=time.time(), channel_id=2, member_id=3,
        message_id=4,
    )  # fmt: skip


@pytest.fixture
async def lost_exceptions() -> AsyncIterator[list[dict[str, Any]]]:
    """What the running loop's exception handler is called with during the test."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    yield seen
    loop.set_exception_handler(previous)


async def test_a_check_that_meets_a_database_outage_drops_the_edit_and_loses_no_exception(
    lost_exceptions: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """The check before an edit (does this process still show the job?) cannot reach
    the database: the edit is dropped, the display closes (the next progress report
    opens a new one), the outage is one WARNING line without a traceback, and no task
    is left with an exception nobody retrieved."""

    async def may_show() -> bool:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")

    replies = FakeReplies()
    shown = [
        ProgressDisplay(
            replies,  # type: ignore[arg-type]  # a fake Replies: only edit()
            target(),
            "job-1",
            may_show,
            interval=0.01,
            first_delay=0.0,
        )
    ]
    with caplog.at_level(logging.INFO):
        shown[0].show("queued", lambda: "⏳ queued", cancellable=True)
        with contextlib.suppress(TimeoutError):
            await eventually(lambda: shown[0].closed, timeout=2)
        await asyncio.sleep(0)  # the pump's task ends after it closed the display
    closed = shown[0].closed
    shown.clear()  # the display and its task are collected here
    gc.collect()
    assert lost_exceptions == []
    assert closed
    assert replies.edits == []
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelname, r.exc_info) for r in records] == [("WARNING", None)]
    assert "Database refused the connection" in records[0].getMessage()


async def test_a_display_still_edits_when_its_check_answers(
    lost_exceptions: list[dict[str, Any]],
) -> None:
    """The same display with a check that answers makes its edit (the control case)."""

    async def may_show() -> bool:
        return True

    replies = FakeReplies()
    display = ProgressDisplay(
        replies,  # type: ignore[arg-type]  # a fake Replies: only edit()
        target(),
        "job-1",
        may_show,
        interval=0.01,
        first_delay=0.0,
    )
    display.show("queued", lambda: "⏳ queued", cancellable=False)
    await eventually(lambda: bool(replies.edits), timeout=5)
    assert replies.edits[0]["content"] == "⏳ queued"
    assert not display.closed
    await display.close()
    assert lost_exceptions == []
