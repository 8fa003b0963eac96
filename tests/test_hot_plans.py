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


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=ENGINES)
async def seeded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Database]:
    """A database of each engine with a year of ledger history, for the whole module."""
    engine: Engine = request.param
    if engine == "sqlite":
        path: Path = tmp_path_factory.mktemp("plans") / "year.db"
        db = await open_database(f"sqlite:///{path}")
        await seed_ledger(db, SEEDED)
        await seed_jobs(db, SEEDED)
        yield db
        await db.close()
        return
    await require_postgres()
    pg = await open_database(PG_URL, schema=f"plans_{uuid.uuid4().hex[:12]}")
    assert isinstance(pg, PostgresDatabase)
    try:
        await seed_ledger(pg, SEEDED)
        await seed_jobs(pg, SEEDED)
        yield pg
    finally:
        await pg.drop_schema()
        await pg.close()


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


async def test_the_seed_holds_a_year_of_finished_jobs(seeded: Database) -> None:
    """The seeded jobs are as many as asked, finished, over the year."""
    row = await seeded.fetchone(
        "SELECT COUNT(*), MIN(created_at) FROM jobs"
        " WHERE status IN ('delivered', 'failed', 'cancelled')"
    )
    assert row is not None and row[0] == SEEDED.jobs
    assert str(row[1]) < "2025-03-20"


async def test_the_seed_is_a_year_of_history(seeded: Database) -> None:
    """The seeded database holds the entries and the rollups made from them."""
    row = await seeded.fetchone("SELECT COUNT(*), MIN(created_at) FROM ledger_entries")
    assert row is not None and row[0] == SEEDED.entries
    assert row[1] < "2025-03-20"
    days = await seeded.fetchone("SELECT COUNT(*) FROM guild_period_usage WHERE period = 'daily'")
    assert days is not None and days[0] == SEEDED.days


@pytest.mark.parametrize("statement", STATEMENTS, ids=lambda s: s.name)
async def test_hot_statement_reads_through_an_index(
    seeded: Database, statement: HotStatement
) -> None:
    """The statement's plan reads no table that grows with history from end to end."""
    scans = await table_scans(seeded, seeded.engine, statement, GROWING, BOUNDED)
    assert [str(s) for s in scans] == []


async def test_the_checker_reports_a_statement_that_scans_the_ledger(seeded: Database) -> None:
    """A read of the entries by an unindexed column is reported as a scan."""
    statement = HotStatement(
        "unindexed", "SELECT COUNT(*) FROM ledger_entries WHERE reason = ?", ("restart",)
    )
    scans = await table_scans(seeded, seeded.engine, statement, GROWING, BOUNDED)
    assert [s.table for s in scans] == ["ledger_entries"]


async def test_without_its_indexes_the_pending_credits_read_scans_the_ledger(
    seeded: Database,
) -> None:
    """Dropping the indexes /credits reads through (in a transaction rolled back) makes
    the checker report it: the plan test depends on the indexes, not on luck."""
    (pending,) = [s for s in STATEMENTS if s.name == "/credits: pending"]

    class Undo(Exception):
        pass

    with pytest.raises(Undo):
        async with seeded.transaction() as tx:
            for index in ("ledger_pending", "ledger_member", "ledger_guild"):
                await tx.execute(f"DROP INDEX {index}")
            scans = await table_scans(tx, seeded.engine, pending, GROWING, BOUNDED)
            assert [s.table for s in scans] == ["ledger_entries"]
            raise Undo


async def test_without_the_partial_index_of_waiting_jobs_the_claim_scans_the_jobs(
    seeded: Database,
) -> None:
    """Dropping ``jobs_queued`` (in a transaction rolled back) makes the claim's read of
    the next waiting job scan every job ever run: the index is what keeps it cheap."""
    (claim,) = [s for s in STATEMENTS if s.name == "next waiting job (claim)"]

    class Undo(Exception):
        pass

    with pytest.raises(Undo):
        async with seeded.transaction() as tx:
            await tx.execute("DROP INDEX jobs_queued")
            scans = await table_scans(tx, seeded.engine, claim, GROWING, BOUNDED)
            assert [s.table for s in scans] == ["jobs"]
            raise Undo
