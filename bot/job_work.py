"""The CPU and file work the job queue runs in threads: validating inputs, handing the
decodes' memory back to the OS, and spool files. (Results are checked, and their Compare
crops made, by :mod:`bot.workers`.)"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from bot import images


def prepare_and_trim(
    source: Path, filename: str, limits: images.ImageLimits
) -> images.PreparedImage:
    """Validate and convert, then hand the decode's freed memory back to the OS.

    A 40 MB input decodes to hundreds of MB of short-lived buffers; glibc keeps freed
    blocks in per-thread arenas, so without a trim every queued job would leave several
    MB of resident memory behind.
    """
    try:
        return images.prepare_input(source, filename, limits)
    finally:
        malloc_trim()


def malloc_trim() -> None:
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


def clear_dir(directory: Path) -> int:
    removed = 0
    if directory.is_dir():
        for path in directory.iterdir():
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def write_file(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
