"""Exactly once on every path when Discord refuses a job's interaction token (issue 26).

Discord's 401 / 50027 on a token is final (``docs/interaction-tokens.md``): the bot makes
no call with a token after its first refusal, answers through the channel (naming the
member), never fails or refunds a job for it, and turns the member's reply into a link to
what it posted. Each test checks one post and one charge unless it says otherwise.

Tests without a restart run the bot in this process (:func:`tests.harness.running_bot`);
those with one run it as a real process killed with -9 (``tests.e2e.test_restart``'s
``world``). A job is caught mid-stage by a hold at 1min.ai, or by a Discord call that
takes effect and never answers, never by a sleep.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import bot.frontend.replies
from tests.e2e.test_restart import World, results, stop, world
from tests.emulators.discord import APPLY_THEN_HANG, DiscordEmulator, Injected, snowflake_time
from tests.harness import Harness, eventually, running_bot
from tests.support.images import png

CHANNEL_POST = r"/channels/\d+/messages$"  # a channel message, not an interaction's
RESTARTED = "The bot restarted"
READY_IN_CHANNEL = "✅ Your upscale is ready: "
ENDED_IN_CHANNEL = "This upscale ended: "


# -- what the emulators saw --------------------------------------------------------------


def mention(member_id: int) -> str:
    return f"<@{member_id}>"


def channel_results(discord: DiscordEmulator, it: Injected) -> list[dict[str, Any]]:
    """Results posted in the channel as messages of their own (not the member's reply)."""
    reply = it.original["id"] if it.original is not None else None
    return [m for m in discord.channel_messages() if m.get("attachments") and m["id"] != reply]


def channel_posts(discord: DiscordEmulator, *, files: bool) -> list[Any]:
    """The bot's POSTs to a channel (with a file: results), whatever they were answered."""
    return [
        c
        for c in discord.calls
        if c.method == "POST" and re.search(CHANNEL_POST, c.path) and bool(c.files) == files
    ]


def refusals(discord: DiscordEmulator, it: Injected) -> list[Any]:
    """Calls made with ``it``'s token that Discord refused (401)."""
    return [c for c in discord.calls if it.token in c.path and c.status == 401]


def said_anywhere(discord: DiscordEmulator, it: Injected, words: str) -> list[str]:
    """Every text the member could have read with ``words``: each version of their reply,
    and the channel's messages."""
    texts = [str(e.get("content")) for e in it.edits]
    texts += [str(m.get("content")) for m in discord.channel_messages()]
    return [t for t in texts if words in t]


def link_to(discord: DiscordEmulator, message: dict[str, Any]) -> str:
    return (
        f"https://discord.com/channels/{discord.guild.id}/{message['channel_id']}/{message['id']}"
    )


def has_cancel(message: dict[str, Any] | None) -> bool:
    return message is not None and any(
        str(c.get("custom_id", "")).startswith("upscale:cancel:")
        for row in message.get("components", [])
        for c in row.get("components", [])
    )


async def rows(h: Harness, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in await h.services.db.fetchall(sql)]


async def upscale(h: Harness) -> Injected:
    return await h.discord.slash("upscale", {"image": h.discord.attachment(png(), "a.png")})


# -- 1. clock skew ----------------------------------------------------------------------


async def test_a_token_refused_early_delivers_once_in_the_channel_without_using_it_again(
    tmp_path: Path,
) -> None:
    """Discord refuses the token 2 s after the command (the bot's clock gives it 15
    minutes) while the job is at 1min.ai: the result is posted once, in the channel,
    naming the member, and charged once; one call got the 401 and none was made with the
    token after it (so the file went to the dead token at most in that one call)."""
    async with running_bot(tmp_path) as h:
        held = h.onemin.hold("upscale")
        it = await upscale(h)
        await it.acked()
        h.discord.token_lifetime = 2.0
        await held.reached()
        await eventually(lambda: h.discord.token_dead(it))
        held.release()
        await h.discord.wait_until(lambda: bool(channel_results(h.discord, it)))
        await h.idle()
        alice = h.discord.alice.user.id
        [posted] = channel_results(h.discord, it)
        assert mention(alice) in posted["content"]
        assert await rows(h, "SELECT status FROM jobs") == [("delivered",)]
        assert await h.balance(alice) == (1, 0)
        assert len(refusals(h.discord, it)) == 1
        assert h.discord.dead_token_calls() == []


# -- 2 and 3. a kill -9 between the channel post and its record --------------------------


async def killed_after_the_channel_post(w: World, *, between: int = 0) -> Injected:
    """Run one upscale whose token dies while it is at 1min.ai, with ``between`` members'
    messages posted in the channel meanwhile, and kill -9 the bot once Discord made its
    result's channel post (the answer never comes back), after the token's death was
    recorded with the job. Returns the member's interaction."""
    held = w.onemin.hold("upscale")
    w.discord.fail(CHANNEL_POST, APPLY_THEN_HANG, method="POST", files_only=True)
    proc = await w.start()
    try:
        it = await w.discord.slash("upscale", {"image": w.discord.attachment(png(), "a.png")})
        await held.reached()
        w.discord.kill_token(it)
        w.discord.fill_channel(between)
        held.release()
        await w.discord.wait_until(lambda: bool(w.discord.hung), timeout=20)
        await w.wait_for(lambda: w.query("SELECT reply_token IS NULL FROM jobs") == [(1,)])
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop(proc)
    assert w.query("SELECT status, stage FROM jobs") == [("running", "delivering")]
    assert w.query("SELECT state FROM ledger_entries") == [("reserved",)]
    w.discord.clear_faults()
    return it


async def assert_settled_without_posting_again(w: World, it: Injected) -> None:
    """After the restart: the one result stays the only one (no second POST), the job is
    delivered and charged once, and the member was told nothing else."""
    await w.wait_settled()
    alice = w.discord.alice.user.id
    [posted] = channel_results(w.discord, it)
    assert mention(alice) in posted["content"]
    assert len(channel_posts(w.discord, files=True)) == 1
    assert channel_posts(w.discord, files=False) == []  # no notice, no failure message
    assert w.query("SELECT status, message_id FROM jobs") == [("delivered", int(posted["id"]))]
    assert w.query("SELECT state FROM ledger_entries") == [("committed",)]
    assert said_anywhere(w.discord, it, RESTARTED) == []
    assert said_anywhere(w.discord, it, "refunded") == []
    assert w.discord.dead_token_calls() == []


async def test_a_kill_after_the_channel_post_with_a_dead_token_settles_without_posting_again(
    tmp_path: Path,
) -> None:
    """kill -9 after Discord made the result's channel post and before the bot recorded
    it, the token dead: the restarted bot finds the post, posts nothing, charges once,
    and says neither "restarted" nor "refunded"."""
    async with world(tmp_path) as w:
        it = await killed_after_the_channel_post(w)
        proc = await w.start()
        try:
            await assert_settled_without_posting_again(w, it)
        finally:
            stop(proc)


@pytest.mark.parametrize("others", [300, 1500])
async def test_a_result_followed_by_many_messages_is_still_found_after_a_kill(
    tmp_path: Path, others: int
) -> None:
    """The same kill, then ``others`` members' messages in the channel before the restart
    (1,500 is more than the look reads): the result is found all the same, since the look
    reads the channel from the job's start, oldest first."""
    async with world(tmp_path) as w:
        it = await killed_after_the_channel_post(w)
        w.discord.fill_channel(others)
        proc = await w.start()
        try:
            await assert_settled_without_posting_again(w, it)
        finally:
            stop(proc)


async def test_a_result_found_in_the_channel_after_a_kill_gets_the_reply_linked_to_it(
    tmp_path: Path,
) -> None:
    """The same kill: after the restart the member's reply, left on "thinking" (the
    token died before the first progress edit), is turned into a link to the result
    found in the channel, through the channel (the token being dead)."""
    async with world(tmp_path) as w:
        it = await killed_after_the_channel_post(w)
        assert it.original is not None and READY_IN_CHANNEL not in it.original["content"]
        proc = await w.start()
        try:
            await w.wait_settled()
            [posted] = channel_results(w.discord, it)
            await it.wait(lambda i: i.original is not None and "ready" in i.original["content"])
            assert it.original is not None
            assert it.original["content"] == READY_IN_CHANNEL + link_to(w.discord, posted)
            assert not has_cancel(it.original)
            assert w.discord.dead_token_calls() == []
        finally:
            stop(proc)


# -- 4. a failure after the token died ---------------------------------------------------


async def test_a_failure_after_the_token_died_is_told_once_in_the_channel_and_refunded_once(
    tmp_path: Path,
) -> None:
    """1min.ai returns an unusable result after the token died: one message in the
    channel names the member and says the credit was refunded; the job failed, refunded
    once; no call with the token after its first 401."""
    async with running_bot(tmp_path) as h:
        held = h.onemin.hold("upscale")
        h.onemin.fail("upscale", "failure_status")
        it = await upscale(h)
        await held.reached()
        h.discord.kill_token(it)
        held.release()
        alice = mention(h.discord.alice.user.id)

        def told() -> list[dict[str, Any]]:
            return [
                m
                for m in h.discord.channel_messages()
                if alice in m["content"] and "refunded" in m["content"]
            ]

        await h.discord.wait_until(lambda: bool(told()))
        await h.idle()
        assert len(told()) == 1
        assert not any(m.get("attachments") for m in h.discord.channel_messages())
        assert await rows(h, "SELECT status FROM jobs") == [("failed",)]
        assert await rows(h, "SELECT state FROM ledger_entries") == [("refunded",)]
        assert h.discord.dead_token_calls() == []


# -- 5. the member's reply once the answer is in the channel ------------------------------


async def waiting_with_cancel(h: Harness) -> Injected:
    """A job that waits while 1min.ai refuses the bot's account: its reply says "Waiting"
    and offers Cancel. Let 1min.ai accept the bot again to let it go on."""
    h.onemin.refuse_key(True)
    it = await upscale(h)
    await it.wait(
        lambda i: (
            i.original is not None and "Waiting" in i.original["content"] and has_cancel(i.original)
        ),
        timeout=15,
    )
    return it


def nearly_expired(monkeypatch: pytest.MonkeyPatch, it: Injected) -> None:
    """Make the bot's clock say ``it``'s token is within its safety margin of the end
    (as if the job had waited 14.5 minutes), while Discord still takes it for 15 s."""
    age = time.time() - snowflake_time(it.id)
    monkeypatch.setattr(bot.frontend.replies, "TOKEN_LIFETIME", age + 15)


@pytest.mark.parametrize("token", ["nearly_expired", "dead"])
async def test_the_reply_of_a_result_posted_in_the_channel_links_to_it_without_cancel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    """A reply that said "Waiting" with Cancel, then the result went to the channel: the
    reply becomes a link to it, without Cancel. Through the token when the bot's clock
    only says it is nearly expired; through the channel once Discord refused it."""
    async with running_bot(tmp_path, circuit_probe_interval=0.2) as h:
        it = await waiting_with_cancel(h)
        if token == "dead":
            h.discord.kill_token(it)
        else:
            nearly_expired(monkeypatch, it)
        h.onemin.refuse_key(False)
        await h.discord.wait_until(lambda: bool(channel_results(h.discord, it)), timeout=20)
        await h.idle()
        [posted] = channel_results(h.discord, it)
        assert it.original is not None
        assert it.original["content"] == READY_IN_CHANNEL + link_to(h.discord, posted)
        assert not has_cancel(it.original) and "Waiting" not in it.original["content"]
        last_edit = [c for c in h.discord.calls if c.method == "PATCH" and c.status == 200][-1]
        through_channel = f"/channels/{h.discord.channel.id}/messages/{it.original['id']}"
        assert last_edit.path.endswith(through_channel) == (token == "dead")
        assert await h.balance(h.discord.alice.user.id) == (1, 0)
        assert h.discord.dead_token_calls() == []


@pytest.mark.parametrize("token", ["nearly_expired", "dead"])
async def test_the_reply_of_a_failure_posted_in_the_channel_links_to_it_without_cancel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    """The same for a failure: the job waiting with Cancel is refunded (1min.ai refused
    its image), the refund message goes to the channel, and the reply links to it."""
    async with running_bot(tmp_path, circuit_probe_interval=0.2) as h:
        it = await waiting_with_cancel(h)
        if token == "dead":
            h.discord.kill_token(it)
        else:
            nearly_expired(monkeypatch, it)
        h.onemin.fail("upscale", "rejected")
        h.onemin.refuse_key(False)
        await h.discord.wait_until(
            lambda: any("refunded" in m["content"] for m in h.discord.channel_messages()),
            timeout=20,
        )
        await h.idle()
        [told] = [m for m in h.discord.channel_messages() if "refunded" in m["content"]]
        assert it.original is not None
        assert it.original["content"] == ENDED_IN_CHANNEL + link_to(h.discord, told)
        assert not has_cancel(it.original) and "Waiting" not in it.original["content"]
        assert await h.balance(h.discord.alice.user.id) == (0, 0)
        assert h.discord.dead_token_calls() == []


# -- 6. the restart notice ----------------------------------------------------------------


@pytest.mark.parametrize("token", ["live", "dead"])
async def test_the_restart_notice_goes_only_through_a_live_token(
    tmp_path: Path, token: str
) -> None:
    """kill -9 while the job is at 1min.ai, then a restart. With a live token the
    member's reply says once that the job continues; with a token that died meanwhile
    nothing is said (one refused attempt, no call after it) until the result, which is
    posted in the channel naming the member."""
    async with world(tmp_path) as w:
        held = w.onemin.hold("upscale")
        proc = await w.start()
        try:
            it = await w.discord.slash("upscale", {"image": w.discord.attachment(png(), "a.png")})
            await held.reached()
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            stop(proc)
        held.release()
        if token == "dead":
            w.discord.kill_token(it)
        proc = await w.start()
        try:
            await w.wait_settled()
            told = said_anywhere(w.discord, it, RESTARTED)
            if token == "live":
                final = await it.final()
                assert final.get("attachments")
                assert told and all(t.count(RESTARTED) == 1 for t in told)
                assert channel_posts(w.discord, files=False) == []
            else:
                assert told == []
                [posted] = channel_results(w.discord, it)
                assert mention(w.discord.alice.user.id) in posted["content"]
                assert len(refusals(w.discord, it)) == 1
            assert len(results(w)) == 1
            assert w.query("SELECT state FROM ledger_entries") == [("committed",)]
            assert w.discord.dead_token_calls() == []
        finally:
            stop(proc)


# -- 7. the nonce of a retried post ------------------------------------------------------


async def test_a_result_post_retried_after_a_lost_answer_makes_one_message(
    tmp_path: Path,
) -> None:
    """Discord makes the result's channel post but answers 500; discord.py posts again
    with the same nonce (r + job id, enforce_nonce) and gets the same message back: one
    message, recorded with the job, charged once."""
    async with running_bot(tmp_path) as h:
        h.discord.fail(CHANNEL_POST, 500, method="POST", files_only=True, applied=True)
        it = await h.discord.slash(
            "upscale", {"image": h.discord.attachment(png(), "a.png")}, age=14 * 60 + 45
        )
        await it.acked()
        await h.discord.wait_until(lambda: bool(channel_results(h.discord, it)))
        await h.idle()
        [posted] = channel_results(h.discord, it)
        posts = channel_posts(h.discord, files=True)
        assert [c.status for c in posts] == [500, 200]
        [(job_id, message_id)] = await rows(h, "SELECT id, message_id FROM jobs")
        assert {c.json["nonce"] for c in posts} == {f"r{job_id}"[:25]}
        assert message_id == int(posted["id"])
        assert await h.balance(h.discord.alice.user.id) == (1, 0)


async def test_a_result_posted_again_after_a_restart_within_minutes_is_the_same_message(
    tmp_path: Path,
) -> None:
    """The nonce is the job's, not the request's: 1,000 members' messages between the
    job's start and its result (all the look reads), a kill -9 after Discord made the
    post, and a restart within Discord's few minutes. The look misses the result, the
    bot posts it again, and Discord answers with the message it already made: one
    message, recorded with the job, charged once."""
    async with world(tmp_path) as w:
        it = await killed_after_the_channel_post(w, between=1000)
        proc = await w.start()
        try:
            await w.wait_settled()
            [posted] = channel_results(w.discord, it)
            assert [c.status for c in channel_posts(w.discord, files=True)] == [200, 200]
            assert w.query("SELECT status, message_id FROM jobs") == [
                ("delivered", int(posted["id"]))
            ]
            assert w.query("SELECT state FROM ledger_entries") == [("committed",)]
        finally:
            stop(proc)


async def test_a_result_past_the_look_and_the_nonce_window_is_posted_once_more_and_charged_once(
    tmp_path: Path,
) -> None:
    """The README's bound: 1,000 members' messages between the job's start and its result
    (all the look reads), a kill -9 after Discord made the post, and a restart after
    Discord's nonce window. The bot posts the result once more (two copies on screen),
    records the second with the job, and charges once; the member is told nothing else."""
    async with world(tmp_path) as w:
        it = await killed_after_the_channel_post(w, between=1000)
        w.discord.nonce_window = 0.0
        proc = await w.start()
        try:
            await w.wait_settled()
            first, second = channel_results(w.discord, it)
            assert first["id"] != second["id"]
            assert w.query("SELECT status, message_id FROM jobs") == [
                ("delivered", int(second["id"]))
            ]
            assert w.query("SELECT state FROM ledger_entries") == [("committed",)]
            assert channel_posts(w.discord, files=False) == []
            assert said_anywhere(w.discord, it, "refunded") == []
        finally:
            stop(proc)
