"""The CPU and file work the job queue runs in threads: validating inputs, handing the
decodes' memory back to the OS, and spool files. (Results are checked, and their Compare
crops made, by :mod:`bot.images.workers`.)"""

from __future__ import annotations

from pathlib import Path

from bot import images
from bot.images import heap


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
        heap.trim()


def clear_dir(directory: Path) -> int:
    removed = 0
    if directory.is_dir():
        for path in directory.iterdir():
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    return removed
