"""Every hot statement reads through an index, on both engines, with a year of history.

The statements are those listed in a ``HOT_STATEMENTS`` tuple by any module under
``bot`` (listing a statement there is what covers it). Each engine gets one database for
the whole module, seeded with 100,000 ledger entries and 100,000 finished jobs over 365
days (tests/support/seed), and a statement fails when its plan scans a table that grows
with history.
"""

from __future__ import annotations

import importlib
import pkgutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

import bot
from bot.db import Database, Engine, HotStatement, PostgresDatabase, open_database
from tests.support.databases import ENGINES, PG_URL, require_postgres
from tests.support.plans import table_scans
from tests.support.seed import History, seed_jobs, seed_ledger

pytestmark = pytest.mark.asyncio(loop_scope="module")

SEEDED = History(entries=100_000, members=2_000, days=365, jobs=100_000)
SMALL = History(entries=5_000, members=500, days=365, jobs=5_000, grants=200, audit_rows=200)
# Tables whose size grows with the history, not with the number of guilds or members.
GROWING = frozenset(
    {
        "ledger_entries",
        "grants",
        "audit_log",
        "budget_alerts",
        "guild_period_usage",
        "jobs",  # finished jobs stay JOB_RETENTION_DAYS (job_inputs only while unfinished)
        "compare_crops",
        "onemin_calls",
    }
)
# Partial indexes whose rows are few by design: reading all of one is bounded (the
# reservations in flight; the jobs not finished, by status: migration 0010).
BOUNDED = frozenset({"ledger_pending", "jobs_intake", "jobs_queued", "jobs_running", "jobs_owned"})


def hot_statements() -> list[HotStatement]:
    """Every ``HOT_STATEMENTS`` entry of every module under ``bot``."""
    found: dict[tuple[str, str], HotStatement] = {}
    for module in pkgutil.walk_packages(bot.__path__, "bot."):
        listed = getattr(importlib.import_module(module.name), "HOT_STATEMENTS", ())
        for statement in listed:
            found[(module.name, statement.name)] = statement
    return [found[key] for key in sorted(found)]


STATEMENTS = hot_statements()


async def open_seeded(engine: Engine, history: History, tmp: Path) -> AsyncIterator[Database]:
    """A database of ``engine`` seeded with ``history`` (dropped afterwards)."""
    if engine == "sqlite":
        db = await open_database(f"sqlite:///{tmp / 'year.db'}")
        try:
            await seed_ledger(db, history)
            await seed_jobs(db, history)
            yield db
        finally:
            await db.close()
        return
    await require_postgres()
    pg = await open_database(PG_URL, schema=f"plans_{uuid.uuid4().hex[:12]}")
    assert isinstance(pg, PostgresDatabase)
    try:
        await seed_ledger(pg, history)
        await seed_jobs(pg, history)
        yield pg
    finally:
        await pg.drop_schema()
        await pg.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=ENGINES)
async def seeded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Database]:
    """A database of each engine with a year of history, for the whole module.

    One test uses it (the plans of every statement, on each engine), so that under
    pytest-xdist the year is seeded once per engine, not once per worker.
    """
    tmp = tmp_path_factory.mktemp("plans")
    async for db in open_seeded(request.param, SEEDED, tmp):
        yield db


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=ENGINES)
async def small(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Database]:
    """The same history, a twentieth of the size: for checking the checker itself."""
    tmp = tmp_path_factory.mktemp("small")
    async for db in open_seeded(request.param, SMALL, tmp):
        yield db


async def test_the_ledger_lists_its_hot_statements() -> None:
    """Reservations, settlement, /credits, /quota show and /usage are all listed."""
    names = {s.name for s in STATEMENTS}
    for expected in (
        "reserve: member counter and rollups",
        "settle: entries",
        "/credits: pending",
        "/quota show: guild",
        "reserve: total budget",
        "/usage lifetime: members",
        "/usage: days",
        "budget alert claim",
    ):
        assert expected in names


async def test_every_hot_statement_reads_through_an_index_after_a_year(
    seeded: Database,
) -> None:
    """With a year of history (100,000 finished jobs and 100,000 ledger entries, their
    rollups, grants and audit rows), no listed statement's plan reads a table that grows
    with history from end to end. Every offending statement is named."""
    jobs = await seeded.fetchone(
        "SELECT COUNT(*), MIN(created_at) FROM jobs"
        " WHERE status IN ('delivered', 'failed', 'cancelled')"
    )
    entries = await seeded.fetchone("SELECT COUNT(*), MIN(created_at) FROM ledger_entries")
    days = await seeded.fetchone("SELECT COUNT(*) FROM guild_period_usage WHERE period = 'daily'")
    assert jobs is not None and jobs[0] == SEEDED.jobs and str(jobs[1]) < "2025-03-20"
    assert entries is not None and entries[0] == SEEDED.entries and entries[1] < "2025-03-20"
    assert days is not None and days[0] == SEEDED.days
    scans = []
    for statement in STATEMENTS:
        scans += await table_scans(seeded, seeded.engine, statement, GROWING, BOUNDED)
    assert [str(s) for s in scans] == []


async def test_the_checker_reports_a_statement_that_scans_the_ledger(small: Database) -> None:
    """A read of the entries by an unindexed column is reported as a scan."""
    statement = HotStatement(
        "unindexed", "SELECT COUNT(*) FROM ledger_entries WHERE reason = ?", ("restart",)
    )
    scans = await table_scans(small, small.engine, statement, GROWING, BOUNDED)
    assert [s.table for s in scans] == ["ledger_entries"]


async def test_without_its_indexes_the_pending_credits_read_scans_the_ledger(
    small: Database,
) -> None:
    """Dropping the indexes /credits reads through (in a transaction rolled back) makes
    the checker report it: the plan test depends on the indexes, not on luck."""
    (pending,) = [s for s in STATEMENTS if s.name == "/credits: pending"]

    class Undo(Exception):
        pass

    with pytest.raises(Undo):
        async with small.transaction() as tx:
            for index in ("ledger_pending", "ledger_member", "ledger_guild"):
                await tx.execute(f"DROP INDEX {index}")
            scans = await table_scans(tx, small.engine, pending, GROWING, BOUNDED)
            assert [s.table for s in scans] == ["ledger_entries"]
            raise Undo


async def test_without_the_partial_index_of_waiting_jobs_the_claim_scans_the_jobs(
    small: Database,
) -> None:
    """Dropping ``jobs_queued`` (in a transaction rolled back) makes the claim's read of
    the next waiting job scan every job ever run: the index is what keeps it cheap."""
    (claim,) = [s for s in STATEMENTS if s.name == "next waiting job (claim)"]

    class Undo(Exception):
        pass

    with pytest.raises(Undo):
        async with small.transaction() as tx:
            await tx.execute("DROP INDEX jobs_queued")
            scans = await table_scans(tx, small.engine, claim, GROWING, BOUNDED)
            assert [s.table for s in scans] == ["jobs"]
            raise Undo
