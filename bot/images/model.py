"""What the image modules share: limits, the refusal, the records they return, sizes.

No words for members live here: a refusal (:class:`ImageRejected`) and every note on a
:class:`PreparedImage` or :class:`FittedImage` is a :class:`bot.i18n.Text`, a catalogue
key (``image.*``, ``note.*``, ``fit.*``) with named parameters, which the front end
renders in the member's language. The helpers at the end format the values that go into
those parameters (pixel sizes, byte counts), which read the same in every language.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

from bot.i18n import Text

BYTES_PER_MB = 1000 * 1000
BYTES_PER_MIB = 1024 * 1024
LIMIT_ROUNDING = 0.02  # an upload limit this close to a whole MiB is named by that MiB


class Rejection(StrEnum):
    """Why an input was refused (:attr:`ImageRejected.kind`); the front end may map a kind
    to its own wording."""

    EMPTY = "empty"
    NOT_IMAGE = "not_image"
    UNSUPPORTED = "unsupported"
    TOO_LARGE = "too_large"
    TOO_SMALL = "too_small"
    BOMB = "bomb"
    ASPECT = "aspect"
    CORRUPT = "corrupt"


CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}

Note: TypeAlias = Text
"""A note for the member about what was done to an image: a catalogue key and params."""


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What the upscaler accepts, and what we refuse outright."""

    max_bytes: int = 50 * BYTES_PER_MB  # input file cap
    min_side: int = 32  # px
    max_pixels: int = 1_048_576  # the API's input pixel limit
    max_side: int = 1536  # px, the API's per-side limit
    max_aspect: float = 2.5  # long side / short side, i.e. 1:2.5 .. 2.5:1
    bomb_pixels: int = 64_000_000  # refuse without decoding above this many pixels


class ImageRejected(Exception):
    """An input we will not send to the upscaler.

    ``kind`` says why (:class:`Rejection`); ``text`` is the member's explanation
    as a catalogue key (``image.*``) with named parameters (``params``), rendered in the
    member's language by the front end (:meth:`render`). ``str()`` is the English text,
    for logs.
    """

    def __init__(self, kind: Rejection, key: str, /, **params: object) -> None:
        self.kind = kind
        self.key = key
        self.params = dict(params)
        super().__init__(self.text.english())

    @property
    def text(self) -> Text:
        return Text(self.key, self.params)

    def render(self, locale: str | None) -> str:
        return self.text.render(locale)

    def __repr__(self) -> str:
        return f"ImageRejected({str(self.kind)!r}, {self.key!r}, {self.params!r})"

    def __reduce__(self) -> tuple[object, ...]:
        # Picklable, e.g. from a process pool: rebuilt from kind, key and params.
        return _rebuild_rejected, (self.kind, self.key, self.params)


def _rebuild_rejected(kind: str, key: str, params: dict[str, object]) -> ImageRejected:
    return ImageRejected(Rejection(kind), key, **params)


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An input ready for upload, and what was done to it."""

    data: bytes
    format: str  # "png" | "jpeg" | "webp": what we upload
    content_type: str
    filename: str
    original_size: tuple[int, int]  # as the user sees it (after EXIF orientation)
    size: tuple[int, int]  # what we upload
    source_format: str  # sniffed, e.g. "GIF"
    notes: tuple[Note, ...]  # ``note.*`` texts for the member


@dataclass(frozen=True, slots=True)
class FittedImage:
    """A result made to fit an upload limit (or left alone when it already did)."""

    data: bytes
    format: str  # "png" | "jpeg" | "webp"
    filename: str
    size: tuple[int, int]
    resized: bool
    reencoded: bool
    note: Note | None  # a ``fit.*`` text for the member when anything was done


# --------------------------------------------------------------------------- values


def dims(size: tuple[int, int]) -> str:
    """A pixel size as members read it: ``640×480``."""
    return f"{size[0]}×{size[1]}"


def human_bytes(count: int) -> str:
    """Bytes in the units people are told: MiB for Discord-style limits, else MB."""
    for unit, name in ((BYTES_PER_MIB, "MiB"), (BYTES_PER_MB, "MB")):
        if count >= unit and count % unit == 0:
            return f"{count // unit} {name}"
    if count >= BYTES_PER_MB:
        return f"{count / BYTES_PER_MB:.1f} MB"
    if count >= 1000:
        return f"{count / 1000:.0f} kB"
    return f"{count} bytes"


def limit_mib(limit_bytes: int) -> str:
    """An upload limit in MiB, as Discord states it.

    Callers often keep a small margin under the real limit (10 MiB - 64 KiB); that still
    reads as "10 MiB".
    """
    mib = limit_bytes / BYTES_PER_MIB
    whole = round(mib)
    if whole >= 1 and abs(mib - whole) <= whole * LIMIT_ROUNDING:
        return f"{whole} MiB"
    return f"{mib:.1f} MiB" if mib >= 1 else human_bytes(limit_bytes)


def format_words(fmt: str) -> str:
    """A sniffed format id as people name it (``HEIF`` -> ``HEIC/HEIF``)."""
    return {"HEIF": "HEIC/HEIF", "JXL": "JPEG XL", "JPEG2000": "JPEG 2000"}.get(fmt, fmt)
