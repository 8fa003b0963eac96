"""The image work on results, and the worker process that does it for the bot.

:func:`inspect_result` checks a downloaded result and keeps the input's Compare crop;
:func:`fit_file` fits it under an upload limit; :func:`render_file` renders a Compare
image from a posted result. All open the image from its file. The bot runs them in one
worker process (:class:`bot.images.workers.ImageWorkers`), started as
``python -c "from bot.images.imagework import main; main()"``, which serves calls one at a time
over its standard input and output: each message is an 8-byte big-endian length and a
pickle; a call is ``(name, args)`` (a name of :data:`CALLS`), its answer ``(True, value)``
or ``(False, exception)``. The worker exits when its input closes.

This module is all the worker imports besides :mod:`bot.images`, :mod:`bot.images.compare` and
:mod:`bot.images.heap`: keep it light (no asyncio, database driver or HTTP client).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from bot import images
from bot.images import compare, heap
from bot.images.decode import ImageSource, describe_image
from bot.images.fit import fit_to_limit

# Added to the worker's niceness: on a busy 2-core machine the event loop (acks, the
# HTTP traffic) gets the CPU first, and image work, which nobody waits on to the
# millisecond, takes what is left.
WORKER_NICENESS = 10
# A result must be at least this much larger per side than the input (catches an
# unchanged or tiny "upscaled" image).
MIN_RESULT_SCALE = 2.0
HEADER_BYTES = 8  # length prefix of every message, big-endian


class ResultUnusable(Exception):
    """The result is not a decodable image clearly larger than the input."""


@dataclass(frozen=True, slots=True)
class ResultCheck:
    """What checking a result found: its format and size, and what Compare keeps.

    ``crops`` is None when it could not be made (``no_crops`` says why); the result can
    still be delivered, without a Compare button.
    """

    format: str
    size: tuple[int, int]
    crops: compare.CompareCrops | None
    no_crops: str = ""


def inspect_result(
    result: ImageSource, input_image: bytes | None, input_size: tuple[int, int]
) -> ResultCheck:
    """Decode the result fully: it must be an image clearly larger than the input. Then
    crop the input for Compare (:func:`bot.images.compare.input_crop`; the result's side of the
    comparison is cut at click time, from the posted result).

    Raises :class:`ResultUnusable` when the result is not an image, is damaged or
    truncated, or is less than :data:`MIN_RESULT_SCALE` times the input per side.
    """
    try:
        fmt, size = describe_image(result)
    except Exception as exc:
        raise ResultUnusable("result is not a decodable image") from exc
    if size[0] < input_size[0] * MIN_RESULT_SCALE or size[1] < input_size[1] * MIN_RESULT_SCALE:
        raise ResultUnusable(f"result {size} is not an upscale of {input_size}")
    if input_image is None:
        return ResultCheck(fmt, size, None, "the input is no longer stored")
    try:
        crops = compare.input_crop(input_image, size)
    except compare.CompareError as exc:
        return ResultCheck(fmt, size, None, str(exc))
    return ResultCheck(fmt, size, crops)


def inspect_file(result: str, input_path: str | None, input_size: tuple[int, int]) -> ResultCheck:
    """:func:`inspect_result` on files (the input, when there is one, in ``input_path``)."""
    input_image = Path(input_path).read_bytes() if input_path is not None else None
    return inspect_result(Path(result), input_image, input_size)


def fit_file(
    source: str, target: str, fmt: str, limit_bytes: int, filename_stem: str
) -> images.FittedImage:
    """Fit the image in ``source`` (see :func:`bot.images.fit.fit_to_limit`) into ``target``.

    Returns the :class:`~bot.images.FittedImage` without its bytes (they are in
    ``target``).
    """
    fitted = fit_to_limit(Path(source), fmt, limit_bytes, filename_stem)
    with open(target, "wb") as fh:
        fh.write(fitted.data)
    return dataclasses.replace(fitted, data=b"")


def render_file(crops: compare.CompareCrops, result: str, labels: tuple[str, str]) -> bytes:
    """:func:`bot.images.compare.render` with the after half cut from the result in ``result``."""
    return compare.render(crops, result=Path(result), labels=labels)


CALLS: dict[str, Callable[..., Any]] = {
    "inspect": inspect_file,
    "fit": fit_file,
    "compare": render_file,
}


# -- the worker process -----------------------------------------------------------------


def pack(message: object) -> bytes:
    """One message: its length, then its pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(HEADER_BYTES, "big") + data


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """Answer calls from ``requests`` on ``answers`` until ``requests`` ends.

    After each call the freed memory goes back to the OS (:func:`bot.images.heap.trim`): a
    16 MP fit touches ~200 MB, which glibc would otherwise keep in the idle worker.
    """
    while True:
        header = requests.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES:
            return  # the bot closed our input: it stopped, or gave up on us
        size = int.from_bytes(header, "big")
        name, args = pickle.loads(requests.read(size))
        try:
            answer = pack((True, CALLS[name](*args)))
        except Exception as exc:
            try:
                answer = pack((False, exc))
            except Exception:  # an exception that does not pickle: its words, then
                answer = pack((False, RuntimeError(f"{type(exc).__name__}: {exc}")))
        finally:
            heap.trim()
        answers.write(answer)
        answers.flush()


def main() -> None:
    """The worker process's entry point."""
    # Answers go on a private copy of stdout; anything a library prints goes to stderr
    # instead of into an answer.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    heap.map_large_blocks()
    serve(sys.stdin.buffer, answers)
