"""Looking for a result already posted (cogs.delivery ``find_delivered``) when Discord
fails: the lookup is tried again with doubling waits, and a lookup that never answers
fails the delivery instead of posting the result a second time.

No Discord here: the front end's :class:`bot.frontend.replies.Replies` is replaced by one whose
``find`` fails a given number of times, and waits are recorded instead of slept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from unittest import mock

import discord
import pytest

from bot.failures import FailureKind
from bot.frontend.replies import HISTORY_PAGES, JobContext, Replies, ReplyTarget
from bot.jobs import DeliveryFailed, Job, Source
from cogs.delivery import LOOKUP_ATTEMPTS, DiscordFrontEnd


class FailingFind(Replies):
    """``Replies.find`` that fails with HTTP 503 ``failures`` times, then finds nothing."""

    def __init__(self, failures: int) -> None:
        super().__init__(mock.Mock(spec=discord.Client))
        self.failures = failures
        self.calls = 0

    async def find(
        self,
        target: ReplyTarget,
        matches: Callable[[discord.Message], bool],
        *,
        pages: int = HISTORY_PAGES,
    ) -> discord.Message | None:
        self.calls += 1
        if self.calls <= self.failures:
            response = mock.Mock(status=503, reason="Service Unavailable")
            raise discord.DiscordServerError(response, "upstream unavailable")
        return None


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Waits between lookups, recorded instead of slept."""
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", record)
    return waits


def front_end(replies: FailingFind) -> DiscordFrontEnd:
    front = DiscordFrontEnd(mock.Mock(spec=discord.Client, user=None))
    front.replies = replies
    return front


def a_job() -> Job:
    return Job(
        id="0123456789abcdef0123456789abcdef",
        guild_id=1,
        channel_id=2,
        member_id=3,
        output_format="png",
        source=Source("https://cdn.example/a.png", "a.png"),
        context=JobContext(application_id=4, interaction_at=time.time()).to_json(),
        reservation_id="",
        created_at=time.time(),
    )


async def test_a_failed_lookup_is_tried_again_after_doubling_waits(sleeps: list[float]) -> None:
    """Three failures, then an answer: four lookups, 2, 4 and 8 s apart; nothing found."""
    replies = FailingFind(failures=LOOKUP_ATTEMPTS - 1)
    assert await front_end(replies).find_delivered(a_job()) is None
    assert replies.calls == LOOKUP_ATTEMPTS
    assert sleeps == [2.0, 4.0, 8.0]


async def test_a_lookup_that_never_answers_fails_the_delivery(sleeps: list[float]) -> None:
    """Not knowing is not "not posted": after the last try the delivery fails."""
    replies = FailingFind(failures=LOOKUP_ATTEMPTS)
    with pytest.raises(DeliveryFailed) as info:
        await front_end(replies).find_delivered(a_job())
    assert info.value.kind is FailureKind.DELIVERY_ERROR
    assert str(info.value) == "lookup failed: HTTP 503"
    assert isinstance(info.value.__cause__, discord.HTTPException)
    assert (replies.calls, sleeps) == (LOOKUP_ATTEMPTS, [2.0, 4.0, 8.0])
