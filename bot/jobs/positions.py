"""Places in line: the jobs this process accepted, shown their place in the fleet's queue.

A job is *watched* here from the moment its image is taken in (or it is handed back)
until a process claims it. Each refresh reads the whole line once (a bounded read: the
``jobs_queued`` partial index) and tells each watched job its place when it changed,
with why it waits when that is more than its place (1min.ai refusing the bot's account).

A watched job that is no longer in line was claimed, delivered, failed or cancelled by
some process of the fleet: it is dropped here and the front end told to stop showing it,
so no per-job state outlives its job and no late "queued" edit follows a result.

Refreshes are shared: a burst of submissions would otherwise read the whole queue once
per job; calls that arrive while a read runs are all served by the next one. Refreshes
that follow what happened elsewhere (claims, jobs ending: :meth:`Positions.refresh_soon`)
come at most every :data:`SOON` seconds, since the displays they feed are throttled to
seconds anyway; a job just put in line is shown its place at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from bot.db.outages import report_db_outage
from bot.jobs.model import Job, Progress, Stage, WaitReason
from bot.jobs.report import Reporter
from bot.jobs.store import ViewStatements

log = logging.getLogger(__name__)

SOON = 0.5  # seconds: the least time between refreshes asked for by refresh_soon

# Why the whole line waits, and until when at the latest (or None: it does not).
WaitInfo = tuple[WaitReason, float | None] | None


class Positions:
    """The places in line of the jobs accepted here; see the module docstring."""

    def __init__(
        self,
        views: ViewStatements,
        reporter: Reporter,
        line_waits: Callable[[], Awaitable[WaitInfo]],
    ) -> None:
        self._views = views
        self._reporter = reporter
        self._line_waits = line_waits
        self._watched: dict[str, Job] = {}
        # Reads of the line started so far, and how many had started when each job was
        # watched: a read that started before a job was watched may not see it in line.
        self._reads = 0
        self._watched_at: dict[str, int] = {}
        self._shown: dict[str, tuple[int, WaitInfo]] = {}
        # Refreshes asked for, and the last one a finished read covered.
        self._wanted = 0
        self._done = 0
        self._round = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_read = -SOON  # monotonic time of the last read's start
        self._soon: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, job: Job) -> None:
        self._watched[job.id] = job
        self._watched_at[job.id] = self._reads
        self._shown.pop(job.id, None)

    def unwatch(self, job_id: str) -> None:
        self._watched.pop(job_id, None)
        self._watched_at.pop(job_id, None)
        self._shown.pop(job_id, None)

    def position(self, job_id: str) -> int | None:
        """1-based place in line as last seen, or None when the job no longer waits."""
        shown = self._shown.get(job_id)
        return shown[0] if shown is not None else None

    def refresh_soon(self) -> None:
        """Refresh when this process shows any job's place, at most every :data:`SOON`
        seconds (asked for after claims and endings: many come at once in a burst)."""
        if not self._watched or (self._soon is not None and not self._soon.done()):
            return
        wait = max(0.0, self._last_read + SOON - time.monotonic())
        self._soon = asyncio.get_running_loop().create_task(self._refresh_after(wait))

    async def _refresh_after(self, wait: float) -> None:
        if wait:
            await asyncio.sleep(wait)
        try:
            await self.refresh()
        except Exception as exc:
            report_db_outage(log, "refreshing the places in line", exc)

    async def refresh_if_watching(self) -> None:
        """:meth:`refresh` when this process shows any job's place."""
        if self._watched:
            await self.refresh()

    async def refresh(self) -> None:
        """Bring the places up to date; returns once a read that started after this
        call has finished (shared with concurrent callers)."""
        self._wanted += 1
        wanted = self._wanted
        while self._done < wanted:
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._loop(), name="jobs-positions")
            await self._round.wait()

    async def _loop(self) -> None:
        while self._done < self._wanted:
            covers = self._wanted
            try:
                await self._update()
            finally:
                self._done = covers
                finished, self._round = self._round, asyncio.Event()
                finished.set()

    async def _update(self) -> None:
        if not self._watched:
            self._shown.clear()
            return
        self._reads += 1
        read = self._reads
        self._last_read = time.monotonic()
        try:
            line = await self._views.waiting_ids()
            waits = await self._line_waits()
        except Exception as exc:
            report_db_outage(log, "reading the queue", exc)
            return
        places = {job_id: index + 1 for index, job_id in enumerate(line)}
        gone: list[str] = []
        for job_id, job in list(self._watched.items()):
            place = places.get(job_id)
            if place is None:
                if self._watched_at.get(job_id, read) < read:  # watched before this read
                    gone.append(job_id)
                continue
            if self._shown.get(job_id) != (place, waits):
                self._shown[job_id] = (place, waits)
                progress = Progress(Stage.QUEUED, place)
                if waits is not None:
                    progress = Progress(Stage.QUEUED, place, waits[0], waits[1])
                self._reporter.show_progress(job, progress)
        for job_id in gone:
            if job_id in self._watched:  # not claimed here meanwhile
                self.unwatch(job_id)
                await self._reporter.stop_showing(job_id)
