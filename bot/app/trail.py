"""``upscale-bot job <id>``: a job's trail for the owner's terminal.

Opens the database the settings name, finds the one job whose id starts with the id
shown in a result's footer (:func:`bot.jobs.trail.find_trail`, with a ledger for its
credits) and prints its trail in English (:func:`bot.jobs.trail.format_trail`).
"""

from __future__ import annotations

from typing import TextIO

from bot.app.services import build_ledger
from bot.app.settings import Settings
from bot.db import open_database
from bot.jobs.store import JobStore
from bot.jobs.trail import find_trail, format_trail


async def show_job(settings: Settings, shown_id: str, out: TextIO) -> int:
    """Print the trail of the job ``shown_id`` names to ``out``; the exit status: 0, or 1
    (one line printed) when no job, or more than one, has an id starting so."""
    async with await open_database(settings.database_url.get()) as db:
        trail = await find_trail(JobStore(db, owner="cli"), build_ledger(settings, db), shown_id)
    if trail is None:
        print(f"No job with id {shown_id!r} (or more than one starts so).", file=out)
        return 1
    print(format_trail(trail), file=out)
    return 0
