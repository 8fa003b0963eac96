"""Opening untrusted image data safely, and bringing it to a mode the upscaler takes.

Shared by :mod:`bot.images.prepare` (inputs) and :mod:`bot.images.fit` (results):
headers are read before anything is decoded, decompression bombs are refused unopened,
and any decoding failure becomes an :class:`ImageRejected` ("damaged").

A result is an :data:`ImageSource`: its bytes, or the path of the file holding them. A
file is opened as a file (Pillow reads it block by block while decoding), so a large
result is never held as bytes and decoded pixels at once.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeAlias

from PIL import Image

from bot.i18n import Text
from bot.images.model import ImageRejected, Note, Rejection, dims
from bot.images.sniff import DECODABLE_FORMATS, HEAD_BYTES, sniff

log = logging.getLogger(__name__)

RESULT_BOMB_PIXELS = 64_000_000  # results are at most 4x of ~1 MP, i.e. ~17 MP

ImageSource: TypeAlias = bytes | Path  # image data, or the file that holds it

NOTE_16BIT = Text.of("note.reduced_16bit")
NOTE_CMYK = Text.of("note.cmyk")


def bomb(size: tuple[int, int] | None) -> ImageRejected:
    """The refusal of an image too large to open (with its claimed size when known)."""
    if size is None:
        return ImageRejected(Rejection.BOMB, "image.bomb")
    return ImageRejected(Rejection.BOMB, "image.bomb_claimed", size=dims(size))


def corrupt(fmt: str | None) -> ImageRejected:
    """The refusal of damaged or incomplete data (naming its format when known)."""
    if fmt is None:
        return ImageRejected(Rejection.CORRUPT, "image.corrupt")
    return ImageRejected(Rejection.CORRUPT, "image.corrupt_format", format=fmt)


def open_image(fp: BinaryIO | Path, fmt: str, bomb_pixels: int) -> Image.Image:
    """Open lazily (header only) as exactly the sniffed format; refuse bombs unopened.

    A path is opened by Pillow, which closes the file once the image is loaded (or when
    the image is closed, or used as a context manager).
    """
    try:
        im = Image.open(fp, formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard (above 2 x Image.MAX_IMAGE_PIXELS) fired in the header read.
        raise bomb(None) from exc
    except Exception as exc:
        log.debug("Could not open %s input: %r", fmt, exc)
        raise corrupt(fmt) from exc
    width, height = im.size
    if width <= 0 or height <= 0:
        im.close()
        raise corrupt(fmt)
    if width * height > bomb_pixels:
        im.close()
        raise bomb((width, height))
    return im


def guard(step: Callable[[], object], fmt: str | None = None) -> None:
    """Run a Pillow decoding step; any failure means the file is damaged."""
    try:
        step()
    except Exception as exc:
        log.debug("Decoding failed: %r", exc)
        raise corrupt(fmt) from exc


def to_upload_mode(im: Image.Image) -> tuple[Image.Image, Note | None]:
    """Return the image in RGB, RGBA or L (converted when needed) and a note if lossy."""
    mode = im.mode
    transparent = "transparency" in im.info
    if (mode in ("RGB", "L") and not transparent) or mode == "RGBA":
        return im, None
    if mode in ("RGB", "L"):  # a colour key (PNG tRNS) becomes a real alpha channel
        return im.convert("RGBA"), None
    if mode.startswith("I;16") or mode == "I":
        wide = im if mode == "I" else im.convert("I")
        return wide.point(lambda v: v * (1 / 256)).convert("L"), NOTE_16BIT
    if mode in ("1", "F"):
        return im.convert("L"), None
    if mode == "CMYK":
        return im.convert("RGB"), NOTE_CMYK
    if mode in ("P", "PA"):
        return im.convert("RGBA" if transparent or mode == "PA" else "RGB"), None
    if "A" in im.getbands() or "a" in im.getbands():
        return im.convert("RGBA"), None
    return im.convert("RGB"), None


def describe_image(source: ImageSource) -> tuple[str, tuple[int, int]]:
    """Decode an image fully and return its format ("png", "jpeg", ...) and size.

    Raises :class:`ImageRejected` for empty, unrecognised, oversized or damaged data, so a
    0-byte or truncated "result" is caught rather than delivered.
    """
    if source_size(source) == 0:
        raise ImageRejected(Rejection.EMPTY, "image.result_empty")
    im = open_result(source)
    with im:
        guard(im.load, im.format)
        return (im.format or "").lower(), im.size


def open_result(source: ImageSource) -> Image.Image:
    """Open a result (or any decodable image) lazily, refusing non-images and bombs."""
    fmt = sniff(source_head(source))
    if fmt is None or fmt not in DECODABLE_FORMATS:
        raise ImageRejected(Rejection.NOT_IMAGE, "image.result_not_image")
    fp = source if isinstance(source, Path) else io.BytesIO(source)
    return open_image(fp, fmt, RESULT_BOMB_PIXELS)


def source_head(source: ImageSource) -> bytes:
    """The first :data:`HEAD_BYTES` of the image (enough to sniff its format)."""
    if isinstance(source, Path):
        with source.open("rb") as fh:
            return fh.read(HEAD_BYTES)
    return source[:HEAD_BYTES]


def source_size(source: ImageSource) -> int:
    """The image's length in bytes."""
    return source.stat().st_size if isinstance(source, Path) else len(source)
