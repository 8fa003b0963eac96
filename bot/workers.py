"""A small process pool for the heaviest image work: fitting big results under a limit.

Encoding a 16-megapixel result holds the GIL for tens of milliseconds at a time inside
Pillow; with several in threads the event loop stalls for hundreds of milliseconds. In a
separate process the loop stays responsive. Results that already fit skip the pool. The
workers run at a lower priority than the bot (see :data:`WORKER_NICENESS`).

The image goes to the worker, and the fitted image comes back, through temporary files,
not through the pool's pipe: pickling a 50 MB result copies it while holding the GIL (in
the pool's feeder thread, which stalls the event loop) and costs a transient copy of it
on each side. File reads and writes release the GIL. After each fit the worker hands the
freed memory back to the OS (``malloc_trim``): a WebP encode of 16 MP touches ~400 MB,
which glibc would otherwise keep resident in the idle worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import shutil
import tempfile
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bot import images

log = logging.getLogger(__name__)

# Processes. One: a full-size WebP encode of 16 MP already keeps a core busy and touches
# ~400 MB; a second worker would double that peak on a 2-core machine for little gain
# (the bot, the HTTP traffic and Discord's uploads need the other core).
DEFAULT_WORKERS = 1
# Added to the workers' niceness: on a busy 2-core machine the event loop (acks, the
# HTTP traffic) gets the CPU first, and fitting, which nobody waits on to the
# millisecond, takes what is left.
WORKER_NICENESS = 10


class ImageWorkers:
    """Runs :func:`bot.images.fit_to_limit` in worker processes started on first use."""

    def __init__(self, max_workers: int = DEFAULT_WORKERS) -> None:
        self._max_workers = max_workers
        self._pool: ProcessPoolExecutor | None = None
        self._dir: Path | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # "spawn": a clean interpreter, never a fork of a process with running threads.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                self._max_workers, mp_context=context, initializer=_lower_priority
            )
        return self._pool

    def _spool(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="upscaler-fit-"))
        return self._dir

    async def fit(
        self, data: bytes, fmt: str, limit_bytes: int, filename_stem: str
    ) -> images.FittedImage:
        """The result within ``limit_bytes`` (see :func:`bot.images.fit_to_limit`)."""
        if len(data) <= limit_bytes:
            return await asyncio.to_thread(
                images.fit_to_limit, data, fmt, limit_bytes, filename_stem
            )
        source = self._spool() / f"{uuid.uuid4().hex}.in"
        target = source.with_suffix(".out")
        try:
            await asyncio.to_thread(source.write_bytes, data)
            loop = asyncio.get_running_loop()
            fitted = await loop.run_in_executor(
                self._executor(), _fit_file, str(source), str(target), fmt, limit_bytes,
                filename_stem,
            )  # fmt: skip
            out = await asyncio.to_thread(target.read_bytes)
        finally:
            await asyncio.to_thread(_unlink, source, target)
        return dataclasses.replace(fitted, data=out)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _fit_file(
    source: str, target: str, fmt: str, limit_bytes: int, filename_stem: str
) -> images.FittedImage:
    """In the worker: fit the image in ``source``, write the bytes to ``target``.

    Returns the :class:`~bot.images.FittedImage` without its bytes (they are in
    ``target``).
    """
    try:
        fitted = images.fit_to_limit(Path(source).read_bytes(), fmt, limit_bytes, filename_stem)
        with open(target, "wb") as fh:
            fh.write(fitted.data)
        return dataclasses.replace(fitted, data=b"")
    finally:
        _malloc_trim()


def _lower_priority() -> None:
    """In the worker: yield the CPU to the bot's event loop when both want it."""
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)


def _unlink(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
