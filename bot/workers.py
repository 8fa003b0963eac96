"""A small process pool for the heaviest image work: fitting big results under a limit.

Encoding a 16-megapixel result holds the GIL for tens of milliseconds at a time inside
Pillow; with several in threads the event loop stalls for hundreds of milliseconds. In a
separate process the loop stays responsive. Results that already fit skip the pool.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from bot import images

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 2  # processes; each holds one decoded result (~64-200 MB) at a time


class ImageWorkers:
    """Runs :func:`bot.images.fit_to_limit` in worker processes started on first use."""

    def __init__(self, max_workers: int = DEFAULT_WORKERS) -> None:
        self._max_workers = max_workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # "spawn": a clean interpreter, never a fork of a process with running threads.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self._max_workers, mp_context=context)
        return self._pool

    async def fit(
        self, data: bytes, fmt: str, limit_bytes: int, filename_stem: str
    ) -> images.FittedImage:
        """The result within ``limit_bytes`` (see :func:`bot.images.fit_to_limit`)."""
        if len(data) <= limit_bytes:
            return await asyncio.to_thread(
                images.fit_to_limit, data, fmt, limit_bytes, filename_stem
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor(), images.fit_to_limit, data, fmt, limit_bytes, filename_stem
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
