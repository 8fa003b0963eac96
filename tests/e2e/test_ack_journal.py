"""Issue 28, "0 lost": a member who saw "thinking" always gets an answer.

The commands journal each acknowledged interaction with its job ids before the
acknowledgement (:mod:`bot.frontend.journal`). With a real bot process killed -9 between
the acknowledgement and the job's record (the database held by another connection), the
next start tells the member once that nothing was charged; killed after the record, the
job is delivered once and nothing else is said. In process: the jobs are recorded under
the journaled ids, a refused command is done in the journal, and an interaction past its
token's 15 minutes is answered in the channel.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot.frontend.journal import (
    AckJournal,
    Acknowledged,
    answer_unrecorded,
    journal_of,
    read_journal,
)
from tests.e2e.test_menu import results as menu_results
from tests.e2e.test_restart import (
    World,
    killed_while_downloading_the_image,
    results,
    stop,
    world,
)
from tests.harness import Harness, eventually, running_bot
from tests.support.images import png

NOT_TAKEN = "The bot restarted before it could take your upscale. Nothing was charged"
LOCKED = sqlite3.OperationalError("database is locked")


def journal_file(tmp_path: Path) -> Path:
    """The journal of a single process (all shards) whose spool is ``data/spool``."""
    return tmp_path / "data" / "spool" / "journal" / "acks-all.jsonl"


def not_taken_anywhere(w: World | Harness) -> list[str]:
    """Every message, in the channel or a member's reply, that says a command was not taken."""
    return [
        str(m.get("content"))
        for m in w.discord.channel_messages()
        if NOT_TAKEN in str(m.get("content"))
    ]


def holding_the_database(db_path: Path) -> sqlite3.Connection:
    """Another connection holding the write lock: the bot's writes wait (5 s, then fail)."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


# -- a real process, killed -------------------------------------------------------------


async def test_a_kill_between_the_acknowledgement_and_the_record_is_answered_once(
    tmp_path: Path,
) -> None:
    """kill -9 while the job's record waits for the database: after the restart the
    member's reply says the bot restarted before taking the upscale and nothing was
    charged; no job, no credit; a second restart says nothing more."""
    async with world(tmp_path) as w:
        proc = await w.start()
        held: sqlite3.Connection | None = None
        try:
            held = holding_the_database(w.db_path)
            it = await w.discord.slash("upscale", {"image": w.discord.attachment(png(), "a.png")})
            await it.acked()
            assert list(read_journal(journal_file(tmp_path))) == [it.id]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if held is not None:
                held.rollback()
                held.close()
            stop(proc)
        proc = await w.start()
        try:
            final = await it.final(timeout=20)
            assert NOT_TAKEN in str(final.get("content")), f"{final}\n{w.log()}"
            assert w.query("SELECT COUNT(*) FROM jobs") == [(0,)]
            assert w.query("SELECT COUNT(*) FROM ledger_entries") == [(0,)]
            assert read_journal(journal_file(tmp_path)) == {}
        finally:
            stop(proc)
        proc = await w.start()
        try:
            told = [e for e in it.edits if NOT_TAKEN in str(e.get("content"))]
            assert len(told) == 1 and not_taken_anywhere(w) == [str(final.get("content"))]
        finally:
            stop(proc)


async def test_a_kill_after_the_record_delivers_the_job_once_and_says_nothing_else(
    tmp_path: Path,
) -> None:
    """kill -9 once the job is recorded (its image still downloading): after the restart
    the job is delivered once, charged once, and no "not taken" message is written."""
    async with world(tmp_path) as w:
        it, _, held = await killed_while_downloading_the_image(w)
        [job_id] = read_journal(journal_file(tmp_path))[it.id].job_ids
        assert w.query("SELECT id FROM jobs") == [(job_id,)]
        held.release()
        proc = await w.start()
        try:
            final = await it.final(timeout=30)
            assert final.get("attachments")
            await w.wait_settled()
            assert w.query("SELECT status FROM jobs") == [("delivered",)]
            assert w.query("SELECT state FROM ledger_entries") == [("committed",)]
            assert len(results(w)) == 1
            assert not any(NOT_TAKEN in str(e.get("content")) for e in it.edits)
            assert not_taken_anywhere(w) == []
            assert read_journal(journal_file(tmp_path)) == {}
        finally:
            stop(proc)


# -- in process ----------------------------------------------------------------------------


async def test_the_menus_jobs_are_recorded_under_the_journaled_ids(tmp_path: Path) -> None:
    """Upscale image on a message with three images: one id per image journaled before
    the acknowledgement, and the three jobs recorded under exactly those ids."""
    async with running_bot(tmp_path, max_jobs_per_user=4) as h:
        lines = journal_file(tmp_path)
        target = h.discord.image_message(3)
        it = await h.discord.message_command("Upscale image", target)
        await it.acked()
        await h.discord.wait_until(lambda: len(menu_results(h, it)) == 3, timeout=30)
        acks = [line for line in lines.read_text().splitlines() if '"ack"' in line]
        assert len(acks) == 1
        journaled = Acknowledged.from_line(json.loads(acks[0])).job_ids
        recorded = {row["id"] for row in await h.services.db.fetchall("SELECT id FROM jobs")}
        assert len(journaled) == 3 and recorded == set(journaled)
        assert journal_of(h.bot).pending == []


@pytest.mark.parametrize("refusal", ["too_large", "database"])
async def test_a_refused_command_is_answered_and_done_in_the_journal(
    tmp_path: Path, refusal: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command refused after its acknowledgement (an image declared too large, a
    database that does not answer) tells the member why, and is done in the journal: a
    restart would not tell them anything more."""
    async with running_bot(tmp_path) as h:
        attachment = h.discord.attachment(png(), "a.png")
        if refusal == "database":

            async def locked(*args: object, **kw: object) -> None:
                raise LOCKED

            monkeypatch.setattr(h.bot.queue, "accept", locked)
        else:
            attachment["size"] = h.bot.queue.config.limits.max_bytes + 1
        it = await h.discord.slash("upscale", {"image": attachment})
        final = await it.final()
        expected = "too large" if refusal == "too_large" else "can't reach its database"
        assert expected in str(final.get("content"))
        await eventually(lambda: journal_of(h.bot).pending == [])
        assert read_journal(journal_file(tmp_path)) == {}


def journaled(h: Harness, tmp_path: Path, **fields: Any) -> tuple[AckJournal, Acknowledged]:
    """A journal of another process, opened, holding one interaction acknowledged in
    ``h``'s guild and channel by Alice (``fields`` overrides the rest)."""
    journal = AckJournal(tmp_path / "other" / "acks.jsonl")
    journal.open()
    entry = replace(
        Acknowledged(
            interaction_id=1,
            application_id=h.bot.application_id or 0,
            token="a-token",
            created_at=time.time(),
            guild_id=h.discord.guild.id,
            channel_id=h.discord.channel.id,
            member_id=h.discord.alice.user.id,
            job_ids=("0123456789abcdef0123456789abcdef",),
        ),
        **fields,
    )
    journal.acknowledged(entry)
    return journal, entry


async def answered(h: Harness, journal: AckJournal, entry: Acknowledged) -> int:
    """What the journal's replay at start-up does for ``entry``: the members told."""
    return await answer_unrecorded(
        journal, [entry], db=h.bot.db, store=h.bot.queue.store, client=h.bot
    )


async def test_a_reply_whose_id_was_not_journaled_is_found_through_the_token(
    tmp_path: Path,
) -> None:
    """A process killed after Discord took the acknowledgement but before it heard the
    reply's id: the answer still replaces the member's reply, found as ``@original``."""
    async with running_bot(tmp_path) as h:
        attachment = h.discord.attachment(png(), "a.png")
        attachment["size"] = h.bot.queue.config.limits.max_bytes + 1  # refused, no job
        it = await h.discord.slash("upscale", {"image": attachment})
        await it.final()
        journal, unknown_reply = journaled(h, tmp_path, interaction_id=it.id, token=it.token)
        posted = len(h.discord.channel_messages())
        told = await answered(h, journal, unknown_reply)
        assert told == 1 and it.original is not None
        assert NOT_TAKEN in str(it.original.get("content"))
        assert len(h.discord.channel_messages()) == posted


async def test_an_interaction_past_its_token_is_answered_in_the_channel(tmp_path: Path) -> None:
    """An interaction journaled 20 minutes ago whose job was never recorded: the member
    is named in a channel message, in the server's language; it is then done."""
    async with running_bot(tmp_path) as h:
        h.discord.guild.preferred_locale = "de"
        alice = h.discord.alice.user.id
        journal, old = journaled(
            h,
            tmp_path,
            token="a-token-dead-for-five-minutes",
            created_at=time.time() - 20 * 60,
            locale="en-US",
            guild_locale="de",
            message_id=12345,
        )
        told = await answered(h, journal, old)
        posted = [str(m.get("content")) for m in h.discord.channel_messages()]
        assert told == 1
        assert [p for p in posted if f"<@{alice}>" in p and "nichts berechnet" in p] == posted
        assert len(posted) == 1 and journal.pending == []


async def test_an_interaction_whose_job_was_recorded_is_left_to_the_queue(
    tmp_path: Path,
) -> None:
    """An interaction journaled with a job that exists: nothing is said, and it is done."""
    async with running_bot(tmp_path) as h:
        it, final = await h.upscale(png())
        assert final.get("attachments")
        [job_id] = [str(r["id"]) for r in await h.services.db.fetchall("SELECT id FROM jobs")]
        journal, recorded = journaled(
            h, tmp_path, interaction_id=it.id, token=it.token, job_ids=(job_id,)
        )
        before = len(it.edits), len(h.discord.channel_messages())
        told = await answered(h, journal, recorded)
        assert told == 0 and journal.pending == []
        assert (len(it.edits), len(h.discord.channel_messages())) == before
