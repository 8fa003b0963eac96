"""A small process pool for the heaviest image work on results: checking them, making
their Compare crops, and fitting them under an upload limit.

Decoding a 16-megapixel result, and encoding it again, holds the GIL for tens of
milliseconds at a time inside Pillow and touches hundreds of MB; in the bot's process
that would stall the event loop and stack up memory with every job in flight. In one
separate process the loop stays responsive, and at most one result is decoded at a time
(see :data:`DEFAULT_WORKERS`). Small results skip the pool: a result of at most
:data:`IN_PROCESS_PIXELS` is checked in a thread, and one already within the upload
limit is returned as it is. The workers run at a lower priority than the bot (see
:data:`WORKER_NICENESS`).

Results stay in files. The job queue streams each download into its spool
(:meth:`bot.onemin.OneMinClient.download_to`); the worker opens the image from that path
(Pillow reads it block by block while decoding), so neither process holds a whole result
as bytes. Only small things come back through the pool's pipe: the format and size, the
Compare crops (tens of KB), and the fitted image through a temporary file (at most the
upload limit): pickling megabytes would copy them while holding the GIL in the pool's
feeder thread, which stalls the event loop. After each call the worker hands the freed
memory back to the OS (``malloc_trim``), which glibc would otherwise keep resident in the
idle worker.

This module is imported by the worker process: it must stay light (Pillow and
:mod:`bot.images`, :mod:`bot.compare`; no database or HTTP client).
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
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bot import compare, images
from bot.images.decode import open_result

log = logging.getLogger(__name__)

# Processes. One: a full decode of 16 MP is 48-64 MB and a WebP encode of it ~110 MB more;
# a second worker would double that peak on a 2-core machine for little gain (the bot,
# the HTTP traffic and Discord's uploads need the other core).
DEFAULT_WORKERS = 1
# Added to the workers' niceness: on a busy 2-core machine the event loop (acks, the
# HTTP traffic) gets the CPU first, and image work, which nobody waits on to the
# millisecond, takes what is left.
WORKER_NICENESS = 10
# Results of at most this many pixels (a decode of at most 4 MB) are checked in a thread
# of the bot's process: a round trip to the worker, or a wait behind a large fit there,
# would cost small jobs more than their decode.
IN_PROCESS_PIXELS = 1024 * 1024
IN_PROCESS_CONCURRENCY = 2  # such small checks at once in the bot's process
# A result must be at least this much larger per side than the input (catches an
# unchanged or tiny "upscaled" image).
MIN_RESULT_SCALE = 2.0

_T = TypeVar("_T")


class ResultUnusable(Exception):
    """The result is not a decodable image clearly larger than the input."""


@dataclass(frozen=True, slots=True)
class ResultCheck:
    """What checking a result found: its format and size, and the Compare crops.

    ``crops`` is None when they could not be made (``no_crops`` says why); the result can
    still be delivered, without a Compare button.
    """

    format: str
    size: tuple[int, int]
    crops: compare.CompareCrops | None
    no_crops: str = ""


class ImageWorkers:
    """Runs result checks and fits in worker processes started on first use."""

    def __init__(self, max_workers: int = DEFAULT_WORKERS) -> None:
        self._max_workers = max_workers
        self._pool: ProcessPoolExecutor | None = None
        self._dir: Path | None = None
        self._threads = asyncio.Semaphore(IN_PROCESS_CONCURRENCY)

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

    async def _in_worker(self, func: Callable[..., _T], *args: Any) -> _T:
        pool = self._executor()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, func, *args)
        except BrokenProcessPool:
            # The worker died (e.g. killed for memory): the next call starts a new one.
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise

    async def check_result(
        self, result: Path, input_image: bytes | None, input_size: tuple[int, int]
    ) -> ResultCheck:
        """Check the downloaded result in ``result`` and make its Compare crops.

        See :func:`inspect_result`; ``input_image`` is the image sent to the upscaler (no
        crops without it). Raises :class:`ResultUnusable`.
        """
        if await asyncio.to_thread(_small_or_unreadable, result):
            async with self._threads:
                return await asyncio.to_thread(_inspect_and_trim, result, input_image, input_size)
        input_path = self._spool() / f"{uuid.uuid4().hex}.input"
        if input_image is not None:
            await asyncio.to_thread(input_path.write_bytes, input_image)
        try:
            return await self._in_worker(
                _inspect_file, str(result), str(input_path), input_image is not None, input_size
            )
        finally:
            await asyncio.to_thread(_unlink, input_path)

    async def fit(
        self, source: Path, fmt: str, limit_bytes: int, filename_stem: str
    ) -> images.FittedImage:
        """The result in the file ``source`` within ``limit_bytes``.

        See :func:`bot.images.fit_to_limit`. A file already within the limit is read
        (never decoded) in a thread; a larger one is fitted in the worker, from the file.
        """
        stat = await asyncio.to_thread(source.stat)
        if stat.st_size <= limit_bytes:
            return await asyncio.to_thread(
                images.fit_to_limit, source, fmt, limit_bytes, filename_stem
            )
        target = self._spool() / f"{uuid.uuid4().hex}.out"
        try:
            fitted = await self._in_worker(
                _fit_file, str(source), str(target), fmt, limit_bytes, filename_stem
            )
            out = await asyncio.to_thread(target.read_bytes)
        finally:
            await asyncio.to_thread(_unlink, target)
        return dataclasses.replace(fitted, data=out)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def inspect_result(
    result: images.ImageSource, input_image: bytes | None, input_size: tuple[int, int]
) -> ResultCheck:
    """Decode the result fully: it must be an image clearly larger than the input. Then
    make the Compare crops (one decode at a time: the check's is freed first).

    Raises :class:`ResultUnusable` when the result is not an image, is damaged or
    truncated, or is less than :data:`MIN_RESULT_SCALE` times the input per side.
    """
    try:
        fmt, size = images.describe_image(result)
    except Exception as exc:
        raise ResultUnusable("result is not a decodable image") from exc
    if size[0] < input_size[0] * MIN_RESULT_SCALE or size[1] < input_size[1] * MIN_RESULT_SCALE:
        raise ResultUnusable(f"result {size} is not an upscale of {input_size}")
    if input_image is None:
        return ResultCheck(fmt, size, None, "the input is no longer stored")
    try:
        crops = compare.make_crops(input_image, result)
    except compare.CompareError as exc:
        return ResultCheck(fmt, size, None, str(exc))
    return ResultCheck(fmt, size, crops)


def _small_or_unreadable(result: Path) -> bool:
    """True when the result's header says it decodes small, or cannot be read at all
    (then the check fails at once, decoding nothing)."""
    try:
        with open_result(result) as im:
            width, height = im.size
    except Exception:
        return True
    return width * height <= IN_PROCESS_PIXELS


def _inspect_and_trim(
    result: Path, input_image: bytes | None, input_size: tuple[int, int]
) -> ResultCheck:
    try:
        return inspect_result(result, input_image, input_size)
    finally:
        _malloc_trim()


def _inspect_file(
    result: str, input_path: str, has_input: bool, input_size: tuple[int, int]
) -> ResultCheck:
    """In the worker: :func:`inspect_result` on the files, then the memory handed back."""
    try:
        input_image = Path(input_path).read_bytes() if has_input else None
        return inspect_result(Path(result), input_image, input_size)
    finally:
        _malloc_trim()


def _fit_file(
    source: str, target: str, fmt: str, limit_bytes: int, filename_stem: str
) -> images.FittedImage:
    """In the worker: fit the image in ``source``, write the bytes to ``target``.

    Returns the :class:`~bot.images.FittedImage` without its bytes (they are in
    ``target``).
    """
    try:
        fitted = images.fit_to_limit(Path(source), fmt, limit_bytes, filename_stem)
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
