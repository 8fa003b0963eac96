"""Shared pieces of the benchmarks: statistics, tables, emulators in their own process."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import statistics
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "within_3s_share": sum(x < 3000 for x in ms) / len(ms),
        "p50_ms": statistics.median(ms),
        "p95_ms": percentile(ms, 0.95),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms),
    }


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    widths = [max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    for r in rows:
        lines.append(
            "  ".join(cell(r.get(c, "")).rjust(w) for c, w in zip(columns, widths, strict=True))
        )
    return "\n".join(lines)


def emit(name: str, result: Any, json_path: Path | None, text: str | None = None) -> None:
    """Print ``result`` (as a one-row table unless ``text`` is given); write JSON if asked."""
    print(text if text is not None else table([result], list(result)))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({name: result}, indent=2))


EMULATOR_PIDS: set[int] = set()


def _serve_onemin(api_key: str, upscale_delay: float, conn: Any) -> None:
    from tests.emulators.onemin import OneMinEmulator

    async def serve() -> None:
        async with OneMinEmulator(api_key=api_key) as emu:
            emu.upscale_delay = upscale_delay
            conn.send(emu.base_url)
            await asyncio.to_thread(conn.recv)  # any message: stop

    asyncio.run(serve())


@contextmanager
def onemin_in_subprocess(api_key: str, upscale_delay: float = 0.0) -> Iterator[str]:
    """Serve the 1min.ai emulator from another process (its 4x encodes then do not share
    the measured process's GIL). Yields its base URL; the process id is in
    :data:`EMULATOR_PIDS` meanwhile (to leave it out of memory figures)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_onemin, args=(api_key, upscale_delay, child))
    process.start()
    assert process.pid is not None
    EMULATOR_PIDS.add(process.pid)
    try:
        yield parent.recv()
    finally:
        EMULATOR_PIDS.discard(process.pid)
        parent.send("stop")
        process.join(timeout=10)
        if process.is_alive():
            process.kill()


def _status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (0 when the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                text = Path(f"/proc/{parent}/task/{tid}/children").read_text()
            except OSError:
                continue
            for child in text.split():
                found.append(int(child))
                todo.append(int(child))
    return found


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc/<pid>/stat counts CPU time in these


def process_cpu(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of ``pid``: user + system time from
    /proc/<pid>/stat, and that of its children it has waited for; (0, 0) when gone.
    With ``tid``, the own time of that thread of ``pid`` only."""
    where = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        text = Path(where).read_text()
    except OSError:
        return 0.0, 0.0
    # Fields after the command name (which may hold spaces), from the state (field 3):
    # utime, stime, cutime and cstime are fields 14-17.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS


class TreeCpu:
    """CPU time (user + system) a process and its descendants spent between two reads.

    :meth:`read` gives the root's own seconds and its descendants' (live ones, plus those
    that ended and were waited for by their parent: their time moves to the parent's
    children's time, which is counted too). Process ids are remembered per read, so a
    descendant started between two reads counts from its start. Resolution: 1/CLOCK_TICKS s
    per process (10 ms), ample over a burst.
    """

    def __init__(self, pid: int, exclude: Collection[int] = ()) -> None:
        self.pid = pid
        self.exclude = set(exclude)

    def read(self) -> tuple[float, dict[int, float]]:
        """(root's own CPU s, {pid: CPU s}): each descendant's own and reaped children's
        time, and under the root's pid the root's reaped children's time."""
        own, reaped = process_cpu(self.pid)
        others: dict[int, float] = {self.pid: reaped}
        skip: set[int] = set()
        for child in descendants(self.pid):
            if child in self.exclude or child in skip:
                skip.update(descendants(child))
                continue
            child_own, child_reaped = process_cpu(child)
            others[child] = child_own + child_reaped
        return own, others

    @staticmethod
    def spent(
        before: tuple[float, dict[int, float]], after: tuple[float, dict[int, float]]
    ) -> tuple[float, float]:
        """(root's own CPU s, its descendants' CPU s) between two reads."""
        own = after[0] - before[0]
        # Sums, not per pid: a descendant that ended in between moved all its time
        # (before and since) into its parent's reaped time.
        others = sum(after[1].values()) - sum(before[1].values())
        return own, max(0.0, others)


class TreeRss:
    """Samples the resident memory of a process and its descendants from a thread.

    ``peak_mb`` is the largest sum of VmRSS over the tree seen at one sample (every
    ``interval`` s); ``peak_root_mb`` is the root's own VmHWM (kernel-kept peak, exact);
    ``peak_child_mb`` the largest VmHWM of any one descendant seen. Processes in
    ``exclude`` (and their descendants) are left out, e.g. an emulator's process.
    """

    def __init__(
        self, pid: int | None = None, exclude: Collection[int] = (), interval: float = 0.01
    ) -> None:
        self.pid = pid or os.getpid()
        self.exclude = set(exclude)
        self.interval = interval
        self.peak_mb = 0.0
        self.peak_root_mb = 0.0
        self.peak_child_mb = 0.0
        self.children_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="tree-rss", daemon=True)

    def tree(self) -> list[int]:
        pids = [self.pid]
        skip: set[int] = set()
        for child in descendants(self.pid):
            if child in self.exclude or child in skip:
                skip.update(descendants(child))
                continue
            pids.append(child)
        return pids

    def _sample(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self.tree():
                total += _status_kb(pid, "VmRSS")
                if pid != self.pid:
                    self.children_seen.add(pid)
                    hwm = _status_kb(pid, "VmHWM") / 1000
                    self.peak_child_mb = max(self.peak_child_mb, hwm)
            self.peak_mb = max(self.peak_mb, total / 1000)
            self.peak_root_mb = max(self.peak_root_mb, _status_kb(self.pid, "VmHWM") / 1000)
            self._stop.wait(self.interval)

    def current_mb(self) -> float:
        return sum(_status_kb(pid, "VmRSS") for pid in self.tree()) / 1000

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
