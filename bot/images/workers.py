"""The image worker: the heaviest image work on results, in a process of its own.

Checking a 16-megapixel result, fitting it under an upload limit and cutting a Compare
region from it decode it (64 MB), and a fit encodes it again (~110 MB more), holding the
GIL for tens of milliseconds at a time inside Pillow. In the bot's process that would
stall the event loop and stack up memory with every job in flight.
:class:`ImageWorkers` runs that work (:mod:`bot.images.imagework`) in one worker process
instead, one call at a time, so at most one result is decoded at once; the worker runs
at a lower priority than the bot. Small results skip it: a result of at most
:data:`IN_PROCESS_PIXELS` is checked (or cut for Compare) in a thread, and one already
within the upload limit is returned as it is.

Results stay in files. The job queue streams each download into its spool
(:meth:`bot.onemin.client.OneMinClient.download_to`); the worker opens the image from that path
(Pillow reads it block by block while decoding), so neither process holds a whole result
as bytes. Only small things come back: the format and size, the input's Compare crop
(at most tens of KB), a Compare image (under 2 MB), and the fitted image through a
temporary file (at most the upload limit).

The worker is a plain ``python -c`` child speaking length-prefixed pickles on its pipes
(see :mod:`bot.images.imagework`), not a :mod:`multiprocessing` pool: "spawn" would also start
multiprocessing's resource tracker (another interpreter, ~13 MB) and import the bot's
main script again in the worker (discord.py, aiohttp and the drivers, ~30 MB). If the
worker dies (e.g. killed for memory), the call fails with :class:`WorkerDied` and the
next call starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pickle
import shutil
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bot
from bot import images
from bot.images import compare, heap
from bot.images.decode import open_result
from bot.images.fit import fit_to_limit
from bot.images.imagework import HEADER_BYTES, ResultCheck, ResultUnusable, inspect_result

__all__ = ["IN_PROCESS_PIXELS", "ImageWorkers", "ResultCheck", "ResultUnusable", "WorkerDied"]

log = logging.getLogger(__name__)

# Results of at most this many pixels (a decode of at most 4 MB) are checked in a thread
# of the bot's process: a round trip to the worker, or a wait behind a large fit there,
# would cost small jobs more than their decode.
IN_PROCESS_PIXELS = 1024 * 1024
IN_PROCESS_CONCURRENCY = 2  # such small checks at once in the bot's process
WORKER_CODE = "from bot.images.imagework import main; main()"
# Put first on the worker's import path, so it imports this very ``bot`` package.
BOT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(bot.__file__)))
STOP_TIMEOUT = 5.0  # seconds for the worker to exit once its input is closed


class WorkerDied(Exception):
    """The worker process ended during a call (the next call starts a new one)."""


class ImageWorkers:
    """Runs result checks and fits in a worker process started on first use."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._calls = asyncio.Lock()  # one call at a time, in order
        self._threads = asyncio.Semaphore(IN_PROCESS_CONCURRENCY)
        self._dir: Path | None = None
        self._reaping: set[asyncio.Task[int]] = set()

    @property
    def worker_pid(self) -> int | None:
        """The worker process's id while one runs."""
        return self._process.pid if self._process is not None else None

    def spool(self) -> Path:
        """The directory of the files handed to the worker (made on first use)."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="upscaler-fit-"))
        return self._dir

    async def _worker(self) -> asyncio.subprocess.Process:
        if self._process is None or self._process.returncode is not None:
            path = os.pathsep.join(p for p in (BOT_ROOT, os.environ.get("PYTHONPATH")) if p)
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                WORKER_CODE,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": path},
            )
            log.debug("Image worker started (pid %d)", self._process.pid)
        return self._process

    async def _call(self, name: str, *args: Any) -> Any:
        """Run ``imagework.CALLS[name](*args)`` in the worker; its exception is raised."""
        async with self._calls:
            process = await self._worker()
            assert process.stdin is not None and process.stdout is not None
            request = pickle.dumps((name, args), protocol=pickle.HIGHEST_PROTOCOL)
            try:
                process.stdin.write(len(request).to_bytes(HEADER_BYTES, "big") + request)
                await process.stdin.drain()
                size = int.from_bytes(await process.stdout.readexactly(HEADER_BYTES), "big")
                ok, value = pickle.loads(await process.stdout.readexactly(size))
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                self._discard(process)
                raise WorkerDied(f"the image worker ended during {name}") from exc
            except BaseException:
                # Cancelled mid-call: its answer would be read as the next call's.
                self._discard(process)
                raise
        if ok:
            return value
        raise value

    def _discard(self, process: asyncio.subprocess.Process) -> None:
        """Kill the worker (if it still runs) and reap it in the background."""
        if self._process is process:
            self._process = None
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        task = asyncio.get_running_loop().create_task(process.wait())
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def check_result(
        self, result: Path, input_image: bytes | None, input_size: tuple[int, int]
    ) -> ResultCheck:
        """Check the downloaded result in ``result`` and crop the input for Compare.

        See :func:`bot.images.imagework.inspect_result`; ``input_image`` is the image sent to
        the upscaler (no crops without it). Raises :class:`ResultUnusable`, or
        :class:`WorkerDied`.
        """
        async with self._threads:
            here = await asyncio.to_thread(_inspect_if_small, result, input_image, input_size)
        if here is not None:
            return here
        input_path = None
        if input_image is not None:
            input_path = self.spool() / f"{uuid.uuid4().hex}.input"
            await asyncio.to_thread(input_path.write_bytes, input_image)
        try:
            checked: ResultCheck = await self._call(
                "inspect", str(result), input_path and str(input_path), input_size
            )
        finally:
            if input_path is not None:
                await asyncio.to_thread(_unlink, input_path)
        return checked

    async def fit(
        self, source: Path, fmt: str, limit_bytes: int, filename_stem: str
    ) -> images.FittedImage:
        """The result in the file ``source`` within ``limit_bytes``.

        See :func:`bot.images.fit.fit_to_limit`. A file already within the limit is read
        (never decoded) in a thread; a larger one is fitted in the worker, from the file.
        Raises :class:`WorkerDied` if the worker ends meanwhile.
        """
        as_is = await asyncio.to_thread(_fit_if_within, source, fmt, limit_bytes, filename_stem)
        if as_is is not None:
            return as_is
        target = self.spool() / f"{uuid.uuid4().hex}.out"
        try:
            fitted: images.FittedImage = await self._call(
                "fit", str(source), str(target), fmt, limit_bytes, filename_stem
            )
            out = await asyncio.to_thread(target.read_bytes)
        finally:
            await asyncio.to_thread(_unlink, target)
        return dataclasses.replace(fitted, data=out)

    async def render_compare(
        self,
        crops: compare.CompareCrops,
        labels: tuple[str, str],
        fetch: Callable[[Path], Awaitable[object]],
    ) -> bytes:
        """The Compare image (PNG) of ``crops``, its after half cut from the posted result.

        ``fetch`` writes the posted result into the path it is given (a spool file,
        removed afterwards). A result of at most :data:`IN_PROCESS_PIXELS` is cut and
        rendered in a thread, a larger one in the worker. Raises what ``fetch`` raises,
        :class:`bot.images.compare.CompareError`, or :class:`WorkerDied`.
        """
        path = self.spool() / f"{uuid.uuid4().hex}.posted"
        try:
            await fetch(path)
            async with self._threads:
                image = await asyncio.to_thread(_render_if_small, crops, path, labels)
            if image is not None:
                return image
            rendered: bytes = await self._call("compare", crops, str(path), labels)
            return rendered
        finally:
            await asyncio.to_thread(_unlink, path)

    async def close(self) -> None:
        """Stop the worker (its input closes, so it exits) and remove the temporary files."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                self._discard(process)
        if self._reaping:
            await asyncio.gather(*self._reaping, return_exceptions=True)
        if self._dir is not None:
            await asyncio.to_thread(shutil.rmtree, self._dir, ignore_errors=True)
            self._dir = None


def _small_or_unreadable(result: Path) -> bool:
    """True when the result's header says it decodes small, or cannot be read at all
    (then the check fails at once, decoding nothing)."""
    try:
        with open_result(result) as im:
            width, height = im.size
    except Exception:
        return True
    return width * height <= IN_PROCESS_PIXELS


def _inspect_if_small(
    result: Path, input_image: bytes | None, input_size: tuple[int, int]
) -> ResultCheck | None:
    """The check of a small (or unreadable) result, made here; None for the worker's.

    The header read and the check in one thread hop: for a small job the hops between
    the event loop and the threads cost more than the image work.
    """
    if not _small_or_unreadable(result):
        return None
    return _inspect_and_trim(result, input_image, input_size)


def _inspect_and_trim(
    result: Path, input_image: bytes | None, input_size: tuple[int, int]
) -> ResultCheck:
    try:
        return inspect_result(result, input_image, input_size)
    finally:
        heap.trim()


def _render_if_small(
    crops: compare.CompareCrops, result: Path, labels: tuple[str, str]
) -> bytes | None:
    """The Compare image cut from a small (or unreadable) posted result, made here;
    None when the worker should make it."""
    if not _small_or_unreadable(result):
        return None
    try:
        return compare.render(crops, result=result, labels=labels)
    finally:
        heap.trim()


def _fit_if_within(
    source: Path, fmt: str, limit_bytes: int, filename_stem: str
) -> images.FittedImage | None:
    """A result file already within ``limit_bytes``, as it is (read, never decoded);
    None when it must be fitted, in the worker."""
    if source.stat().st_size > limit_bytes:
        return None
    return fit_to_limit(source, fmt, limit_bytes, filename_stem)


def _unlink(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
