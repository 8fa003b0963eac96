"""``upscale-bot job <id>``: a job's trail for the owner, from the database.

A job runs through the real queue (the rigs of tests/test_jobs.py, SQLite), then the
command runs as the owner would run it (``python -m bot job <id>``, a process of its own).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.bot_process import ROOT
from tests.emulators.onemin import OneMinEmulator
from tests.support.databases import Databases
from tests.test_jobs import KEY, Rig, make_rig

ENV_SECRETS = {"DISCORD_TOKEN": "cli-test-token", "ONEMIN_API_KEY": "cli-test-key"}


async def run_job_command(db_path: Path, shown_id: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": f"sqlite:///{db_path}",
        **ENV_SECRETS,
    }
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot", "job", shown_id],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """A queue on a SQLite file: the owner's command reads that file."""
    databases = Databases("sqlite", f"sqlite:///{tmp_path / 'bot.db'}", None)
    async with OneMinEmulator(api_key=KEY) as emu, aiohttp.ClientSession() as session:
        made = await make_rig(tmp_path, databases, session, emu)
        yield made
        await made.queue.shutdown(grace=0.5)
        await databases.close_all()


def sqlite_path(rig: Rig) -> Path:
    return rig.tmp / "bot.db"


async def test_job_command_prints_stages_outcome_credits_and_record(rig: Rig) -> None:
    """By the id in the result's footer: every stage with its time and process, the
    outcome, the credit charged and 1min.ai's record id; exit status 0."""
    job, _ = await rig.submit()
    await rig.settled(job)
    result = await run_job_command(sqlite_path(rig), job.id[:8])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"Job {job.id}" in out
    assert "outcome: delivered" in out and "credits: 1 committed" in out
    found = await rig.queue.trail(job.id)
    assert found is not None and found.job.record_id
    assert f"1min.ai record: {found.job.record_id}" in out
    stage_lines = [line for line in out.splitlines() if line.startswith("    20")]
    assert [line.split()[3] for line in stage_lines] == [e.stage for e in found.events]
    assert all(rig.queue.owner in line for line in stage_lines)


async def test_job_command_for_an_unknown_job_prints_one_line_and_exits_1(rig: Rig) -> None:
    """No such job: one line saying so, exit status 1."""
    result = await run_job_command(sqlite_path(rig), "0badc0de")
    assert result.returncode == 1
    assert len(result.stdout.strip().splitlines()) == 1 and "0badc0de" in result.stdout
