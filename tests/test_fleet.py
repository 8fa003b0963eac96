"""Fleet coordination through the database (bot.frontend.fleet), on both engines.

Each ``databases.open()`` is another connection to the same database, as another process
of the fleet would have.
"""

from __future__ import annotations

import asyncio
import functools
import time

import pytest

from bot.frontend.fleet import IdentifyGate, command_digest, identify_bucket, sync_once
from tests.support.databases import Databases


async def test_identify_turns_in_one_bucket_are_spaced_across_processes(
    databases: Databases,
) -> None:
    """Two processes wanting to identify shards of one bucket at once: one goes at once,
    the other waits the spacing."""
    first, second = await databases.open(), await databases.open()
    gates = [IdentifyGate(first, spacing=0.6), IdentifyGate(second, spacing=0.6)]
    started = time.monotonic()
    waited = await asyncio.gather(gates[0].wait_turn(0, 1), gates[1].wait_turn(2, 1))
    assert sorted(round(w, 1) for w in waited)[0] == 0.0
    assert max(waited) >= 0.5
    assert time.monotonic() - started >= 0.5


async def test_shards_of_different_buckets_identify_together(databases: Databases) -> None:
    """With max_concurrency 2, shards 0 and 1 are in different buckets: neither waits."""
    first, second = await databases.open(), await databases.open()
    waited = await asyncio.gather(
        IdentifyGate(first, spacing=5).wait_turn(0, 2),
        IdentifyGate(second, spacing=5).wait_turn(1, 2),
    )
    assert list(waited) == [0.0, 0.0]
    assert identify_bucket(None, 1) == 0 and identify_bucket(3, 2) == 1


async def test_a_restart_waits_for_the_turn_its_previous_run_took(databases: Databases) -> None:
    """The turn is in the database: a process started again at once waits the rest of it."""
    db = await databases.open()
    await IdentifyGate(db, spacing=0.5).wait_turn(0, 1)
    again = await databases.open()
    assert await IdentifyGate(again, spacing=0.5).wait_turn(0, 1) > 0.3


@pytest.mark.parametrize("databases", ["postgresql"], indirect=True)  # SQLite: one process
async def test_processes_starting_together_sync_the_commands_once(databases: Databases) -> None:
    """Three processes with the same command set: exactly one sync; the others skip."""
    calls: list[int] = []

    async def sync(n: int) -> list[int]:
        await asyncio.sleep(0.1)
        calls.append(n)
        return [n]

    dbs = [await databases.open() for _ in range(3)]
    digest = command_digest([{"name": "upscale"}])
    results = await asyncio.gather(
        *(
            sync_once(db, "app:global", digest, functools.partial(sync, n), instance=f"p{n}")
            for n, db in enumerate(dbs)
        )
    )
    assert len(calls) == 1
    assert sum(r is not None for r in results) == 1


async def test_a_changed_command_set_is_synced_again(databases: Databases) -> None:
    """A new command set (another hash) is synced; the same set again is not."""
    db = await databases.open()
    calls: list[str] = []

    async def sync() -> str:
        calls.append("x")
        return "synced"

    for payload in ([{"name": "a"}], [{"name": "a"}], [{"name": "a"}, {"name": "b"}]):
        await sync_once(db, "app:global", command_digest(payload), sync, instance="p")
    assert len(calls) == 2


async def test_a_failed_sync_is_not_recorded(databases: Databases) -> None:
    """When Discord refuses the sync, the next process (or start) tries again."""
    db = await databases.open()
    digest = command_digest([{"name": "a"}])

    async def broken() -> str:
        raise RuntimeError("HTTP 500")

    async def fine() -> str:
        return "synced"

    with pytest.raises(RuntimeError):
        await sync_once(db, "app:global", digest, broken, instance="p0")
    assert await sync_once(db, "app:global", digest, fine, instance="p1") == "synced"
