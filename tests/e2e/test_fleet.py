"""A fleet: two real bot processes (shards 0 and 1 of 2) on one PostgreSQL schema.

The emulators run in the test process; each bot runs as ``python -m tests.bot_process``
(what ``python -m bot`` runs) with ``SHARD_COUNT=2`` and its own ``SHARD_IDS``, on a fresh
schema of the PostgreSQL test server (``TEST_DATABASE_URL``); see tests/fleet_harness.py.
Interactions of a guild reach only the process owning its shard, but any process may run
any job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.emulators.discord import Injected
from tests.fleet_harness import (
    COMMANDS_PUT,
    SHARDS,
    all_final,
    delivered,
    delivered_through_webhook,
    fleet,
    wait_until,
)

# -- start-up ------------------------------------------------------------------------------


async def test_two_processes_starting_together_identify_in_turns(tmp_path: Path) -> None:
    """With max_concurrency 1, two processes started at once identify at least Discord's
    IDENTIFY window apart (5 s; the emulator's shortened one here, with the bot's spacing
    shortened to match): Discord refuses no IDENTIFY, and each process holds only its own
    shard."""
    async with fleet(tmp_path, max_concurrency=1) as f:
        await f.start()
        ready = [a for a in f.discord.identify_log if a.outcome == "ready"]
        assert sorted(a.shard_id for a in ready) == [0, 1]
        assert f.discord.identify_refusals == 0
        assert abs(ready[1].at - ready[0].at) >= f.discord.identify_interval
        assert f.discord.connected_shards() == [0, 1]
        assert sorted(g.id for g in f.discord.guilds_on(0, SHARDS)) == sorted(
            g.id for g in f.discord.guilds if (g.id >> 22) % SHARDS == 0
        )


async def test_only_one_process_of_the_fleet_syncs_the_commands(tmp_path: Path) -> None:
    """Two processes starting together register the commands once; a restarted process
    with the same commands does not register them again."""
    async with fleet(tmp_path) as f:
        await f.start()
        puts = [c for c in f.discord.calls if c.method == "PUT" and COMMANDS_PUT.search(c.path)]
        assert len(puts) == 1
        f.kill(1)
        await f.start(1)
        puts = [c for c in f.discord.calls if c.method == "PUT" and COMMANDS_PUT.search(c.path)]
        assert len(puts) == 1
        assert "not syncing" in f.log(1)


# -- fleet-wide limits ---------------------------------------------------------------------


async def test_a_burst_in_both_guilds_is_delivered_exactly_once(tmp_path: Path) -> None:
    """Six members in each shard's guild upscale at once: every job is delivered once (one
    result per job footer) and charged once."""
    async with fleet(tmp_path) as f:
        await f.start(MAX_CONCURRENT_JOBS="2")
        f.onemin.upscale_delay = 0.3
        its = await f.burst(6)
        assert delivered(await all_final(its)) == 12
        await f.settled()
        assert len(f.footers()) == 12 and len(set(f.footers())) == 12
        assert await f.value("SELECT COUNT(*) FROM ledger_entries WHERE state = 'committed'") == 12
        assert await f.value("SELECT COUNT(*) FROM jobs WHERE status = 'delivered'") == 12


async def test_the_fleet_never_has_more_than_k_upscales_in_flight(tmp_path: Path) -> None:
    """With MAX_CONCURRENT_JOBS=2 on both processes, 1min.ai never sees more than two
    upscale calls at once, though both processes have work."""
    async with fleet(tmp_path) as f:
        await f.start(MAX_CONCURRENT_JOBS="2")
        f.onemin.upscale_delay = 0.5
        async with f.watching_owners():
            its = await f.burst(5)
            assert delivered(await all_final(its)) == 10
        assert f.onemin.max_features_in_flight == 2


async def test_the_fleet_stays_under_the_1min_rate_limit_together(tmp_path: Path) -> None:
    """1min.ai allows 6 calls per 2 s window; with ONEMIN_REQUESTS_PER_MINUTE=6 over the
    same window, two busy processes together never go over it and get no 429."""
    async with fleet(tmp_path) as f:
        f.onemin.rate_limit(6, 2.0)
        await f.start(
            MAX_CONCURRENT_JOBS="4", ONEMIN_REQUESTS_PER_MINUTE="6", ONEMIN_RATE_WINDOW="2"
        )
        its = await f.burst(4)
        assert delivered(await all_final(its, timeout=60)) == 8
        assert f.onemin.max_in_window(admitted_only=True) <= 6
        assert f.onemin.rate_limited_count == 0
        assert f.onemin.calls["upload"] == 8


async def test_racing_for_the_total_budget_delivers_exactly_the_budget(tmp_path: Path) -> None:
    """TOTAL_BUDGET=5 shared by both processes: a burst of 12 in both guilds delivers
    exactly 5 and refuses the rest without charging them."""
    async with fleet(tmp_path) as f:
        await f.start(MAX_CONCURRENT_JOBS="4", TOTAL_BUDGET="5")
        its = await f.burst(6)
        finals = await all_final(its)
        await f.settled()
        assert delivered(finals) == 5
        assert len(set(f.footers())) == 5
        assert await f.value("SELECT COUNT(*) FROM ledger_entries WHERE state = 'committed'") == 5
        assert await f.value("SELECT COUNT(*) FROM ledger_entries WHERE state = 'reserved'") == 0


# -- any process runs any job --------------------------------------------------------------


async def test_a_job_accepted_by_one_process_is_run_and_delivered_by_the_other(
    tmp_path: Path,
) -> None:
    """Process 0 is full (its one slot held by a slow upload, and the one job it may
    claim ahead waiting for that slot): the next job it accepts is run by process 1
    (started once process 0 holds its two jobs: any process may claim any job, and an
    idle one woken by the first job could have run it), which delivers it by editing
    the original reply through the interaction webhook, with no gateway connection to
    that guild."""
    async with fleet(tmp_path) as f:
        await f.start(0, MAX_CONCURRENT_JOBS="1")
        upload = f.onemin.hold("upload", times=1)  # the first job's, until the third is done
        alice, carol, bob = f.members(0, 3)
        async with f.watching_owners():
            first = await f.upscale(0, alice)
            await wait_until(
                lambda: f.value("SELECT COUNT(*) FROM jobs WHERE status = 'running'"),
                "first job running",
                f,
            )
            ahead = await f.upscale(0, carol)

            async def two_running() -> bool:
                running = await f.value("SELECT COUNT(*) FROM jobs WHERE status = 'running'")
                return bool(running == 2)

            await wait_until(two_running, "second job claimed ahead", f)
            await f.start(1, MAX_CONCURRENT_JOBS="2")
            third = await f.upscale(0, bob)
            final = await third.final(timeout=20)
            assert final.get("attachments")
            upload.release()
            await first.final(timeout=20)
            await ahead.final(timeout=20)
        jobs = [r["id"] for r in await f.db.fetchall("SELECT id FROM jobs ORDER BY created_at")]
        assert f.ran_on(jobs[0]) == {"0"} and f.ran_on(jobs[2]) == {"1"}
        assert delivered_through_webhook(f, third)


# -- failover ------------------------------------------------------------------------------


async def test_kill_9_of_one_process_mid_burst_the_other_finishes_every_job(
    tmp_path: Path,
) -> None:
    """kill -9 of the process running a job in the middle of a burst: once its leases
    run out, the other process takes its jobs over and every job is delivered exactly
    once, through the original replies, and charged once."""
    async with fleet(tmp_path) as f:
        await f.start(MAX_CONCURRENT_JOBS="2", JOB_LEASE_SECONDS="3")
        upscale = f.onemin.hold("upscale")  # until the kill
        async with f.watching_owners():
            its = await f.burst(4)
            for it in its:
                await it.acked()
            # Every job recorded (a process killed while still taking an image in loses
            # that intake: see the README), and one of them upscaling.
            await wait_until(lambda: f.value("SELECT COUNT(*) = 8 FROM jobs"), "8 jobs", f)
            await wait_until(
                lambda: f.value(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'running' AND stage = 'upscaling'"
                ),
                "a job upscaling",
                f,
            )
            owner = await f.value(
                "SELECT lease_owner FROM jobs WHERE status = 'running' AND stage = 'upscaling'"
            )
            victim = int(str(owner).rsplit(":", 1)[0].rsplit("/", 1)[1])
            f.kill(victim)
            upscale.release()
            finals = await all_final(its, timeout=40)
        assert delivered(finals) == 8
        await f.settled()
        assert len(f.footers()) == 8 and len(set(f.footers())) == 8
        assert await f.value("SELECT COUNT(*) FROM ledger_entries WHERE state = 'committed'") == 8
        taken_over = [job for job in f.owners if f.ran_on(job) == {"0", "1"}]
        assert taken_over, f.owners
        assert all(delivered_through_webhook(f, it) for it in its)
        assert "Took over job" in f.log(1 - victim)


async def test_a_restarted_process_takes_its_shard_back_without_disturbing_the_other(
    tmp_path: Path,
) -> None:
    """Process 0 is killed and started again while process 1 runs jobs: it gets shard 0
    back, serves its guild again, and process 1's jobs are neither released nor run twice."""
    async with fleet(tmp_path) as f:
        await f.start(MAX_CONCURRENT_JOBS="2", JOB_LEASE_SECONDS="3")
        upscale = f.onemin.hold("upscale")  # running while process 0 starts and recovers
        f.kill(0)
        async with f.watching_owners():
            its = [await f.upscale(1, m) for m in f.members(1, 2)]
            await wait_until(
                lambda: f.value(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'running' AND stage = 'upscaling'"
                ),
                "process 1 upscaling",
                f,
            )
            await f.start(0, MAX_CONCURRENT_JOBS="2", JOB_LEASE_SECONDS="3")
            assert f.discord.connected_shards() == [0, 1]
            upscale.release()
            again = await f.upscale(0, f.members(0, 1)[0])
            assert (await again.final(timeout=20)).get("attachments")
            assert delivered(await all_final(its)) == 2
        await f.settled()
        ones = [
            r["id"]
            for r in await f.db.fetchall(
                "SELECT id FROM jobs WHERE guild_id = ?", (f.guilds[1].id,)
            )
        ]
        assert all(f.ran_on(job) == {"1"} for job in ones)
        assert await f.value("SELECT MAX(claims) FROM jobs") == 1
        assert f.onemin.upscales == 3


# -- one message owner at a time -------------------------------------------------------------


def edited_after_result(it: Injected) -> list[dict[str, Any]]:
    """Versions of the member's reply that came after a version with the result's image."""
    first = next((n for n, e in enumerate(it.edits) if e.get("attachments")), None)
    return [] if first is None else it.edits[first + 1 :]


async def test_a_result_delivered_by_another_process_is_never_edited_afterwards(
    tmp_path: Path,
) -> None:
    """Process 0 takes every command and shows places in line but runs nothing; process 1
    runs and delivers every job, each faster than the progress throttle (0.5 s), so
    process 0's throttled "queued" edits collide with deliveries (without the fix this
    overwrote results within a run). No reply is edited after its result was posted:
    process 0 stops showing a job once it is claimed elsewhere, and a late edit is
    dropped."""
    async with fleet(tmp_path) as f:
        fast = {
            "PROGRESS_INTERVAL": "0.5",
            "FIRST_PROGRESS_DELAY": "0",
            "MAX_CONCURRENT_JOBS": "2",
        }
        await f.start(0, RUN_JOBS="0", **fast)
        await f.start(1, **fast)
        its = [await f.upscale(0, member) for member in f.members(0, 30)]
        finals = await all_final(its, timeout=90)
        assert delivered(finals) == len(its)
        await f.settled()
        late = {it.token[:8]: edited_after_result(it) for it in its if edited_after_result(it)}
        assert late == {}, late
        assert all(delivered_through_webhook(f, it) for it in its)
