"""The CPU and file work the job queue runs in threads: validating inputs, checking
results, making the Compare crops, and handing the decodes' memory back to the OS."""

from __future__ import annotations

import ctypes
from pathlib import Path

from bot import compare, images
from bot.job_model import BadResult

# A result must be at least this much larger per side than the input (catches an
# unchanged or tiny "upscaled" image).
MIN_RESULT_SCALE = 2.0


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


def make_crops_and_trim(input_image: bytes, result: bytes) -> compare.CompareCrops:
    """The Compare crops (decodes the whole result), then the freed memory given back."""
    try:
        return compare.make_crops(input_image, result)
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


def write_spool_file(path: Path, data: bytes) -> None:
    """Write a spool file whole (under a temporary name, then renamed), without fsync.

    Spool files only bridge steps of one intake: the job becomes durable when its row
    and input are committed to the database, and the spool is cleared at start-up. An
    fsync here cost 5-20 ms per job and, in the thread pool, delayed every other job's
    intake behind it.
    """
    tmp = path.with_suffix(path.suffix + ".part")
    with open(tmp, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


def check_result(raw: bytes, input_size: tuple[int, int]) -> tuple[str, tuple[int, int]]:
    """Decode the result's header: it must be an image clearly larger than the input."""
    try:
        fmt, size = images.describe_image(raw)
    except Exception as exc:
        raise BadResult("result is not a decodable image") from exc
    if size[0] < input_size[0] * MIN_RESULT_SCALE or size[1] < input_size[1] * MIN_RESULT_SCALE:
        raise BadResult(f"result {size} is not an upscale of {input_size}")
    return fmt, size


def check_result_and_trim(raw: bytes, input_size: tuple[int, int]) -> tuple[str, tuple[int, int]]:
    try:
        return check_result(raw, input_size)
    finally:
        malloc_trim()
