"""Every statement on ``jobs``, ``job_inputs`` and ``compare_crops``, in one place.

The rest of the queue asks the store; nothing else writes SQL on these tables, so this
file shows everything that touches them. :class:`JobStore` holds the statements in
groups, one for each part of the queue that runs them (``store.intake``,
``store.claims``, ``store.runs``, ``store.endings``, ``store.housekeeping``,
``store.views``); writes are verbs (``mark_failed``, ``store_input``), reads that count
are ``count_*``. Statements that run per job, per poll or per
command are listed in :data:`HOT_STATEMENTS` with example parameters: a test plans each
one on both engines against a year of history and fails when one scans a table that
grows with it. A new hot statement is covered by adding it there.

Statements that take a :class:`~bot.db.Transaction` run inside the caller's transaction
(a claim, a settlement); the others run on their own.

Indexes (migration 0010): one partial index per unfinished status, written with the
very condition the statements use (SQLite uses a partial index only when the query
repeats its condition: ``status IN (...)`` is not implied by ``status = ...``), so their
size is the number of unfinished jobs, whatever the history; ``jobs_member`` for a
member's jobs; ``jobs_finished`` for the retention purge.

The trail. Each stage change appends one JSON line ``[stage, unix time, process,
detail]`` to ``jobs.trail`` in the statement that makes the change, so the trail costs
no statement of its own (:func:`trail_line`, :func:`parse_trail`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from bot.db import Database, HotStatement, Row, Transaction, ts, utc_now
from bot.failures import FailureKind
from bot.images import compare
from bot.jobs.model import (
    CANCELLABLE_STAGES,
    SLOT_STAGES,
    Job,
    JobStatus,
    PreparedInfo,
    Stage,
)

# -- the statements -------------------------------------------------------------------
# Unfinished jobs, by status. Each reads one partial index (see the module docstring).

MEMBER_UNFINISHED = (
    "SELECT COUNT(*) AS n FROM jobs WHERE guild_id = ? AND member_id = ?"
    " AND status IN ('intake', 'queued', 'running')"
)
LIVE_LEASES = "SELECT COUNT(*) AS n FROM jobs WHERE status = 'running' AND lease_expires > ?"
NEXT_WAITING = "SELECT * FROM jobs WHERE status = 'queued' ORDER BY created_at, id LIMIT 1"
NEXT_LAPSED = (
    "SELECT * FROM jobs WHERE status = 'running' AND lease_expires <= ?"
    " ORDER BY lease_expires LIMIT 1"
)
NEXT_LAPSED_INTAKE = (
    "SELECT * FROM jobs WHERE status = 'intake' AND lease_expires <= ?"
    " ORDER BY lease_expires LIMIT 1"
)
# One cheap look before a claim's transaction: is there anything to claim at all? And
# when does the next lease of another process run out (a process that dies says nothing:
# its jobs are taken over when their leases end, not at the next fallback look)?
ANYTHING_TO_CLAIM = (
    "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE status = 'queued' LIMIT 1) q)"
    " + (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE status = 'running'"
    " AND lease_expires <= :now LIMIT 1) r) AS jobs,"
    " (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE status = 'intake'"
    " AND lease_expires <= :now LIMIT 1) i) AS intakes,"
    " (SELECT MIN(lease_expires) FROM jobs WHERE status = 'running'"
    " AND lease_expires > :now AND lease_owner <> :me) AS job_lapses,"
    " (SELECT MIN(lease_expires) FROM jobs WHERE status = 'intake'"
    " AND lease_expires > :now AND lease_owner <> :me) AS intake_lapses"
)
# A job claimed in a slot's stage (taken over, handed back, recovered) holds no slot: it
# waits for one like any other (its stored asset or record says where it continues), so
# it is not counted among the slots taken (SLOTS_TAKEN) while it waits.
CLAIM = (
    "UPDATE jobs SET status = 'running', lease_owner = ?, lease_expires = ?,"
    " claims = claims + 1, resume_notice = 0, started_at = COALESCE(started_at, ?),"
    f" stage = CASE WHEN stage IN ('{SLOT_STAGES[0]}', '{SLOT_STAGES[1]}') THEN 'queued'"
    " ELSE stage END, trail = trail || ? WHERE id = ?"
    " AND (status = 'queued' OR (status = 'running' AND lease_expires <= ?))"
)
CLAIM_INTAKE = (
    "UPDATE jobs SET lease_owner = ?, lease_expires = ?, claims = claims + 1, resume_notice = 0,"
    " trail = trail || ? WHERE id = ? AND status = 'intake' AND lease_expires <= ?"
)
SLOTS_TAKEN = (
    "SELECT COUNT(*) AS n FROM jobs WHERE status = 'running'"
    f" AND stage IN ('{SLOT_STAGES[0]}', '{SLOT_STAGES[1]}') AND lease_expires > ? AND id <> ?"
)
# Fencing: every write that moves a job forward names the claim that made it (``claims``
# counts the job's claims, intakes included), so the write of a worker that lost its
# lease, and was taken over (by another process or by this one), changes nothing. A
# forward write also extends the lease: it proves this process still holds the job.
ADVANCE = (
    "UPDATE jobs SET stage = ?, asset_path = COALESCE(?, asset_path),"
    " result_url = COALESCE(?, result_url), record_id = COALESCE(?, record_id),"
    " lease_expires = ?, trail = trail || ?"
    " WHERE id = ? AND status = 'running' AND lease_owner = ? AND claims = ?"
)
# Renewal extends only the leases that have not lapsed: a lapsed one may have been taken
# over, and its holder must confirm it (CONFIRM_LEASE) before it touches the job again.
RENEW = (
    "UPDATE jobs SET lease_expires = ? WHERE status IN ('intake', 'running') AND lease_owner = ?"
    " AND lease_expires > ?"
)
CONFIRM_LEASE = (
    "UPDATE jobs SET lease_expires = ? WHERE id = ? AND status IN ('intake', 'running')"
    " AND lease_owner = ? AND claims = ?"
)
# What a paid call produced, kept with the job for whoever holds it now, when the worker
# that made the call lost the job before it could record it (its fenced write failed).
SALVAGE = (
    "UPDATE jobs SET asset_path = COALESCE(asset_path, ?), result_url = COALESCE(result_url, ?),"
    " record_id = COALESCE(record_id, ?) WHERE id = ? AND status IN ('queued', 'running')"
)
# What the job's calls produced so far, read again right before the next paid call (a
# worker that lost the job may have salvaged its result since this claim read the row).
PRODUCTS = "SELECT asset_path, result_url, record_id FROM jobs WHERE id = ?"
HAND_BACK = (
    "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires = NULL,"
    " trail = trail || ? WHERE id = ? AND status = 'running' AND lease_owner = ? AND claims = ?"
)
OWNED = "SELECT * FROM jobs WHERE status IN ('intake', 'running') AND lease_owner = ?"
# Hand this process's jobs back (shutdown): running ones wait in line again, intakes are
# left with a lapsed lease for whoever takes them in next; both tell their member.
RELEASE_OWNED = (
    "UPDATE jobs SET status = CASE WHEN status = 'running' THEN 'queued' ELSE status END,"
    " lease_owner = NULL, lease_expires = CASE WHEN status = 'running' THEN NULL ELSE 0 END,"
    " resume_notice = 1, trail = trail || ?"
    " WHERE status IN ('intake', 'running') AND lease_owner = ?"
)
RECOVER_ALL = (
    "UPDATE jobs SET status = CASE WHEN status = 'running' THEN 'queued' ELSE status END,"
    " lease_owner = NULL, lease_expires = CASE WHEN status = 'running' THEN NULL ELSE 0 END,"
    " resume_notice = 1, trail = trail || ? WHERE status IN ('intake', 'running')"
)
RECOVER_INSTANCE = RECOVER_ALL + " AND lease_owner LIKE ?"
WAITING_ROWS = "SELECT * FROM jobs WHERE status = 'queued' ORDER BY created_at, id"
INTAKE_ROWS = "SELECT * FROM jobs WHERE status = 'intake' ORDER BY created_at, id"
HAS_INPUT = "SELECT COUNT(*) AS n FROM job_inputs WHERE job_id = ?"
WAITING_IDS = "SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, id"
WAITING_COUNT = "SELECT COUNT(*) AS n FROM jobs WHERE status = 'queued'"
UNFINISHED_COUNT = (
    "SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'intake')"
    " + (SELECT COUNT(*) FROM jobs WHERE status = 'queued')"
    " + (SELECT COUNT(*) FROM jobs WHERE status = 'running') AS n"
)
SHOWN_STATE = "SELECT status, lease_owner FROM jobs WHERE id = ?"
# One job, by primary key.
INSERT_JOB = (
    "INSERT INTO jobs (id, guild_id, channel_id, member_id, reservation_id, status, stage,"
    " output_format, source_name, source_url, source_size, context, reply_token,"
    " lease_owner, lease_expires, created_at, trail)"
    " VALUES (?, ?, ?, ?, ?, 'intake', 'receiving', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
STORE_INPUT = (
    "UPDATE jobs SET status = 'queued', stage = 'queued', source_format = ?,"
    " input_format = ?, input_bytes = ?, input_width = ?, input_height = ?,"
    " original_width = ?, original_height = ?, notes = ?, source_url = NULL,"
    " lease_owner = NULL, lease_expires = NULL, trail = trail || ?"
    " WHERE id = ? AND status = 'intake' AND lease_owner = ? AND claims = ?"
)
INSERT_INPUT = "INSERT INTO job_inputs (job_id, data) VALUES (?, ?)"
READ_INPUT = "SELECT data FROM job_inputs WHERE job_id = ?"
DELETE_INPUT = "DELETE FROM job_inputs WHERE job_id = ?"
MARK_DELIVERED = (
    "UPDATE jobs SET status = 'delivered', stage = 'done', output_width = ?,"
    " output_height = ?, output_bytes = ?, message_id = ?, finished_at = ?,"
    " lease_owner = NULL, lease_expires = NULL, reply_token = NULL, source_url = NULL,"
    " trail = trail || ? WHERE id = ? AND status = 'running' AND lease_owner = ? AND claims = ?"
)
MARK_FAILED = (
    "UPDATE jobs SET status = 'failed', error_kind = ?, finished_at = ?,"
    " lease_owner = NULL, lease_expires = NULL, reply_token = NULL, source_url = NULL,"
    " trail = trail || ? WHERE id = ? AND status IN ('intake', 'queued', 'running')"
)
MARK_FAILED_OWNED = MARK_FAILED + " AND lease_owner = ? AND claims = ?"
READ_FOR_CANCEL = "SELECT guild_id, member_id, status, reservation_id FROM jobs WHERE id = ?"
MARK_CANCELLED = (
    "UPDATE jobs SET status = 'cancelled', error_kind = ?, finished_at = ?,"
    " lease_owner = NULL, lease_expires = NULL, reply_token = NULL, source_url = NULL,"
    " trail = trail || ? WHERE id = ? AND status IN ('intake', 'queued', 'running')"
    f" AND stage IN ('{CANCELLABLE_STAGES[0]}', '{CANCELLABLE_STAGES[1]}',"
    f" '{CANCELLABLE_STAGES[2]}')"
)
# Discord refused the job's interaction token: every process answers through the channel.
FORGET_TOKEN = "UPDATE jobs SET reply_token = NULL WHERE id = ? AND reply_token IS NOT NULL"
# A job by the id shown in a result's footer (its first characters) or whole: a range
# of the primary key (ids are lower-case hex).
JOBS_BY_PREFIX = "SELECT * FROM jobs WHERE id >= ? AND id < ? ORDER BY id LIMIT 2"
INSERT_CROPS = (
    "INSERT INTO compare_crops (job_id, input_crop, result_crop, box, created_at)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (job_id) DO NOTHING"
)
READ_CROPS = "SELECT input_crop, result_crop, box FROM compare_crops WHERE job_id = ?"
# Housekeeping, in small batches (each its own short transaction), oldest first.
PURGE_FINISHED = (
    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE finished_at < ?"
    " ORDER BY finished_at LIMIT ?)"
)
PURGE_CROPS = (
    "DELETE FROM compare_crops WHERE job_id IN (SELECT job_id FROM compare_crops"
    " WHERE created_at < ? ORDER BY created_at LIMIT ?)"
)


_NOW = 1_700_000_000.0
_ID = "0" * 32
HOT_STATEMENTS: tuple[HotStatement, ...] = (
    HotStatement("member's unfinished jobs (admission, /credits)", MEMBER_UNFINISHED, (1, 2)),
    HotStatement("live leases (claim)", LIVE_LEASES, (_NOW,)),
    HotStatement("next waiting job (claim)", NEXT_WAITING, ()),
    HotStatement("next lapsed job (claim)", NEXT_LAPSED, (_NOW,)),
    HotStatement("next lapsed intake (claim)", NEXT_LAPSED_INTAKE, (_NOW,)),
    HotStatement("anything to claim (idle poll)", ANYTHING_TO_CLAIM, {"now": _NOW, "me": "o"}),
    HotStatement("claim", CLAIM, ("o", _NOW, "t", "l", _ID, _NOW)),
    HotStatement("claim an intake", CLAIM_INTAKE, ("o", _NOW, "l", _ID, _NOW)),
    HotStatement("upscale slots taken", SLOTS_TAKEN, (_NOW, _ID)),
    HotStatement("stage change", ADVANCE, ("uploading", None, None, None, _NOW, "l", _ID, "o", 1)),
    HotStatement("lease renewal", RENEW, (_NOW, "o", _NOW)),
    HotStatement("confirm a lapsed lease", CONFIRM_LEASE, (_NOW, _ID, "o", 1)),
    HotStatement("salvage a paid call's product", SALVAGE, ("a", "u", "r", _ID)),
    HotStatement("products of a job's calls", PRODUCTS, (_ID,)),
    HotStatement("hand back", HAND_BACK, ("l", _ID, "o", 1)),
    HotStatement("jobs owned (shutdown)", OWNED, ("o",)),
    HotStatement("release owned (shutdown)", RELEASE_OWNED, ("l", "o")),
    HotStatement("recover every job (SQLite start)", RECOVER_ALL, ("l",)),
    HotStatement("recover this instance's jobs", RECOVER_INSTANCE, ("l", "host/0:%")),
    HotStatement("waiting jobs (recovery)", WAITING_ROWS, ()),
    HotStatement("intakes (recovery)", INTAKE_ROWS, ()),
    HotStatement("input stored", HAS_INPUT, (_ID,)),
    HotStatement("places in line", WAITING_IDS, ()),
    HotStatement("jobs waiting (queue depth)", WAITING_COUNT, ()),
    HotStatement("jobs unfinished", UNFINISHED_COUNT, ()),
    HotStatement("may this process show a job", SHOWN_STATE, (_ID,)),
    HotStatement(
        "record a job (intake)",
        INSERT_JOB,
        (_ID, 1, 2, 3, "r", "png", "a.png", "u", 1, "{}", "t", "o", _NOW, "c", "l"),
    ),
    HotStatement(
        "image taken in",
        STORE_INPUT,
        ("png", "png", 1, 1, 1, 1, 1, "[]", "l", _ID, "o", 1),
    ),
    HotStatement("read an input", READ_INPUT, (_ID,)),
    HotStatement("delete an input", DELETE_INPUT, (_ID,)),
    HotStatement("delivered", MARK_DELIVERED, (1, 1, 1, 1, "f", "l", _ID, "o", 1)),
    HotStatement("failed", MARK_FAILED, ("bug", "f", "l", _ID)),
    HotStatement("failed (owned)", MARK_FAILED_OWNED, ("bug", "f", "l", _ID, "o", 1)),
    HotStatement("cancel: read", READ_FOR_CANCEL, (_ID,)),
    HotStatement("cancelled", MARK_CANCELLED, ("cancelled", "f", "l", _ID)),
    HotStatement("forget a refused token", FORGET_TOKEN, (_ID,)),
    HotStatement("a job by its footer id", JOBS_BY_PREFIX, ("0000abcd", "0000abce")),
    HotStatement("read Compare crops", READ_CROPS, (_ID,)),
    HotStatement("purge finished jobs", PURGE_FINISHED, ("2020-01-01 00:00:00.000000", 500)),
    HotStatement("purge Compare crops", PURGE_CROPS, ("2020-01-01 00:00:00.000000", 500)),
)


# -- the trail ------------------------------------------------------------------------


def trail_line(stage: str, process: str, detail: str = "", at: float | None = None) -> str:
    """One line of a job's trail: what happened, when, where (appended to ``trail``)."""
    return json.dumps([stage, round(time.time() if at is None else at, 3), process, detail]) + "\n"


@dataclass(frozen=True, slots=True)
class ClaimLook:
    """What a look before a claim saw."""

    jobs: bool  # a job waits in line, or a running job's lease ran out
    intakes: bool  # an intake's lease ran out
    next_lapse: float | None  # when another process's next lease runs out (Unix seconds)


@dataclass(frozen=True, slots=True)
class TrailEvent:
    stage: str
    at: float  # Unix seconds
    process: str
    detail: str


def parse_trail(text: str | None) -> list[TrailEvent]:
    """The events of a job's trail, oldest first (lines that do not parse are skipped)."""
    events: list[TrailEvent] = []
    for line in (text or "").splitlines():
        try:
            stage, at, process, detail = json.loads(line)
            events.append(TrailEvent(str(stage), float(at), str(process), str(detail)))
        except (ValueError, TypeError):
            continue
    return events


# -- the store ------------------------------------------------------------------------


def _n(row: Row | None) -> int:
    return int(row["n"]) if row is not None else 0


class _Statements:
    """What every group of statements works with: the database, and this process's name
    (the lease owner it writes, and how the trail names it)."""

    def __init__(self, db: Database, owner: str) -> None:
        self.db = db
        self.owner = owner

    def _trail(self, stage: str, detail: str = "") -> str:
        return trail_line(stage, self.owner, detail)


class IntakeStatements(_Statements):
    """A job recorded at the acknowledgement, and its input stored (:mod:`bot.jobs.intake`)."""

    async def count_member_unfinished(
        self, q: Transaction | Database, guild_id: int, member_id: int
    ) -> int:
        return _n(await q.fetchone(MEMBER_UNFINISHED, (guild_id, member_id)))

    async def insert_job(self, tx: Transaction, job: Job, lease_until: float) -> None:
        await tx.execute(
            INSERT_JOB,
            (
                job.id,
                job.guild_id,
                job.channel_id,
                job.member_id,
                job.reservation_id,
                job.output_format,
                job.source.filename,
                job.source.url,
                job.source.declared_size,
                job.stored_context(),
                job.reply_token,
                self.owner,
                lease_until,
                ts(utc_now()),
                self._trail(Stage.RECEIVING),
            ),
        )

    async def store_input(
        self, tx: Transaction, job: Job, prepared: PreparedInfo, data: bytes
    ) -> bool:
        """Store the prepared input and put the job in line; False if no longer ours."""
        changed = await tx.execute(
            STORE_INPUT,
            (
                prepared.source_format,
                prepared.format,
                prepared.input_bytes,
                prepared.size[0],
                prepared.size[1],
                prepared.original_size[0],
                prepared.original_size[1],
                json.dumps(list(prepared.notes)),
                self._trail(Stage.QUEUED),
                job.id,
                self.owner,
                job.claims,
            ),
        )
        if not changed:
            return False
        await tx.execute(INSERT_INPUT, (job.id, data))
        return True


class ClaimStatements(_Statements):
    """What the dispatcher claims: waiting jobs, jobs and intakes whose lease ran out
    (:mod:`bot.jobs.dispatcher`)."""

    async def anything_to_claim(self, now: float) -> ClaimLook:
        """Is a claim worth its transaction, and when is the next one due?"""
        row = await self.db.fetchone(ANYTHING_TO_CLAIM, {"now": now, "me": self.owner})
        if row is None:
            return ClaimLook(False, False, None)
        lapses = [float(v) for v in (row["job_lapses"], row["intake_lapses"]) if v is not None]
        return ClaimLook(int(row["jobs"]) > 0, int(row["intakes"]) > 0, min(lapses, default=None))

    async def count_live_leases(self, tx: Transaction, now: float) -> int:
        return _n(await tx.fetchone(LIVE_LEASES, (now,)))

    async def next_claimable(self, tx: Transaction, now: float) -> Row | None:
        """The job to claim next: the oldest of a lapsed running job and the head of
        the line (a lapsed job was claimed before, so it usually is the older)."""
        lapsed = await tx.fetchone(NEXT_LAPSED, (now,))
        waiting = await tx.fetchone(NEXT_WAITING)
        if lapsed is None or (
            waiting is not None
            and (waiting["created_at"], waiting["id"]) < (lapsed["created_at"], lapsed["id"])
        ):
            return waiting
        return lapsed

    async def claim(self, tx: Transaction, job_id: str, now: float, lease: float) -> bool:
        """Take a waiting or lapsed job. Guarded: a Cancel may have committed since it
        was read (on PostgreSQL the claim lock does not cover it)."""
        changed = await tx.execute(
            CLAIM,
            (self.owner, now + lease, ts(utc_now()), self._trail("claimed"), job_id, now),
        )
        return bool(changed)

    async def next_lapsed_intake(self, tx: Transaction, now: float) -> Row | None:
        return await tx.fetchone(NEXT_LAPSED_INTAKE, (now,))

    async def claim_intake(self, tx: Transaction, job_id: str, now: float, lease: float) -> bool:
        changed = await tx.execute(
            CLAIM_INTAKE, (self.owner, now + lease, self._trail("intake resumed"), job_id, now)
        )
        return bool(changed)


class RunStatements(_Statements):
    """A job this process holds (:mod:`bot.jobs.pipeline`, :mod:`bot.jobs.leases`): its
    slot, its input, every write that moves it forward (fenced by its claim), its
    lease, what its paid calls produced, and handing it back."""

    async def count_slots_taken(self, tx: Transaction, job_id: str, now: float) -> int:
        return _n(await tx.fetchone(SLOTS_TAKEN, (now, job_id)))

    async def read_input(self, job_id: str) -> bytes | None:
        row = await self.db.fetchone(READ_INPUT, (job_id,))
        return None if row is None else bytes(row["data"])

    async def advance(
        self,
        job_id: str,
        claim: int,
        stage: Stage,
        *,
        lease_until: float,
        tx: Transaction | None = None,
        asset_path: str | None = None,
        result_url: str | None = None,
        record_id: str | None = None,
    ) -> bool:
        """Record the job's new stage (and what it produced), and extend its lease to
        ``lease_until``, if this process still holds the job by ``claim``."""
        params = (
            stage.value,
            asset_path,
            result_url,
            record_id,
            lease_until,
            self._trail(stage),
            job_id,
            self.owner,
            claim,
        )
        if tx is not None:
            return bool(await tx.execute(ADVANCE, params))
        return bool(await self.db.write(ADVANCE, params, urgent=True))

    async def renew(self, lease_until: float, now: float) -> int:
        """Extend every lease of this process that has not lapsed by ``now``."""
        return await self.db.write(RENEW, (lease_until, self.owner, now))

    async def confirm_lease(
        self, job_id: str, claim: int, lease_until: float, *, tx: Transaction | None = None
    ) -> bool:
        """Extend one job's lease if this process still holds it by ``claim`` (its lease
        lapsed, but nobody took it over); False when it was taken over or ended."""
        params = (lease_until, job_id, self.owner, claim)
        if tx is not None:
            return bool(await tx.execute(CONFIRM_LEASE, params))
        return bool(await self.db.write(CONFIRM_LEASE, params, urgent=True))

    async def salvage(
        self,
        job_id: str,
        *,
        asset_path: str | None = None,
        result_url: str | None = None,
        record_id: str | None = None,
    ) -> bool:
        """Keep what a paid call produced with the job, whoever holds it now."""
        params = (asset_path, result_url, record_id, job_id)
        return bool(await self.db.write(SALVAGE, params, urgent=True))

    async def products(self, q: Transaction | Database, job_id: str) -> Row | None:
        """The job's stored asset, result URL and record (see :data:`PRODUCTS`)."""
        return await q.fetchone(PRODUCTS, (job_id,))

    async def hand_back(self, job_id: str, claim: int, why: str) -> bool:
        params = (self._trail(Stage.QUEUED, why), job_id, self.owner, claim)
        return bool(await self.db.write(HAND_BACK, params))

    async def release_owned(self) -> list[Job]:
        """Hand this process's jobs back (their progress kept); returns them."""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(OWNED, (self.owner,))
            await tx.execute(RELEASE_OWNED, (self._trail("released", "shutdown"), self.owner))
        return [Job.from_row(row) for row in rows]


class EndingStatements(_Statements):
    """How a job ends (:mod:`bot.jobs.settlement`): its row marked delivered, failed or
    cancelled (the token erased with it), its input removed, its Compare crops kept."""

    async def mark_delivered(
        self,
        tx: Transaction,
        job_id: str,
        claim: int,
        *,
        size: tuple[int, int] | None,
        byte_count: int | None,
        message_id: int | None,
    ) -> bool:
        changed = await tx.execute(
            MARK_DELIVERED,
            (
                size[0] if size else None,
                size[1] if size else None,
                byte_count,
                message_id,
                ts(utc_now()),
                self._trail(JobStatus.DELIVERED, str(message_id or "")),
                job_id,
                self.owner,
                claim,
            ),
        )
        return bool(changed)

    async def mark_failed(
        self, tx: Transaction, job_id: str, kind: FailureKind, *, claim: int | None
    ) -> bool:
        """Record the failure: of the job this process holds by ``claim``, or (None) of
        the job whoever holds it."""
        params: tuple[Any, ...] = (
            kind.value,
            ts(utc_now()),
            self._trail(JobStatus.FAILED, kind.value),
            job_id,
        )
        if claim is not None:
            return bool(await tx.execute(MARK_FAILED_OWNED, (*params, self.owner, claim)))
        return bool(await tx.execute(MARK_FAILED, params))

    async def read_for_cancel(self, tx: Transaction, job_id: str) -> Row | None:
        return await tx.fetchone(READ_FOR_CANCEL, (job_id,))

    async def mark_cancelled(self, tx: Transaction, job_id: str, actor_id: int) -> bool:
        changed = await tx.execute(
            MARK_CANCELLED,
            (
                FailureKind.CANCELLED.value,
                ts(utc_now()),
                self._trail(JobStatus.CANCELLED, f"by {actor_id}"),
                job_id,
            ),
        )
        return bool(changed)

    async def delete_input(self, tx: Transaction, job_id: str) -> None:
        await tx.execute(DELETE_INPUT, (job_id,))

    async def save_crops(self, tx: Transaction, job_id: str, crops: compare.CompareCrops) -> None:
        input_crop, result_crop, box = crops.stored()
        await tx.execute(INSERT_CROPS, (job_id, input_crop, result_crop, box, ts(utc_now())))


class HousekeepingStatements(_Statements):
    """Start-up recovery, the unfinished jobs read to refund what cannot be finished,
    and retention, in small batches (:mod:`bot.jobs.recovery`)."""

    async def put_back_cut_off(self, instance: str | None) -> None:
        """Put jobs cut off by a restart back: running ones in line, intakes lapsed.

        ``instance`` None: every job (one process on SQLite); else those of processes
        with that instance name (a fleet; the others are taken over when their leases
        run out).
        """
        line = self._trail("recovered", "restart")
        if instance is None:
            await self.db.write(RECOVER_ALL, (line,))
        else:
            await self.db.write(RECOVER_INSTANCE, (line, instance + ":%"))

    async def waiting_rows(self) -> list[Row]:
        return await self.db.fetchall(WAITING_ROWS)

    async def intake_rows(self) -> list[Row]:
        return await self.db.fetchall(INTAKE_ROWS)

    async def has_input(self, job_id: str) -> bool:
        return _n(await self.db.fetchone(HAS_INPUT, (job_id,))) > 0

    async def purge_finished(self, before: str, batch: int) -> int:
        return await self.db.write(PURGE_FINISHED, (before, batch))

    async def purge_crops(self, before: str, batch: int) -> int:
        return await self.db.write(PURGE_CROPS, (before, batch))


class ViewStatements(_Statements):
    """What is shown about jobs (:mod:`bot.jobs.queue`, :mod:`bot.jobs.positions`,
    :mod:`bot.jobs.trail`): the line, the counts, whether this process may show a job,
    Compare crops, a job by its footer id; and a token Discord refused, forgotten."""

    async def waiting_ids(self) -> list[str]:
        """The ids of the jobs waiting in line, first in line first."""
        return [row["id"] for row in await self.db.fetchall(WAITING_IDS)]

    async def count_waiting(self) -> int:
        return _n(await self.db.fetchone(WAITING_COUNT))

    async def count_unfinished(self) -> int:
        return _n(await self.db.fetchone(UNFINISHED_COUNT))

    async def shown_state(self, job_id: str) -> tuple[JobStatus, str | None] | None:
        row = await self.db.fetchone(SHOWN_STATE, (job_id,))
        return None if row is None else (JobStatus(row["status"]), row["lease_owner"])

    async def read_crops(self, job_id: str) -> compare.CompareCrops | None:
        row = await self.db.fetchone(READ_CROPS, (job_id,))
        if row is None:
            return None
        return compare.CompareCrops.from_stored(
            bytes(row["input_crop"]), bytes(row["result_crop"]), row["box"]
        )

    async def find_by_shown_id(self, shown_id: str) -> list[Row]:
        """Jobs whose id starts with ``shown_id`` (lower-case hex; at most two read:
        more than one means the prefix is ambiguous)."""
        prefix = shown_id.strip().lower()
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            return []
        return await self.db.fetchall(JOBS_BY_PREFIX, (prefix, _successor(prefix)))

    async def forget_token(self, job_id: str) -> None:
        await self.db.write(FORGET_TOKEN, (job_id,))


class JobStore:
    """The queue's tables, through named operations (one statement each, mostly), in
    groups by the part of the queue that runs them.

    Writes are verbs (``mark_failed``, ``store_input``...), reads that count are
    ``count_*``. ``owner`` is this process's lease owner name, and how the trail names it.
    """

    def __init__(self, db: Database, *, owner: str) -> None:
        self.owner = owner
        self.intake = IntakeStatements(db, owner)
        self.claims = ClaimStatements(db, owner)
        self.runs = RunStatements(db, owner)
        self.endings = EndingStatements(db, owner)
        self.housekeeping = HousekeepingStatements(db, owner)
        self.views = ViewStatements(db, owner)


def _successor(prefix: str) -> str:
    """The smallest string after every string that starts with ``prefix`` (hex)."""
    digits = "0123456789abcdef"
    chars = list(prefix)
    while chars:
        last = chars.pop()
        if last != "f":
            return "".join(chars) + digits[digits.index(last) + 1]
    return "g"  # every hex string sorts before it
