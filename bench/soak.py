"""A soak: a fleet of bot processes on PostgreSQL, under kills and faults, for minutes.

N bot processes (``--processes``, default 3; ``SHARD_COUNT=N``, one shard each) run as an
owner runs them (real clocks), on one PostgreSQL schema that every process reaches
through :class:`tests.support.faultproxy.FaultProxy`, against the project's Discord and
1min.ai emulators (served by this process on 127.0.0.1), for ``--minutes`` (default 10):

- members of the shards' guilds (``--members``, default 60) ask for upscales at a steady
  ``--rate`` (default 2 per second), injected through the Discord emulator as the fleet
  tests do; a member whose shard has no process connected (killed, starting again) does
  not ask (Discord would tell them the application did not respond);
- every 30-40 s a random process is killed (SIGKILL) and started again at once, as a
  service manager would; the 1min.ai upscale calls it had in flight at that moment are
  counted (the emulator counts calls by the caller's address; /proc says which
  addresses are the process's);
- every 60-90 s the database fails between the bots and PostgreSQL, in turn
  (``--db-faults``): every connection reset at once; new connections refused for 5-15
  s; no byte passing for 5-15 s (``--lease`` sets JOB_LEASE_SECONDS, default 5 s, so
  that some stalls outlast it);
- every 20-40 s 1min.ai misbehaves for a few calls: 429s, 5xx, slow answers.

Then the faults stop, the fleet drains (at most ``--drain`` s), the processes are stopped
with SIGTERM, and the soak prints one line per check, ``PASS`` or ``FAIL`` with its
figures, then a summary. Exit status 1 when a check fails, 2 when the soak could not run.

- **one outcome per job**: every job the bot acknowledged (recorded) ended exactly once
  (delivered, failed or cancelled; one end in its trail), none is left intake, queued or
  running and no credit reserved; on Discord every delivered job's result was posted
  (an embed whose footer names the job, with an attachment) in one message only, no
  result was posted for a job not delivered, and no acknowledged reply was left showing
  "thinking" or progress;
- **ledger = deliveries**: per member, the credits committed equal that member's delivered
  jobs times the cost, the usage counters agree, every job's reservation was settled the
  way the job ended, and none is left reserved;
- **1min.ai upscales <= deliveries + calls in flight at kills** (an upscale in flight when
  its process died is made again; nothing else should be);
- **no result overwritten**: once a message showed a job's result, no later version of it
  (the emulator keeps every one) shows anything else;
- **no traceback** in any process's output;
- **every process up**: no process exited unless the soak killed it, and every shard was
  connected at the end.

Everything stays on 127.0.0.1. The processes' logs, the emulators' (``emulators.log``),
every job's trail (``jobs.jsonl``) and a JSON summary are kept in
``bench/out/soak-<time>/``. The processes are killed and the schema dropped at the end,
also when the soak is interrupted (Ctrl+C, SIGTERM) or reaches its hard deadline; if
the soak itself is killed, the bot processes die with it (``PR_SET_PDEATHSIG``; its
schema is then left behind).

Needs the PostgreSQL test server (``TEST_DATABASE_URL``, default
postgresql://postgres@127.0.0.1:5432/test); the soak uses a database of its own beside
it (``<name>_soak``, made on first use), so its advisory locks never meet a test's. Run
from the project root: ``python -m bench.soak --minutes 30 --processes 3``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.common import percentile
from bot.db import Database, open_database
from bot.jobs.store import parse_trail
from bot.logs import LOG_FORMAT
from tests.emulators.discord import Guild, Injected, Member
from tests.emulators.discord.history import MessageVersion, RecordingDiscordEmulator
from tests.emulators.onemin import OneMinEmulator
from tests.harness import DISCORD_TOKEN, ONEMIN_KEY
from tests.support.faultproxy import FaultProxy
from tests.support.images import png

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BASE_PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

KILL_EVERY = (30.0, 40.0)  # seconds between kills, drawn uniformly
DB_FAULT_EVERY = (60.0, 90.0)  # seconds between database faults
DB_FAULT_SECONDS = (5.0, 15.0)  # how long a refusal or a stall lasts
DB_FAULTS = ("reset", "refuse", "stall")
ONEMIN_FAULT_EVERY = (20.0, 40.0)  # seconds between 1min.ai faults
# (what the report calls it, route, fault, calls it hits, options): tests/emulators/onemin.py
ONEMIN_FAULTS: tuple[tuple[str, str, str, int, dict[str, Any]], ...] = (
    ("429 on 3 upscales (Retry-After 2)", "upscale", "rate_limited", 3, {"retry_after": 2}),
    ("500 on 2 uploads", "upload", "server_error", 2, {"status": 500}),
    ("4 slow upscales (8 s)", "upscale", "latency", 4, {"seconds": 8.0}),
    ("502 page on an upscale", "upscale", "html_error", 1, {"status": 502}),
    ("429 on 3 uploads (no Retry-After)", "upload", "rate_limited", 3, {}),
    ("503 on a download", "download", "server_error", 1, {"status": 503}),
)

START_TIMEOUT = 90.0  # seconds for the fleet to connect every shard and sync its commands
ACK_GRACE = 5.0  # seconds after the last request for its acknowledgement (Discord's 3 s)
DRAIN_POLL = 0.5  # seconds between looks at the database while the fleet drains
IDLE_WINDOW = 60.0  # seconds at the end of the traffic in which every process should claim
QUIET = 30.0  # seconds without a change on Discord that end the drain early
SETTLE = 5.0  # seconds of quiet after the drain, for edits still on their way
STOP_TIMEOUT = 30.0  # seconds a process gets to stop after SIGTERM
RESTART_DELAY = 1.0  # seconds before a process that exited by itself is started again
WATCH_EVERY = 0.25  # seconds between looks at the processes
PROGRESS_EVERY = 30.0  # seconds between progress lines
POST_KILL_LOOK = 1.0  # seconds after a kill: its calls that arrived after it are counted too
DEADLINE_MARGIN = 120.0  # seconds of the hard deadline beyond the planned phases
PR_SET_PDEATHSIG = 1  # prctl option: a signal for the child when its parent dies

UNFINISHED = ("intake", "queued", "running")
ENDS = ("delivered", "failed", "cancelled")
PROGRESS = ("⏳", "⚙️", "🔄", "⏸️")  # progress lines start so (Injected.final)
FOOTER_JOB = re.compile(r"([0-9a-f]{8})\s*$")  # the job id a result's footer ends with
TRACEBACK = "Traceback (most recent call last):"
ERROR_LINE = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) ", re.MULTILINE)


# -- what the checks read --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobRow:
    """A job as the database ended it."""

    id: str
    guild_id: int
    member_id: int
    status: str
    error_kind: str | None
    reservation_id: str | None
    message_id: int | None  # the deferred reply the member saw (the job's context)
    ends: int  # terminal events (delivered, failed, cancelled) in its trail
    upscalings: int = 1  # times its trail entered "upscaling" (more: resumed, called again)


@dataclass(frozen=True, slots=True)
class LedgerRow:
    id: str
    guild_id: int
    member_id: int
    cost: int
    state: str
    job_id: str | None


Collected = tuple[list[JobRow], list[LedgerRow], dict[tuple[int, int], int]]
"""What the database holds at the end: jobs, ledger entries, usage counters per member."""


@dataclass(frozen=True, slots=True)
class Ask:
    """One /upscale a member sent, and how Discord last showed its reply."""

    message_id: int | None  # the deferred reply (None: never acknowledged)
    acked_at: float | None  # time.monotonic()
    final: bool  # the reply ended as a result or words, not "thinking" or progress
    content: str
    label: str = ""  # where and when it was asked, for the report


@dataclass(frozen=True, slots=True)
class Kill:
    at: float  # time.monotonic()
    shard: int
    pid: int
    in_flight: int  # its 1min.ai upscale calls in flight
    held: tuple[str, ...]  # the jobs it held (intake or running)


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str  # "db reset", "db refuse", "db stall" or "1min.ai"
    start: float  # time.monotonic()
    end: float
    detail: str


@dataclass(frozen=True, slots=True)
class Exit:
    """A process that ended without the soak killing it."""

    at: float
    shard: int
    pid: int
    status: int


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    figures: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.figures}"


def result_job(message: Mapping[str, Any]) -> str | None:
    """The job (first eight characters of its id) whose result ``message`` shows: an
    attachment and an embed whose footer names the job; None for anything else."""
    if not message.get("attachments"):
        return None
    for embed in message.get("embeds") or []:
        match = FOOTER_JOB.search(str((embed.get("footer") or {}).get("text") or ""))
        if match:
            return match[1]
    return None


def face(message: Mapping[str, Any]) -> tuple[str, str, tuple[tuple[str, int], ...]]:
    """What a member sees of a message (text, embeds, files); its buttons left out."""
    files = tuple(
        (str(a.get("filename")), int(a.get("size") or 0)) for a in message.get("attachments") or []
    )
    return (
        str(message.get("content") or ""),
        json.dumps(message.get("embeds") or [], sort_keys=True),
        files,
    )


def posts(versions: Mapping[int, Sequence[MessageVersion]]) -> dict[str, set[int]]:
    """Per job, the messages that ever showed its result."""
    found: dict[str, set[int]] = defaultdict(set)
    for message_id, history in versions.items():
        for version in history:
            job = result_job(version.message)
            if job is not None:
                found[job].add(message_id)
    return dict(found)


def first_posts(versions: Mapping[int, Sequence[MessageVersion]]) -> dict[str, float]:
    """Per job, when its result first appeared on Discord (time.monotonic())."""
    first: dict[str, float] = {}
    for history in versions.values():
        for version in history:
            job = result_job(version.message)
            if job is not None and (job not in first or version.at < first[job]):
                first[job] = version.at
    return first


def ask_of(it: Injected, label: str = "") -> Ask:
    """How ``it``'s reply stands now."""
    message = it.original
    if it.ack_status != 200 or message is None:
        return Ask(None, None, False, "", label)
    content = str(message.get("content") or "")
    final = bool(message.get("attachments") or message.get("embeds")) or (
        bool(content) and not content.startswith(PROGRESS)
    )
    return Ask(int(message["id"]), it.ack_at, final, content, label)


def _example(items: Sequence[str]) -> str:
    return f" (e.g. {items[0]})" if items else ""


# -- the checks ------------------------------------------------------------------------


def check_outcomes(
    jobs: Sequence[JobRow],
    reserved: int,
    versions: Mapping[int, Sequence[MessageVersion]],
    asks: Sequence[Ask],
) -> Check:
    """Every job ended exactly once, in the database and on Discord (module docstring)."""
    unfinished = [j for j in jobs if j.status in UNFINISHED]
    not_once = [j for j in jobs if j.status in ENDS and j.ends != 1]
    posted = posts(versions)
    by_job = {j.id[:8]: j for j in jobs}
    doubled = sorted(job for job, messages in posted.items() if len(messages) > 1)
    unposted = [j for j in jobs if j.status == "delivered" and j.id[:8] not in posted]
    undelivered = sorted(
        job for job in posted if job not in by_job or by_job[job].status != "delivered"
    )
    left = [a for a in asks if a.message_id is not None and not a.final]
    examples = (
        [f"job {j.id[:8]} {j.status}" for j in unfinished]
        + [f"job {j.id[:8]} with {j.ends} ends" for j in not_once]
        + [f"job {job} in {len(posted[job])} messages" for job in doubled]
        + [f"job {j.id[:8]} delivered, no post" for j in unposted]
        + [f"job {job} posted, {by_job[job].status if job in by_job else 'unknown'}"
           for job in undelivered]
        + [f"reply {a.message_id} {a.label} left at {a.content[:40]!r}".replace("  ", " ")
           for a in left]
    )  # fmt: skip
    passed = not examples and reserved == 0
    return Check(
        "one outcome per job",
        passed,
        f"{len(jobs)} jobs: {len(unfinished)} unfinished, {reserved} credits reserved,"
        f" {len(not_once)} not ended exactly once; on Discord {len(doubled)} posted more"
        f" than once, {len(unposted)} delivered without a post, {len(undelivered)} posted"
        f" but not delivered, {len(left)} replies left thinking or in progress"
        + _example(examples),
    )


def check_ledger(
    jobs: Sequence[JobRow],
    entries: Sequence[LedgerRow],
    cost: int,
    usage: Mapping[tuple[int, int], int],
) -> Check:
    """Per member, committed credits = delivered jobs x cost; counters agree; every
    reservation settled as its job ended; none open."""
    committed: Counter[tuple[int, int]] = Counter()
    live: Counter[tuple[int, int]] = Counter()
    for e in entries:
        if e.state == "committed":
            committed[(e.guild_id, e.member_id)] += e.cost
        if e.state in ("reserved", "committed"):
            live[(e.guild_id, e.member_id)] += e.cost
    expected: Counter[tuple[int, int]] = Counter()
    for j in jobs:
        if j.status == "delivered":
            expected[(j.guild_id, j.member_id)] += cost
    members = set(committed) | set(expected)
    off = sorted(m for m in members if committed[m] != expected[m])
    counters_off = sorted(m for m in set(usage) | set(live) if usage.get(m, 0) != live[m])
    reserved = sum(e.state == "reserved" for e in entries)
    by_id = {e.id: e for e in entries}
    unsettled = []
    for j in jobs:
        entry = by_id.get(j.reservation_id or "")
        want = "committed" if j.status == "delivered" else "refunded"
        if j.status in ENDS and (entry is None or entry.state != want):
            unsettled.append(
                f"job {j.id[:8]} {j.status}, credits {entry.state if entry else 'none'}"
            )
    examples = (
        [f"member {m[1]}: {committed[m]} committed, {expected[m]} delivered" for m in off]
        + [f"member {m[1]}: counter {usage.get(m, 0)}, entries {live[m]}" for m in counters_off]
        + unsettled
    )
    return Check(
        "ledger = deliveries",
        not examples and reserved == 0,
        f"{sum(committed.values())} credits committed for {sum(expected.values()) // cost}"
        f" deliveries over {len(members)} members; {len(off)} members off,"
        f" {len(counters_off)} usage counters off, {len(unsettled)} jobs settled otherwise"
        f" than they ended, {reserved} reservations open" + _example(examples),
    )


def check_upscales(
    upscales: int, delivered: int, kills: Sequence[Kill], jobs: Sequence[JobRow] = ()
) -> Check:
    """1min.ai upscales <= deliveries + upscale calls in flight at the kills. The figures
    also name where extra calls may come from: jobs that entered "upscaling" more than
    once with no kill holding them (a lease lost while the call ran), and jobs that
    reached "upscaling" but were not delivered (1min.ai may have billed the call)."""
    in_flight = sum(k.in_flight for k in kills)
    allowed = delivered + in_flight
    over = upscales - allowed
    held = {j for k in kills for j in k.held}
    again = [j for j in jobs if j.upscalings > 1]
    unexplained = [
        f"job {j.id[:8]} upscaling {j.upscalings} times" for j in again if j.id not in held
    ]
    lost = [
        f"job {j.id[:8]} {j.status} ({j.error_kind})"
        for j in jobs
        if j.upscalings and j.status != "delivered"
    ]
    return Check(
        "1min.ai upscales <= deliveries + in flight at kills",
        over <= 0,
        f"1min.ai upscales {upscales}; deliveries {delivered} + in flight at"
        f" {len(kills)} kills {in_flight} = {allowed}"
        + (f": {over} more" if over > 0 else "")
        + f"; {len(again)} jobs upscaling more than once, {len(unexplained)} of them"
        f" held by no killed process; {len(lost)} not delivered after upscaling"
        + _example(unexplained + lost),
    )


def check_overwrites(versions: Mapping[int, Sequence[MessageVersion]]) -> Check:
    """No message that showed a result was changed afterwards."""
    shown = 0
    changed: list[str] = []
    for message_id, history in versions.items():
        first = next((i for i, v in enumerate(history) if result_job(v.message)), None)
        if first is None:
            continue
        shown += 1
        was = face(history[first].message)
        for later in history[first + 1 :]:
            if face(later.message) != was:
                job = result_job(history[first].message)
                now = result_job(later.message)
                became = f"job {now}'s result" if now else repr(face(later.message)[0][:40])
                changed.append(f"message {message_id}: job {job}'s result became {became}")
                break
    return Check(
        "no result overwritten",
        not changed,
        f"{shown} messages showed a result; {len(changed)} changed afterwards" + _example(changed),
    )


def tracebacks(text: str) -> list[str]:
    """The exception line of every traceback in ``text`` (the first of a chain's)."""
    found = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != TRACEBACK:
            continue
        rest = (x for x in lines[i + 1 :] if x and not x.startswith(" "))
        found.append(next(rest, "?").strip())
    return found


def check_tracebacks(logs: Mapping[str, str]) -> Check:
    """No traceback in any process's output (stdout and stderr)."""
    found = {name: tracebacks(text) for name, text in logs.items()}
    total = sum(len(v) for v in found.values())
    errors = sum(len(ERROR_LINE.findall(text)) for text in logs.values())
    kinds = Counter(e.split(":", 1)[0] for v in found.values() for e in v)
    examples = [f"{name}: {v[0][:120]}" for name, v in sorted(found.items()) if v]
    return Check(
        "no traceback",
        total == 0,
        f"{total} tracebacks in {sum(bool(v) for v in found.values())} of {len(logs)}"
        f" process logs; {errors} ERROR lines"
        + (f"; {', '.join(f'{k} x{n}' for k, n in kinds.most_common(5))}" if kinds else "")
        + _example(examples),
    )


def check_processes(
    exits: Sequence[Exit],
    started: int,
    kills: int,
    connected: int,
    shards: int,
    not_working: Sequence[str] = (),
) -> Check:
    """No process ended unless the soak killed it; every shard connected at the end.
    The figures also name the processes that claimed no job in the last minute of
    traffic although they were up (alive, but perhaps not working: not a failure here)."""
    examples = [f"shard {e.shard} (pid {e.pid}) status {e.status}" for e in exits]
    return Check(
        "every process up",
        not exits and connected == shards,
        f"{started} processes started ({kills} after a kill); {len(exits)} exited on"
        f" their own; {connected} of {shards} shards connected at the end;"
        f" {len(not_working)} claimed no job in the last {IDLE_WINDOW:g} s of traffic"
        + (f" ({', '.join(not_working)})" if not_working else "")
        + _example(examples),
    )


# -- figures ---------------------------------------------------------------------------


def seconds(values: Sequence[float]) -> str:
    """p50 / p95 / max of ``values``, in seconds."""
    if not values:
        return "none"
    return (
        f"p50 {statistics.median(values):.1f} s, p95 {percentile(values, 0.95):.1f} s,"
        f" max {max(values):.1f} s (n={len(values)})"
    )


def recovery(
    faults: Iterable[Fault], kills: Iterable[Kill], delivered_at: Mapping[str, float]
) -> dict[str, list[float]]:
    """Per kind of fault, the seconds from its end to the fleet's next delivery; for
    kills also ("kill: its jobs") to the first delivery of a job the killed process held."""
    times = sorted(delivered_at.values())
    out: dict[str, list[float]] = defaultdict(list)

    def after(t: float) -> float | None:
        return next((x - t for x in times if x >= t), None)

    for fault in faults:
        gap = after(fault.end)
        if gap is not None:
            out[fault.kind].append(gap)
    for kill in kills:
        gap = after(kill.at)
        if gap is not None:
            out["kill"].append(gap)
        its = [delivered_at[j[:8]] - kill.at for j in kill.held if j[:8] in delivered_at]
        if its:
            out["kill: its jobs"].append(min(its))
    return dict(out)


# -- the fleet under faults ------------------------------------------------------------


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded once, before any fork


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the soak dies, however it dies."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def front_context(stored: str | None) -> dict[str, Any]:
    """The front end's fields of a job's ``context`` column: inside ``front`` (a string of
    JSON) as this version writes it, or the whole object as older versions did."""
    data = json.loads(stored) if stored else {}
    front = data.get("front")
    if isinstance(front, str):
        return dict(json.loads(front)) if front else {}
    return dict(data)


def pid_of(process: str) -> int | None:
    """The pid in a lease owner's name ("host/0:4242.a1b2c3" -> 4242)."""
    match = re.search(r":(\d+)\.", process)
    return int(match[1]) if match else None


def idle(
    last: Mapping[int, int],
    born: Mapping[int, float],
    last_claim: Mapping[int, float],
    traffic_ended: float,
    window: float = IDLE_WINDOW,
) -> list[str]:
    """The processes running at the end (``last``: shard -> pid) that were up for the
    last ``window`` s of traffic and claimed no job in them."""
    since = traffic_ended - window
    return [
        f"shard {shard} (pid {pid})"
        for shard, pid in sorted(last.items())
        if born.get(pid, since) < since and last_claim.get(pid, 0.0) < since
    ]


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of process ``pid``'s sockets (from /proc; Linux only)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass(frozen=True, slots=True)
class Options:
    minutes: float = 10.0
    processes: int = 3
    rate: float = 2.0  # upscales per second
    members: int = 60
    lease: float = 5.0  # JOB_LEASE_SECONDS
    latency: float = 1.0  # seconds 1min.ai takes per upscale
    concurrency: int = 8  # MAX_CONCURRENT_JOBS
    drain: float = 180.0  # seconds the fleet gets to finish after the faults stop
    db_faults: tuple[str, ...] = DB_FAULTS
    log_level: str = "INFO"
    seed: int | None = None

    def deadline(self) -> float:
        """Seconds after which the soak stops whatever it is doing."""
        return START_TIMEOUT + self.minutes * 60 + self.drain + STOP_TIMEOUT + DEADLINE_MARGIN


class Soak:
    """The fleet, the traffic and the faults (see the module docstring)."""

    def __init__(
        self,
        options: Options,
        out: Path,
        spool: Path,
        discord: RecordingDiscordEmulator,
        onemin: OneMinEmulator,
        proxy: FaultProxy,
        db: Database,
        db_url: str,
        schema: str,
    ) -> None:
        self.o = options
        self.out = out
        self.spool = spool
        self.discord = discord
        self.onemin = onemin
        self.proxy = proxy
        self.db = db
        self.db_url = db_url
        self.schema = schema
        self.rng = random.Random(options.seed)
        n = options.processes
        discord.max_concurrency = n  # each shard its own IDENTIFY bucket
        self.guilds: list[Guild] = [
            discord.add_guild(f"Soak {s}", shard=(s, n), members=()) for s in range(n)
        ]
        self.members: list[Member] = [
            discord.add_member(f"m{i}", guild=self.guilds[i % n]) for i in range(options.members)
        ]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.born: dict[int, float] = {}  # pid -> when it was started (Unix seconds)
        self.traffic_ended = 0.0  # Unix seconds
        self.last_claim: dict[int, float] = {}  # pid -> its last job claimed (Unix seconds)
        self.runs: Counter[int] = Counter()
        self.killed: set[int] = set()  # pids the soak killed
        self.kills: list[Kill] = []
        self.faults: list[Fault] = []
        self.exits: list[Exit] = []
        self.asked: list[Injected] = []
        self.skipped = 0  # requests not sent: the member's shard had no process connected
        self.started_at = time.monotonic()  # reset when the traffic starts
        self.stopping = False

    # -- processes -------------------------------------------------------------------

    def env(self, shard: int) -> dict[str, str]:
        o = self.o
        return {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT),
            "DISCORD_TOKEN": DISCORD_TOKEN,
            "ONEMIN_API_KEY": ONEMIN_KEY,
            "ONEMIN_API_BASE": self.onemin.base_url,
            "DATABASE_URL": self.proxy.url(self.db_url, self.schema),
            "SPOOL_DIR": str(self.spool),
            "DISCORD_API_BASE": self.discord.api_base,
            "DISCORD_GATEWAY_URL": self.discord.gateway_url,
            "SHARD_COUNT": str(o.processes),
            "SHARD_IDS": str(shard),
            "LOG_LEVEL": o.log_level,
            "JOB_LEASE_SECONDS": f"{o.lease:g}",
            "MAX_CONCURRENT_JOBS": str(o.concurrency),
            # Pacing is not what this soak is about: room for 4 requests per job.
            "ONEMIN_REQUESTS_PER_MINUTE": str(max(600, int(o.rate * 60 * 4))),
            "DEFAULT_USER_LIMIT": "1000000",
            "LIMIT_PERIOD": "lifetime",
            "UPSCALE_COST": "1",
        }

    def spawn(self, shard: int) -> None:
        """Start the process for ``shard`` (from this thread: its death signal is tied
        to the thread that forks it)."""
        self.runs[shard] += 1
        log = (self.out / f"bot{shard}-{self.runs[shard]}.log").open("ab")
        try:
            self.procs[shard] = subprocess.Popen(
                [sys.executable, "-m", "tests.bot_process"],
                env=self.env(shard),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        self.born[self.procs[shard].pid] = time.time()

    async def start(self) -> None:
        for shard in range(self.o.processes):
            self.spawn(shard)
        deadline = time.monotonic() + START_TIMEOUT
        while not (self.connected() == self.o.processes and self.discord.global_commands):
            dead = [s for s, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise SoakError(f"shards {dead or 'all'} did not start; see {self.out}")
            await asyncio.sleep(0.1)

    def connected(self) -> int:
        return len(set(self.discord.connected_shards()))

    async def watch(self) -> None:
        """Start again (after RESTART_DELAY, as a service manager would) any process that
        ended without the soak killing it, and note it."""
        while not self.stopping:
            for shard, proc in list(self.procs.items()):
                status = proc.poll()
                if status is None or proc.pid in self.killed:
                    continue
                self.exits.append(Exit(time.monotonic(), shard, proc.pid, status))
                self.killed.add(proc.pid)  # noted once
                self.say(f"shard {shard} (pid {proc.pid}) exited with status {status}")
                await asyncio.sleep(RESTART_DELAY)
                if not self.stopping:
                    self.spawn(shard)
            await asyncio.sleep(WATCH_EVERY)

    async def held_by(self, pid: int) -> tuple[str, ...]:
        rows = await self.db.fetchall(
            "SELECT id FROM jobs WHERE status IN ('intake', 'running') AND lease_owner LIKE ?",
            (f"%:{pid}.%",),
        )
        return tuple(str(r["id"]) for r in rows)

    def calls_from(self, ports: set[int]) -> set[tuple[str, int]]:
        """The callers (addresses) among ``ports`` with an upscale call in flight."""
        return {peer for peer in self.onemin.features_in_flight_from if peer[1] in ports}

    async def kill_and_restart(self, shard: int) -> None:
        """SIGKILL ``shard``'s process, start it again at once; note what it held."""
        proc = self.procs[shard]
        held = await self.held_by(proc.pid)
        ports = await asyncio.to_thread(local_ports, proc.pid)
        calls = self.calls_from(ports)
        self.killed.add(proc.pid)
        proc.kill()
        at = time.monotonic()
        await asyncio.to_thread(proc.wait, 10)
        self.spawn(shard)
        # A call the process sent just before it died may reach the emulator just after.
        await asyncio.sleep(POST_KILL_LOOK)
        calls |= self.calls_from(ports)
        self.kills.append(Kill(at, shard, proc.pid, len(calls), held))
        self.say(
            f"killed shard {shard} (pid {proc.pid}): {len(held)} jobs held,"
            f" {len(calls)} upscale calls in flight; started again",
            at,
        )

    async def stop_all(self) -> dict[int, int | None]:
        """SIGTERM every process, as an owner stops them; their exit statuses."""
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

        async def wait(proc: subprocess.Popen[bytes]) -> int | None:
            try:
                return await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                return None

        statuses = await asyncio.gather(*(wait(p) for p in self.procs.values()))
        return dict(zip(self.procs, statuses, strict=True))

    def kill_all(self) -> None:
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    # -- traffic and faults ------------------------------------------------------------

    async def traffic(self, until: float) -> None:
        """Members ask at a steady rate until ``until``."""
        n = 0
        while (at := self.started_at + n / self.o.rate) < until:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            n += 1
            index = self.rng.randrange(len(self.members))
            member, shard = self.members[index], index % self.o.processes
            if shard not in self.discord.connected_shards():
                self.skipped += 1
                continue
            side = self.rng.randrange(48, 129)
            colour = (self.rng.randrange(256), self.rng.randrange(256), self.rng.randrange(256))
            image = self.discord.attachment(png((side, side), colour), f"soak{n}.png")
            fmt = self.rng.choice(("png", "jpeg", "webp"))
            self.asked.append(
                await self.discord.slash(
                    "upscale",
                    {"image": image, "format": fmt},
                    member=member,
                    channel=self.guilds[shard].channel,
                )
            )

    async def kills_loop(self, until: float) -> None:
        while True:
            await asyncio.sleep(self.rng.uniform(*KILL_EVERY))
            alive = [s for s, p in self.procs.items() if p.poll() is None]
            if time.monotonic() >= until or not alive:
                return
            await self.kill_and_restart(self.rng.choice(alive))

    async def db_faults_loop(self, until: float) -> None:
        for i in range(1_000_000):
            await asyncio.sleep(self.rng.uniform(*DB_FAULT_EVERY))
            start = time.monotonic()
            if start >= until:
                return
            kind = self.o.db_faults[i % len(self.o.db_faults)]
            if kind == "reset":
                detail = f"{self.proxy.reset()} connections reset"
                end = start
            else:
                length = self.rng.uniform(*DB_FAULT_SECONDS)
                (self.proxy.refuse if kind == "refuse" else self.proxy.stall)(length)
                end = start + length
                detail = f"{length:.1f} s" + (
                    f", longer than the {self.o.lease:g} s lease" if length > self.o.lease else ""
                )
            self.faults.append(Fault(f"db {kind}", start, end, detail))
            self.say(f"database: {kind} ({detail})")

    async def onemin_faults_loop(self, until: float) -> None:
        for i in range(1_000_000):
            await asyncio.sleep(self.rng.uniform(*ONEMIN_FAULT_EVERY))
            now = time.monotonic()
            if now >= until:
                return
            name, route, fault, times, options = ONEMIN_FAULTS[i % len(ONEMIN_FAULTS)]
            self.onemin.fail(route, fault, times=times, **options)
            self.faults.append(Fault("1min.ai", now, now, name))
            self.say(f"1min.ai: {name}")

    def heal(self) -> None:
        """Stop every fault now; a refusal or stall still running ends here."""
        self.proxy.heal()
        self.onemin.clear_faults()
        now = time.monotonic()
        self.faults = [dataclasses.replace(f, end=min(f.end, now)) for f in self.faults]

    async def progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            acked = sum(it.ack_status == 200 for it in self.asked)
            self.say(
                f"asked {len(self.asked)}, acknowledged {acked},"
                f" results posted {len(posts(self.discord.versions))},"
                f" kills {len(self.kills)}, faults {len(self.faults)}"
            )

    def where(self, it: Injected) -> str:
        """When and in which shard ``it`` was asked, for the report."""
        shard = next((s for s, g in enumerate(self.guilds) if g.channel is it.channel), -1)
        return f"(asked at {it.sent_at - self.started_at:.1f} s, shard {shard})"

    def say(self, text: str, at: float | None = None) -> None:
        """A progress line, stamped with seconds since the traffic started (or ``at``)."""
        when = (time.monotonic() if at is None else at) - self.started_at
        print(f"[{when:6.0f} s] {text}", flush=True)

    # -- the run -----------------------------------------------------------------------

    async def drained(self) -> bool:
        """No job unfinished, no credit reserved, and every acknowledged reply final, or
        nothing changed on Discord for QUIET s (a reply still thinking then stays so)."""
        row = await self.db.fetchone(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE status IN ('intake', 'queued', 'running'))"
            " AS jobs, (SELECT COUNT(*) FROM ledger_entries WHERE state = 'reserved') AS held"
        )
        assert row is not None
        if int(row["jobs"]) or int(row["held"]):
            return False
        asks = [ask_of(it) for it in self.asked]
        if all(a.final for a in asks if a.message_id is not None):
            return True
        last = max((h[-1].at for h in self.discord.versions.values()), default=0.0)
        return time.monotonic() - last > QUIET

    async def run(self) -> dict[str, Any]:
        """Start, load, fault, drain, stop; what the checks need."""
        await self.start()
        self.started_at = time.monotonic()
        until = self.started_at + self.o.minutes * 60
        self.say(f"{self.o.processes} processes up; traffic and faults for {self.o.minutes:g} min")
        background = [
            asyncio.create_task(self.watch()),
            asyncio.create_task(self.progress()),
            asyncio.create_task(self.kills_loop(until)),
            asyncio.create_task(self.db_faults_loop(until)),
            asyncio.create_task(self.onemin_faults_loop(until)),
        ]
        try:
            await self.traffic(until)
            self.traffic_ended = time.time()
            for task in background[2:]:
                task.cancel()
            await asyncio.gather(*background[2:], return_exceptions=True)
            self.heal()
            self.say("faults stopped; draining")
            await asyncio.sleep(ACK_GRACE)
            deadline = time.monotonic() + self.o.drain
            for _ in range(int(self.o.drain / DRAIN_POLL) + 1):  # polled: no event to wait on
                drained = await self.drained()
                if drained or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(DRAIN_POLL)
            self.say("drained" if drained else f"not drained after {self.o.drain:g} s")
            await asyncio.sleep(SETTLE)
            connected = self.connected()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        statuses = await self.stop_all()
        self.say(f"stopped: exit statuses {sorted(statuses.values(), key=str)}")
        return {
            "drained": drained,
            "connected": connected,
            "stop_statuses": statuses,
            "last": {shard: proc.pid for shard, proc in self.procs.items()},
        }

    async def collect(self) -> Collected:
        """The jobs, the ledger entries and the usage counters, as the fleet left them.
        Each job's outcome and trail is also written to ``jobs.jsonl`` beside the logs."""
        jobs = []
        rows = await self.db.fetchall(
            "SELECT id, guild_id, member_id, status, error_kind, reservation_id, context, trail"
            " FROM jobs ORDER BY created_at"
        )
        kept = "".join(
            json.dumps({k: r[k] for k in ("id", "status", "error_kind", "trail")}) + "\n"
            for r in rows
        )
        await asyncio.to_thread((self.out / "jobs.jsonl").write_text, kept)
        for r in rows:
            context = front_context(r["context"])
            trail = parse_trail(r["trail"])
            for event in trail:
                if event.stage == "claimed" and (pid := pid_of(event.process)) is not None:
                    self.last_claim[pid] = max(self.last_claim.get(pid, 0.0), event.at)
            ends = sum(e.stage in ENDS for e in trail)
            jobs.append(
                JobRow(
                    str(r["id"]),
                    int(r["guild_id"]),
                    int(r["member_id"]),
                    str(r["status"]),
                    r["error_kind"],
                    r["reservation_id"],
                    int(context["msg"]) if context.get("msg") else None,
                    ends,
                    sum(e.stage == "upscaling" for e in trail),
                )
            )
        entries = [
            LedgerRow(
                str(r["id"]),
                int(r["guild_id"]),
                int(r["member_id"]),
                int(r["cost"]),
                str(r["state"]),
                r["job_id"],
            )
            for r in await self.db.fetchall(
                "SELECT id, guild_id, member_id, cost, state, job_id FROM ledger_entries"
            )
        ]
        usage = {
            (int(r["guild_id"]), int(r["member_id"])): int(r["used"])
            for r in await self.db.fetchall("SELECT guild_id, member_id, used FROM member_usage")
        }
        return jobs, entries, usage

    def logs(self) -> dict[str, str]:
        return {p.name: p.read_text(errors="replace") for p in sorted(self.out.glob("bot*.log"))}


class SoakError(Exception):
    """The soak could not run (not a finding about the bot)."""


# -- the report ------------------------------------------------------------------------


def report(soak: Soak, ran: dict[str, Any], collected: Collected) -> tuple[list[Check], list[str]]:
    """The checks' lines and the summary's."""
    jobs, entries, usage = collected
    versions = soak.discord.versions
    asks = [ask_of(it, soak.where(it)) for it in soak.asked]
    reserved = sum(e.state == "reserved" for e in entries)
    delivered = [j for j in jobs if j.status == "delivered"]
    checks = [
        check_outcomes(jobs, reserved, versions, asks),
        check_ledger(jobs, entries, 1, usage),
        check_upscales(soak.onemin.upscales, len(delivered), soak.kills, jobs),
        check_overwrites(versions),
        check_tracebacks(soak.logs()),
        check_processes(
            soak.exits,
            sum(soak.runs.values()),
            len(soak.kills),
            ran["connected"],
            soak.o.processes,
            idle(ran["last"], soak.born, soak.last_claim, soak.traffic_ended),
        ),
    ]
    acked = [a for a in asks if a.message_id is not None]
    recorded = {j.message_id for j in jobs}
    words = Counter(a.content[:60] for a in acked if a.final and a.message_id not in recorded)
    failed = Counter(str(j.error_kind) for j in jobs if j.status == "failed")
    delivered_at = first_posts(versions)
    acked_at = {a.message_id: a.acked_at for a in acked}
    waits = [
        delivered_at[j.id[:8]] - t
        for j in delivered
        if j.id[:8] in delivered_at and (t := acked_at.get(j.message_id)) is not None
    ]
    kinds = Counter(f.kind for f in soak.faults)
    stalls_over = sum(f.kind == "db stall" and "lease" in f.detail for f in soak.faults)
    back = recovery(soak.faults, soak.kills, delivered_at)
    summary = [
        f"asked {len(soak.asked)} ({soak.skipped} more not sent: shard down);"
        f" acknowledged {len(acked)}, not acknowledged {len(soak.asked) - len(acked)};"
        f" jobs recorded {len(jobs)}, answered in words without a job {sum(words.values())}"
        + (f" ({'; '.join(f'{w!r} x{n}' for w, n in words.most_common(3))})" if words else ""),
        f"delivered {len(delivered)}; failed {sum(failed.values())}"
        + (f" ({', '.join(f'{k} {n}' for k, n in failed.most_common())})" if failed else "")
        + f"; cancelled {sum(j.status == 'cancelled' for j in jobs)};"
        f" refunded {sum(e.state == 'refunded' for e in entries)}",
        f"faults: kills {len(soak.kills)}, "
        + ", ".join(f"{k} {kinds[k]}" for k in ("db reset", "db refuse", "db stall", "1min.ai"))
        + f"; stalls longer than the lease {stalls_over};"
        f" 1min.ai upscale calls {soak.onemin.calls['upscale']}, upscales {soak.onemin.upscales}",
        f"acknowledgement to delivery: {seconds(waits)}",
        "delivering again after: "
        + "; ".join(
            f"{k} {seconds(back[k])}"
            for k in ("kill", "kill: its jobs", "db reset", "db refuse", "db stall", "1min.ai")
            if k in back
        ),
        f"drained: {'yes' if ran['drained'] else 'no'}; logs in {soak.out}",
    ]
    return checks, summary


async def soak_database() -> str:
    """The soak's database beside the test server's (made on first use)."""
    parts = urlsplit(BASE_PG_URL)
    if parts.hostname not in LOOPBACK:
        raise SoakError(f"TEST_DATABASE_URL must name 127.0.0.1, not {parts.hostname}")
    name = f"{parts.path.strip('/') or 'postgres'}_soak"
    try:
        conn = await asyncpg.connect(BASE_PG_URL, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise SoakError(f"PostgreSQL at {parts.hostname}:{parts.port or 5432}: {exc}") from None
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(parts._replace(path=f"/{name}"))


async def drop_schema(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


async def run(options: Options) -> int:
    """The whole soak; its exit status."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = OUT / f"soak-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    # The emulators' own complaints (a killed process's request cut short) go to a file,
    # not between the soak's lines.
    logging.basicConfig(
        filename=out / "emulators.log", level=logging.WARNING, format=LOG_FORMAT, force=True
    )
    try:
        db_url = await soak_database()
    except SoakError as exc:
        print(f"soak: cannot run: {exc}", file=sys.stderr)
        return 2
    schema = f"soak_{uuid.uuid4().hex[:12]}"
    db = await open_database(db_url, schema=schema)
    try:
        async with (
            RecordingDiscordEmulator(token=DISCORD_TOKEN) as discord_emu,
            OneMinEmulator(api_key=ONEMIN_KEY) as onemin,
            FaultProxy.to(db_url) as proxy,
        ):
            onemin.upscale_delay = options.latency
            with tempfile.TemporaryDirectory(prefix="soak-spool-") as spool:
                soak = Soak(
                    options, out, Path(spool), discord_emu, onemin, proxy, db, db_url, schema
                )
                try:
                    async with asyncio.timeout(options.deadline()):
                        ran = await soak.run()
                    collected = await soak.collect()
                except SoakError as exc:
                    print(f"soak: cannot run: {exc}", file=sys.stderr)
                    return 2
                except TimeoutError:
                    print(f"FAIL soak: hard deadline ({options.deadline():.0f} s) reached")
                    return 1
                finally:
                    soak.kill_all()
                checks, summary = report(soak, ran, collected)
    finally:
        await db.close()
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            await drop_schema(db_url, schema)
    for check in checks:
        print(check.line())
    for line in summary:
        print(line)
    (out / "summary.json").write_text(
        json.dumps(
            {
                "options": dataclasses.asdict(options),
                "checks": [dataclasses.asdict(c) for c in checks],
                "summary": summary,
                "kills": [dataclasses.asdict(k) for k in soak.kills],
                "faults": [dataclasses.asdict(f) for f in soak.faults],
                "exits": [dataclasses.asdict(e) for e in soak.exits],
            },
            indent=2,
        )
    )
    return 0 if all(c.passed for c in checks) else 1


def parse(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--rate", type=float, default=2.0, help="upscales per second")
    p.add_argument("--members", type=int, default=60)
    p.add_argument("--lease", type=float, default=5.0, help="JOB_LEASE_SECONDS (at least 3)")
    p.add_argument("--latency", type=float, default=1.0, help="seconds 1min.ai takes per upscale")
    p.add_argument("--concurrency", type=int, default=8, help="MAX_CONCURRENT_JOBS")
    p.add_argument("--drain", type=float, default=180.0, help="seconds to finish after the faults")
    p.add_argument(
        "--db-faults",
        default=",".join(DB_FAULTS),
        help="the database faults' order, cycled (reset, refuse, stall)",
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args(argv)
    faults = tuple(f.strip() for f in a.db_faults.split(",") if f.strip())
    if not faults or set(faults) - set(DB_FAULTS):
        p.error(f"--db-faults: a list of {', '.join(DB_FAULTS)}")
    if a.processes < 1 or a.members < a.processes or a.rate <= 0 or a.minutes <= 0:
        p.error("--processes >= 1, --members >= --processes, --rate and --minutes > 0")
    return Options(
        minutes=a.minutes,
        processes=a.processes,
        rate=a.rate,
        members=a.members,
        lease=a.lease,
        latency=a.latency,
        concurrency=a.concurrency,
        drain=a.drain,
        db_faults=faults,
        log_level=a.log_level,
        seed=a.seed,
    )


async def _main(options: Options) -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run(options)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    try:
        return asyncio.run(_main(options))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak interrupted: processes killed, schema dropped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
