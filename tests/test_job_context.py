"""What a job keeps for its front end: an opaque string the queue never reads, and the
member's roles the queue keeps itself; rows written by older versions are still read.

The queue's side (``Job.context``, ``Job.role_ids``, the ``jobs.context`` column) is
written and read through the store, on both engines; the front end's side is
:class:`bot.frontend.replies.JobContext`.
"""

from __future__ import annotations

import json
import time

from bot.db import Database, ts, utc_now
from bot.frontend.replies import JobContext, ReplyTarget
from bot.jobs import Job, JobRequest, Source
from bot.jobs.store import INSERT_JOB, JobStore, trail_line

OWNER = "test-host/all:1.abcdef"
NOT_JSON = 'whatever the front end keeps {"not": json'
# A row of an earlier version: the front end's fields, the member's roles and (before
# migration 0010) the interaction token, all in one object.
OLD_CONTEXT = {
    "app": 1234,
    "at": 1_700_000_000.5,
    "msg": 5678,
    "locale": "de",
    "guild_locale": "fr",
    "limit": 26_214_400,
    "roles": [11, 22],
    "source": "https://discord.com/channels/1/2/3",
    "token": "an-older-interaction-token",
}


def request(context: str, role_ids: tuple[int, ...] = ()) -> JobRequest:
    return JobRequest(
        100, 200, 301, role_ids, Source("https://cdn.example/a.png", "a.png"), context
    )


async def stored_and_read(db: Database, job: Job) -> Job:
    """``job`` recorded by the store, then read back from its row."""
    async with db.transaction() as tx:
        await JobStore(db, owner=OWNER).intake.insert_job(tx, job, time.time() + 30)
    return await read(db, job.id)


async def read(db: Database, job_id: str) -> Job:
    row = await db.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
    assert row is not None
    return Job.from_row(row)


async def old_row(db: Database, context: dict[str, object]) -> str:
    """A job row as an earlier version wrote it (no token column of its own); its id."""
    job_id = "0123456789abcdef0123456789abcdef"
    params = (
        job_id,
        100,
        200,
        301,
        "reservation-1",
        "png",
        "a.png",
        "https://cdn.example/a.png",
        None,
        json.dumps(context),
        None,
        OWNER,
        time.time() + 30,
        ts(utc_now()),
        trail_line("receiving", OWNER),
    )
    async with db.transaction() as tx:
        await tx.execute(INSERT_JOB, params)
    return job_id


async def test_the_front_ends_context_comes_back_exactly_as_given(db: Database) -> None:
    """The queue stores the front end's string as it is, JSON or not, and never reads it."""
    job = Job.requested(request(NOT_JSON), time.time())
    assert (await stored_and_read(db, job)).context == NOT_JSON


async def test_the_member_roles_come_back_with_the_job(db: Database) -> None:
    job = Job.requested(request("", role_ids=(11, 22)), time.time())
    assert (await stored_and_read(db, job)).role_ids == (11, 22)


async def test_a_row_an_older_version_wrote_keeps_its_roles_and_token(db: Database) -> None:
    """The member's roles, and the interaction token kept in the context before it had a
    column of its own, are read from an older version's row."""
    job = await read(db, await old_row(db, OLD_CONTEXT))
    assert (job.role_ids, job.reply_token) == ((11, 22), "an-older-interaction-token")


async def test_the_front_end_reads_its_fields_from_a_row_an_older_version_wrote(
    db: Database,
) -> None:
    """The older version's whole object is the front end's context: every field it wrote
    is read back, the roles and the token aside."""
    job = await read(db, await old_row(db, OLD_CONTEXT))
    assert JobContext.from_json(job.context) == JobContext(
        application_id=1234,
        interaction_at=1_700_000_000.5,
        message_id=5678,
        locale="de",
        guild_locale="fr",
        upload_limit=26_214_400,
        source_link="https://discord.com/channels/1/2/3",
    )


async def test_an_older_row_is_answered_where_it_was_asked(db: Database) -> None:
    """The reply target of an older version's job names its interaction, its reply and
    its languages, with the token that row kept."""
    job = await read(db, await old_row(db, OLD_CONTEXT))
    target = ReplyTarget.for_job(
        JobContext.from_json(job.context),
        job.reply_token,
        channel_id=job.channel_id,
        member_id=job.member_id,
    )
    assert (target.application_id, target.message_id, target.token) == (
        1234,
        5678,
        "an-older-interaction-token",
    )
    assert (target.member_language, target.channel_language) == ("de", "fr")


def test_the_front_ends_context_reads_back_what_it_wrote() -> None:
    context = JobContext(
        application_id=1,
        interaction_at=1_700_000_000.25,
        message_id=2,
        locale="pt-BR",
        guild_locale="ja",
        upload_limit=10_000_000,
        source_link="https://discord.com/channels/4/5/6",
    )
    assert JobContext.from_json(context.to_json()) == context


def test_the_front_ends_context_names_no_role_and_no_token() -> None:
    """Roles are the queue's, the token a credential kept apart: neither is written."""
    written = json.loads(ReplyTarget(7, "a-token", 1.0, 2, 3).job_context())
    assert not {"roles", "token"} & set(written)
