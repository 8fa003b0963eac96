"""Copying a SQLite ledger into a fresh PostgreSQL schema (bot.app.copydb)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.app.copydb import CopyError, copy_database, main
from bot.db import Database, open_database
from bot.ledger import Ledger, Reservation
from tests.support.databases import PG_URL, drop_schema, require_postgres

G, H, ALICE, BOB, MOD = 1, 2, 11, 12, 99
ROLE = 501
NOON = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


def clock() -> datetime:
    return NOON


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    await require_postgres()
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    await drop_schema(name)


async def populate(db: Database) -> None:
    """A ledger with every kind of row: overrides, grants, resets, settlements, jobs."""
    ledger = Ledger(db, default_limit=5, default_period="daily", clock=clock)
    await ledger.set_default_limit(G, MOD, 8)
    await ledger.set_role_limit(G, MOD, ROLE, 12)
    await ledger.set_member_limit(G, MOD, BOB, 3)
    await ledger.set_server_budget(H, MOD, 40)
    await ledger.set_period(H, MOD, "weekly")
    await ledger.set_log_channel(G, MOD, 2**62)
    await ledger.grant(G, MOD, ALICE, 4)
    for member, guild in ((ALICE, G), (ALICE, G), (BOB, G), (ALICE, H)):
        outcome = await ledger.reserve(guild, member, (ROLE,), 1, job_id=f"job-{member}")
        assert isinstance(outcome, Reservation)
        await ledger.commit(outcome.id)
    refunded = await ledger.reserve(G, BOB, (), 1)
    assert isinstance(refunded, Reservation)
    await ledger.refund(refunded.id, "failed")
    await ledger.reserve(G, ALICE, (ROLE,), 2)  # left pending
    await ledger.reset_member(G, MOD, BOB)
    await ledger.claim_budget_alert(H, 80)
    await db.write(
        "INSERT INTO jobs (id, guild_id, channel_id, member_id, output_format, source_name,"
        " created_at) VALUES ('j1', 1, 2, 11, 'png', 'a.png', '2026-03-15 11:00:00.000000')"
    )


async def snapshot(db: Database) -> dict[str, Any]:
    """Everything a member or moderator can see, on any engine."""
    ledger = Ledger(db, default_limit=5, default_period="daily", clock=clock)
    return {
        "balances": [
            asdict(await ledger.balance(guild, member, (ROLE,)))
            for guild in (G, H)
            for member in (ALICE, BOB)
        ],
        "settings": [asdict(await ledger.guild_settings(guild)) for guild in (G, H)],
        "audit": [asdict(e) for guild in (G, H) for e in await ledger.audit_log(guild)],
        "usage": [asdict(await ledger.usage(guild)) for guild in (G, H)],
        "jobs": [tuple(r) for r in await db.fetchall("SELECT * FROM jobs ORDER BY id")],
        "alerts": [
            tuple(r) for r in await db.fetchall("SELECT * FROM budget_alerts ORDER BY guild_id")
        ],
    }


async def test_copy_keeps_every_balance_override_and_audit_row(tmp_path: Path, schema: str) -> None:
    """After the copy, PostgreSQL shows the same balances, settings, audit log, usage and jobs."""
    src_url = f"sqlite:///{tmp_path / 'bot.db'}"
    async with await open_database(src_url) as src:
        await populate(src)
        before = await snapshot(src)
    copied = await copy_database(src_url, PG_URL, dst_schema=schema)
    assert copied["ledger_entries"] == 6 and copied["audit_log"] == 8 and copied["jobs"] == 1
    async with await open_database(PG_URL, schema=schema) as dst:
        assert await snapshot(dst) == before


async def test_identity_sequences_continue_after_the_copied_ids(
    tmp_path: Path, schema: str
) -> None:
    """A moderator change after the copy gets the next audit id, not a duplicate."""
    src_url = f"sqlite:///{tmp_path / 'bot.db'}"
    async with await open_database(src_url) as src:
        await populate(src)
    await copy_database(src_url, PG_URL, dst_schema=schema)
    async with await open_database(PG_URL, schema=schema) as dst:
        ledger = Ledger(dst, default_limit=5, default_period="daily", clock=clock)
        await ledger.set_default_limit(G, MOD, 9)
        await ledger.grant(G, MOD, BOB, 1)
        ids = [r[0] for r in await dst.fetchall("SELECT id FROM audit_log ORDER BY id")]
        assert ids == list(range(1, 11))


async def test_copy_refuses_a_destination_with_rows(tmp_path: Path, schema: str) -> None:
    """Copying into a database that already holds data raises CopyError and adds nothing."""
    src_url = f"sqlite:///{tmp_path / 'bot.db'}"
    async with await open_database(src_url) as src:
        await populate(src)
    async with await open_database(PG_URL, schema=schema) as dst:
        await Ledger(dst, default_limit=5, default_period="daily").guild_settings(77)
    with pytest.raises(CopyError, match="not empty"):
        await copy_database(src_url, PG_URL, dst_schema=schema)
    async with await open_database(PG_URL, schema=schema) as dst:
        row = await dst.fetchone("SELECT COUNT(*) FROM guild_settings")
        assert row is not None and row[0] == 1


async def test_copy_refuses_a_sqlite_destination(tmp_path: Path) -> None:
    """The destination must be PostgreSQL."""
    with pytest.raises(CopyError, match="postgresql"):
        await copy_database(f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}")


@pytest.fixture
def cli_schema() -> Iterator[str]:
    asyncio.run(require_postgres())
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    asyncio.run(drop_schema(name))


def test_command_line_prints_one_line_per_table(
    tmp_path: Path, cli_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """python -m bot.app.copydb --from ... --to ... prints 'table: N rows' and exits 0."""
    src_url = f"sqlite:///{tmp_path / 'bot.db'}"

    async def prepare() -> None:
        async with await open_database(src_url) as src:
            await populate(src)

    asyncio.run(prepare())
    code = main(["--from", src_url, "--to", PG_URL, "--schema", cli_schema])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert "guild_settings: 2 rows" in out and "ledger_entries: 6 rows" in out
    assert not any("postgresql://" in line for line in out)
