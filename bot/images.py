"""Image handling for upscales: validate and prepare inputs, fit results under an upload cap.

Everything here is synchronous, CPU-bound Pillow work; callers run it in a thread with
``asyncio.to_thread``. Nothing here knows about Discord or HTTP.

* :func:`prepare_input` turns an untrusted upload into something the upscaler accepts
  (``ONEMIN_API.md`` section 5: png/jpeg/webp, 32-1,536 px a side, at most about one
  megapixel, aspect ratio 1:2.5 to 2.5:1), or raises :class:`ImageRejected` with a plain
  message for the user. The format is sniffed from the content, dimensions are read from
  the header before anything is decoded, and decompression bombs are refused unopened.
* :func:`fit_to_limit` makes a (large) result fit an upload limit: lossless re-encoding
  when that can plausibly be enough, then high-quality lossy WebP/JPEG, then downscaling.
* :func:`describe_image` decodes a result fully and says what it is, so an empty,
  truncated or non-image "result" is caught before it is delivered.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image

log = logging.getLogger(__name__)

HEAD_BYTES = 64  # enough of a file's start to recognise every format we sniff
BYTES_PER_MB = 1000 * 1000
BYTES_PER_MIB = 1024 * 1024
LIMIT_ROUNDING = 0.02  # an upload limit this close to a whole MiB is named by that MiB
JUST_OVER_RATIO = 1.01  # sizes this close above a limit are called "just over" it

# Rejection kinds (ImageRejected.kind); the front end may map them to its own wording.
EMPTY = "empty"
NOT_IMAGE = "not_image"
UNSUPPORTED = "unsupported"
TOO_LARGE = "too_large"
TOO_SMALL = "too_small"
BOMB = "bomb"
ASPECT = "aspect"
CORRUPT = "corrupt"

# Formats we decode (Pillow format ids) and formats the upscaler takes as they are.
DECODABLE_FORMATS = frozenset({"PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"})
UPLOAD_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
SUPPORTED_WORDS = "PNG, JPEG, WebP, GIF, BMP or TIFF"

# Modes that go to the upscaler unchanged (anything else is converted first).
_PASS_MODES = {"PNG": {"RGB", "RGBA", "L"}, "JPEG": {"RGB", "L"}, "WEBP": {"RGB", "RGBA"}}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"
_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})
_ANIMATION_WORDS = {"GIF": "Animated GIF", "PNG": "Animated PNG", "WEBP": "Animated WebP"}
_BMFF_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1"})
_BMFF_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_BMP_DIB_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})

# fit_to_limit tuning.
LOSSY_QUALITIES = (90, 80)  # tried in order at full size before any downscaling
LOSSLESS_PLAUSIBLE_RATIO = 1.25  # lossless WebP is ~20-30% smaller than a typical PNG
FIT_TRY = 0.97  # a full encode is attempted when the estimate is this far under the limit
RESIZE_AIM = 0.92  # downscaling aims this far under the limit (estimates are within ~5%)
RESIZE_MIN_STEP = 0.95  # each downscale step shrinks the sides at least this much
MAX_RESIZE_ATTEMPTS = 12
MIN_FIT_SIDE = 16  # px; below this we give up rather than deliver a smudge
SAMPLE_GRID = 4  # size estimates encode a SAMPLE_GRID x SAMPLE_GRID mosaic of tiles...
SAMPLE_TILE = 256  # ...of this many px a side...
SAMPLE_WHOLE_PIXELS = 2 * (SAMPLE_GRID * SAMPLE_TILE) ** 2  # ...unless the image is small
WEBP_METHOD = 4  # libwebp effort 0-6; 4 is its default and a good speed/size balance
WEBP_LOSSLESS_METHOD = 0  # fastest lossless effort (1.5 s for 16 MP vs 5 s at method 1)
RESULT_BOMB_PIXELS = 64_000_000  # results are at most 4x of ~1 MP, i.e. ~17 MP
FLOAT_SLACK = 1e-9  # 2500 * (1536 / 2500) is 1535.9999999999998 in floating point


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
    """An input we will not send to the upscaler; ``message`` is plain words for the user."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __repr__(self) -> str:
        return f"ImageRejected({self.kind!r}, {self.message!r})"

    def __reduce__(self) -> tuple[type[ImageRejected], tuple[str, str]]:
        return type(self), (self.kind, self.message)  # picklable, e.g. from a process pool


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
    notes: tuple[str, ...]  # plain sentences for the user


@dataclass(frozen=True, slots=True)
class FittedImage:
    """A result made to fit an upload limit (or left alone when it already did)."""

    data: bytes
    format: str  # "png" | "jpeg" | "webp"
    filename: str
    size: tuple[int, int]
    resized: bool
    reencoded: bool
    note: str | None  # plain sentence for the user when anything was done


# --------------------------------------------------------------------------- sniffing


def sniff(head: bytes) -> str | None:
    """Recognise an image format from a file's first bytes (never from its name).

    Returns a Pillow-style format id ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "AVIF",
    "HEIF", "ICO", "JPEG2000", "JXL", "PSD") or None when the bytes are not an image we
    know. Only some of these can be prepared (:data:`DECODABLE_FORMATS`).
    """
    head = bytes(head[:HEAD_BYTES])
    if head.startswith(_PNG_SIGNATURE):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and len(head) >= 18:
        if int.from_bytes(head[14:18], "little") in _BMP_DIB_HEADER_SIZES:
            return "BMP"
        return None
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        box_end = min(int.from_bytes(head[:4], "big"), len(head))
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, box_end - 3, 4)}
        if brands & _BMFF_AVIF_BRANDS:
            return "AVIF"
        if brands & _BMFF_HEIF_BRANDS:
            return "HEIF"
        return None
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xffO\xffQ")):
        return "JPEG2000"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "JXL"
    if head.startswith(b"8BPS"):
        return "PSD"
    if head.startswith(b"\x00\x00\x01\x00") and len(head) >= 6 and head[4:6] != b"\x00\x00":
        return "ICO"
    return None


def _what_it_looks_like(head: bytes) -> str | None:
    """A few words naming a common non-image, for the refusal message."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"%pdf"):
        return "a PDF document"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "an SVG vector drawing"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "a web page"
    if text.startswith(b"<?xml"):
        return "an XML document"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if decoded and all(c.isprintable() or c in "\t\r\n" for c in decoded):
        return "text"
    return None


# --------------------------------------------------------------------------- inputs


def prepare_input(
    source: bytes | os.PathLike[str] | str,
    filename: str,
    limits: ImageLimits = ImageLimits(),
) -> PreparedImage:
    """Validate an untrusted upload and turn it into something the upscaler accepts.

    ``source`` is the file's bytes or a path to it; ``filename`` is only used to name the
    output (the format is always sniffed from the content). Raises :class:`ImageRejected`
    (and nothing else for bad input) with ``kind`` one of the module's kind constants.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_file_size(len(data), limits)
        with io.BytesIO(data) as fp:
            return _prepare(fp, len(data), filename, limits, data)
    with open(os.fspath(source), "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        _check_file_size(size, limits)
        return _prepare(fp, size, filename, limits, None)


def _check_file_size(size: int, limits: ImageLimits) -> None:
    if size == 0:
        raise ImageRejected(EMPTY, "That file is empty (0 bytes).")
    if size > limits.max_bytes:
        limit = human_bytes(limits.max_bytes)
        if size < limits.max_bytes * JUST_OVER_RATIO:  # "50.0 MB, limit 50 MB" reads oddly
            message = f"That file is just over the {limit} limit."
        else:
            message = f"That file is {human_bytes(size)}; the limit is {limit}."
        raise ImageRejected(TOO_LARGE, message)


def _prepare(
    fp: BinaryIO, file_size: int, filename: str, limits: ImageLimits, data: bytes | None
) -> PreparedImage:
    head = fp.read(HEAD_BYTES)
    fp.seek(0)
    fmt = sniff(head)
    if fmt is None:
        looks = _what_it_looks_like(head)
        what = f" (it looks like {looks})" if looks else ""
        raise ImageRejected(
            NOT_IMAGE,
            f"That file is not an image the upscaler can read{what}. "
            f"Send a {SUPPORTED_WORDS} image.",
        )
    if fmt not in DECODABLE_FORMATS:
        raise ImageRejected(
            UNSUPPORTED,
            f"{_format_words(fmt)} images are not supported. Send a {SUPPORTED_WORDS} image.",
        )

    if fmt == "WEBP":
        # Pillow's WebP reader allocates the whole canvas when it opens the file, so the
        # size is checked from the bitstream header first.
        canvas = _webp_canvas(head)
        if canvas and canvas[0] * canvas[1] > limits.bomb_pixels:
            raise ImageRejected(BOMB, _bomb_message(canvas))
    im = _open(fp, fmt, limits.bomb_pixels)
    with im:
        width, height = im.size
        _check_geometry(width, height, limits)
        animated = _is_animated(im, fmt)
        target = _fit_size(width, height, limits)
        resized = target != (width, height)
        if resized and fmt == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale when that still covers the target: far less
            # memory and time for big photos, and libjpeg's DCT scaling is high quality.
            _guard(lambda: im.draft(None, target), fmt)
        # The one full decode. It must come before anything that decodes implicitly (a
        # PNG's getexif() does): Pillow does not retry a failed load, it skips it.
        _guard(im.load, fmt)
        orientation = _orientation(im)

        swaps = orientation in _SWAPS_AXES
        original_size = (height, width) if swaps else (width, height)
        final_size = (target[1], target[0]) if swaps else target
        png_16bit = fmt == "PNG" and len(head) > 24 and head[12:16] == b"IHDR" and head[24] == 16
        notes: list[str] = []
        if animated:
            notes.append(
                "Multi-page TIFF: used the first page."
                if fmt == "TIFF"
                else f"{_ANIMATION_WORDS.get(fmt, 'Animated image')}: used the first frame."
            )
        if fmt not in UPLOAD_FORMATS:
            notes.append(f"Converted from {fmt} to PNG for the upscaler.")

        passthrough = (
            fmt in UPLOAD_FORMATS
            and im.format == fmt  # not MPO (a JPEG carrying extra pictures)
            and not animated
            and orientation == 1
            and not resized
            and not png_16bit
            and im.mode in _PASS_MODES[fmt]
            and _ends_cleanly(fp, fmt, file_size, head)
        )
        if passthrough:
            if data is None:
                fp.seek(0)
                data = fp.read()
            out_format = fmt.lower()
            out_data = data
        else:
            out_format = "png"
            out_data = _convert_and_encode(im, fmt, target, orientation, png_16bit, notes)

    if resized:
        notes.append(
            f"Scaled down from {_dims(original_size)} to {_dims(final_size)} to fit the "
            f"upscaler's {_pixel_limit_words(original_size, limits)}."
        )
    log.debug(
        "Prepared %s %s -> %s %s (%d -> %d bytes)",
        fmt,
        _dims(original_size),
        out_format,
        _dims(final_size),
        file_size,
        len(out_data),
    )
    return PreparedImage(
        data=out_data,
        format=out_format,
        content_type=CONTENT_TYPES[out_format],
        filename=f"{_safe_stem(filename)}.{EXTENSIONS[out_format]}",
        original_size=original_size,
        size=final_size,
        source_format=fmt,
        notes=tuple(notes),
    )


def _open(fp: BinaryIO, fmt: str, bomb_pixels: int) -> Image.Image:
    """Open lazily (header only) as exactly the sniffed format; refuse bombs unopened."""
    try:
        im = Image.open(fp, formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard (above 2 x Image.MAX_IMAGE_PIXELS) fired in the header read.
        raise ImageRejected(BOMB, _bomb_message(None)) from exc
    except Exception as exc:
        log.debug("Could not open %s input: %r", fmt, exc)
        raise ImageRejected(CORRUPT, _corrupt_message(fmt)) from exc
    width, height = im.size
    if width <= 0 or height <= 0:
        im.close()
        raise ImageRejected(CORRUPT, _corrupt_message(fmt))
    if width * height > bomb_pixels:
        im.close()
        raise ImageRejected(BOMB, _bomb_message((width, height)))
    return im


def _webp_canvas(head: bytes) -> tuple[int, int] | None:
    """The canvas size a WebP header declares (VP8X, VP8L or VP8), if it is readable."""
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        return (
            int.from_bytes(head[26:28], "little") & 0x3FFF,
            int.from_bytes(head[28:30], "little") & 0x3FFF,
        )
    return None


def _guard(step: Callable[[], object], fmt: str | None = None) -> None:
    """Run a Pillow decoding step; any failure means the file is damaged."""
    try:
        step()
    except Exception as exc:
        log.debug("Decoding failed: %r", exc)
        raise ImageRejected(CORRUPT, _corrupt_message(fmt)) from exc


def _check_geometry(width: int, height: int, limits: ImageLimits) -> None:
    if min(width, height) < limits.min_side:
        raise ImageRejected(
            TOO_SMALL,
            f"That image is {_dims((width, height))} pixels; the upscaler needs at least "
            f"{limits.min_side} pixels on each side.",
        )
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect:
        number = f"{ratio:.2f}".rstrip("0").rstrip(".")
        shape = f"{number}:1" if width >= height else f"1:{number}"
        raise ImageRejected(
            ASPECT,
            f"That image is {_dims((width, height))}, an aspect ratio of {shape}. "
            f"The upscaler accepts shapes from 1:{limits.max_aspect:g} (tall) to "
            f"{limits.max_aspect:g}:1 (wide); crop it closer to square and try again.",
        )


def _is_animated(im: Image.Image, fmt: str) -> bool:
    """Whether the image has more frames (an MPO's extra pictures do not count)."""
    try:
        return bool(getattr(im, "is_animated", False)) and im.format != "MPO"
    except Exception as exc:
        log.debug("Could not count frames: %r", exc)
        raise ImageRejected(CORRUPT, _corrupt_message(fmt)) from exc


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation of a loaded image (1 when absent or unreadable)."""
    try:
        orientation = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # unreadable EXIF is not worth refusing the picture for
        return 1
    return orientation if orientation in _ORIENTATION_FIX else 1


def _fit_size(width: int, height: int, limits: ImageLimits) -> tuple[int, int]:
    """The largest size with the same shape within the pixel and side limits."""
    if width * height <= limits.max_pixels and max(width, height) <= limits.max_side:
        return width, height
    long_side, short_side = max(width, height), min(width, height)
    scale = min(math.sqrt(limits.max_pixels / (width * height)), limits.max_side / long_side)
    new_long = min(limits.max_side, max(1, math.floor(long_side * scale + FLOAT_SLACK)))
    new_short = max(1, math.floor(short_side * new_long / long_side))
    # Flooring the short side can tip a shape at exactly the limit (e.g. 2.5:1) over it.
    if new_long / new_short > limits.max_aspect:
        new_short = math.ceil(new_long / limits.max_aspect)
    while new_long * new_short > limits.max_pixels and new_long > 1:
        new_long -= 1
        new_short = max(1, math.floor(short_side * new_long / long_side))
        if new_long / new_short > limits.max_aspect:
            new_short = math.ceil(new_long / limits.max_aspect)
    return (new_long, new_short) if width >= height else (new_short, new_long)


def _ends_cleanly(fp: BinaryIO, fmt: str, file_size: int, head: bytes) -> bool:
    """True when nothing follows the image data (so no appended payload is passed on)."""
    if fmt == "WEBP":
        riff_size = int.from_bytes(head[4:8], "little") + 8
        return riff_size in (file_size, file_size - 1)
    fp.seek(max(0, file_size - len(_PNG_IEND)))
    tail = fp.read()
    if fmt == "PNG":
        return tail == _PNG_IEND
    return tail.endswith(_JPEG_EOI)


def _convert_and_encode(
    im: Image.Image,
    fmt: str,
    target: tuple[int, int],
    orientation: int,
    png_16bit: bool,
    notes: list[str],
) -> bytes:
    """Bring a decoded image to an uploadable mode and size, upright, as PNG bytes."""
    icc_profile = im.info.get("icc_profile") if im.mode in ("RGB", "RGBA") else None
    try:
        out, mode_note = _to_upload_mode(im)
        if png_16bit and mode_note is None:
            mode_note = "Reduced from 16 to 8 bits per channel."
        if mode_note:
            notes.append(mode_note)
        if out.size != target:
            out = out.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        if orientation != 1:
            out = out.transpose(_ORIENTATION_FIX[orientation])
        buffer = io.BytesIO()
        out.save(buffer, "PNG", icc_profile=icc_profile)
    except Exception as exc:
        log.warning("Could not convert a %s image in mode %s", fmt, im.mode, exc_info=True)
        raise ImageRejected(
            UNSUPPORTED, f"That image uses a colour format the bot cannot convert ({im.mode})."
        ) from exc
    return buffer.getvalue()


def _to_upload_mode(im: Image.Image) -> tuple[Image.Image, str | None]:
    """Return the image in RGB, RGBA or L (converted when needed) and a note if lossy."""
    mode = im.mode
    transparent = "transparency" in im.info
    if (mode in ("RGB", "L") and not transparent) or mode == "RGBA":
        return im, None
    if mode in ("RGB", "L"):  # a colour key (PNG tRNS) becomes a real alpha channel
        return im.convert("RGBA"), None
    if mode.startswith("I;16") or mode == "I":
        wide = im if mode == "I" else im.convert("I")
        return wide.point(lambda v: v * (1 / 256)).convert("L"), (
            "Reduced from 16 to 8 bits per channel."
        )
    if mode in ("1", "F"):
        return im.convert("L"), None
    if mode == "CMYK":
        return im.convert("RGB"), "Converted from CMYK to RGB colour."
    if mode in ("P", "PA"):
        return im.convert("RGBA" if transparent or mode == "PA" else "RGB"), None
    if "A" in im.getbands() or "a" in im.getbands():
        return im.convert("RGBA"), None
    return im.convert("RGB"), None


# --------------------------------------------------------------------------- results


def describe_image(data: bytes) -> tuple[str, tuple[int, int]]:
    """Decode an image fully and return its format ("png", "jpeg", ...) and size.

    Raises :class:`ImageRejected` for empty, unrecognised, oversized or damaged data, so a
    0-byte or truncated "result" is caught rather than delivered.
    """
    if not data:
        raise ImageRejected(EMPTY, "The image is empty (0 bytes).")
    im = _open_result(data)
    with im:
        _guard(im.load, im.format)
        return (im.format or "").lower(), im.size


def _open_result(data: bytes) -> Image.Image:
    fmt = sniff(data[:HEAD_BYTES])
    if fmt is None or fmt not in DECODABLE_FORMATS:
        raise ImageRejected(NOT_IMAGE, "The data is not an image the bot can read.")
    return _open(io.BytesIO(data), fmt, RESULT_BOMB_PIXELS)


def fit_to_limit(data: bytes, fmt: str, limit_bytes: int, filename_stem: str) -> FittedImage:
    """Return the image within ``limit_bytes``, changing as little as possible.

    ``fmt`` is the requested format ("png", "jpeg" or "webp"). In order: the data as it is
    if it fits; lossless WebP (same pixels) when that can plausibly be enough for a PNG or
    WebP; lossy WebP (or JPEG when JPEG was requested) at quality 90 then 80; then
    downscaling, each step sized from an estimate made on a sample of the image. A result
    already within the limit is returned as it is without being decoded (check results
    with :func:`describe_image`). Raises
    :class:`ImageRejected` for data that is not a decodable image, and ``ValueError`` if
    even a tiny version cannot fit (a limit of a few bytes).
    """
    requested = "jpeg" if fmt.lower() in ("jpg", "jpeg") else fmt.lower()
    stem = _clean_stem(filename_stem)
    sniffed = sniff(data[:HEAD_BYTES])
    actual = sniffed.lower() if sniffed in UPLOAD_FORMATS else requested
    if len(data) <= limit_bytes:
        with _open_result(data) as im:
            size = im.size
        return FittedImage(data, actual, _named(stem, actual), size, False, False, None)

    with _open_result(data) as opened:
        _guard(opened.load, opened.format)
        im, _ = _to_upload_mode(opened)
        im.load()
    if im.mode == "RGBA" and im.getchannel("A").getextrema() == (255, 255):
        im = im.convert("RGB")  # an opaque alpha channel only costs bytes
    full_size = im.size
    limit_words = f"Discord's {_limit_mib(limit_bytes)} upload limit"

    def done(out: bytes, out_fmt: str, what: str, size: tuple[int, int]) -> FittedImage:
        resized = size != full_size
        tail = "; the original file is linked below."
        if resized:
            tail = f"; the full-size original ({_dims(full_size)}) is linked below."
        log.debug("Fitted %s (%d bytes) into %d bytes: %s", requested, len(data), limit_bytes, what)
        return FittedImage(
            out,
            out_fmt,
            _named(stem, out_fmt),
            size,
            resized,
            True,
            f"{what} to fit {limit_words}{tail}",
        )

    worth_trying, aim = limit_bytes * FIT_TRY, limit_bytes * RESIZE_AIM
    if (
        requested == "png"
        and len(data) <= limit_bytes * LOSSLESS_PLAUSIBLE_RATIO
        and _sampled_size(im, "webp", None) <= worth_trying
    ):
        out = _encode(im, "webp", None)
        if len(out) <= limit_bytes:
            return done(out, "webp", "Converted to lossless WebP (identical pixels)", full_size)

    lossy = "jpeg" if requested == "jpeg" else "webp"
    lossy_words = "JPEG" if lossy == "jpeg" else "WebP"
    if lossy == "jpeg" and im.mode not in ("RGB", "L"):
        im = _flatten(im)
    # Full-size encodes are the expensive part (seconds for 16 MP of WebP), so each one is
    # attempted only when an estimate from a sample of the image says it will fit.
    estimate = 0.0
    for quality in LOSSY_QUALITIES:
        estimate = _sampled_size(im, lossy, quality)
        if estimate <= worth_trying:
            out = _encode(im, lossy, quality)
            if len(out) <= limit_bytes:
                return done(
                    out, lossy, f"Re-encoded as {lossy_words} (quality {quality})", full_size
                )
            estimate = len(out)

    scale = 1.0
    for _ in range(MAX_RESIZE_ATTEMPTS):
        scale *= min(RESIZE_MIN_STEP, math.sqrt(aim / estimate))
        new_size = (round(full_size[0] * scale), round(full_size[1] * scale))
        if min(new_size) < MIN_FIT_SIDE:
            break
        smaller = im.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        estimate = _sampled_size(smaller, lossy, quality)
        if estimate > worth_trying:
            continue
        out = _encode(smaller, lossy, quality)
        if len(out) <= limit_bytes:
            return done(
                out,
                lossy,
                f"Scaled down to {_dims(new_size)} and re-encoded as {lossy_words} "
                f"(quality {quality})",
                new_size,
            )
        estimate = len(out)
    raise ValueError(f"cannot fit a {_dims(full_size)} image into {limit_bytes} bytes")


def _sampled_size(im: Image.Image, fmt: str, quality: int | None) -> float:
    """Estimate the encoded size of ``im`` from a mosaic of tiles spread over it.

    Encoding a 4x4 grid of 256 px tiles costs about 1/16 of a 4096x4096 encode and
    predicts its size well, because tiles keep the image's own detail per pixel.
    """
    width, height = im.size
    tile_w, tile_h = min(SAMPLE_TILE, width // SAMPLE_GRID), min(SAMPLE_TILE, height // SAMPLE_GRID)
    if width * height <= SAMPLE_WHOLE_PIXELS or min(tile_w, tile_h) < MIN_FIT_SIDE:
        return float(len(_encode(im, fmt, quality)))
    mosaic = Image.new(im.mode, (tile_w * SAMPLE_GRID, tile_h * SAMPLE_GRID))
    for row in range(SAMPLE_GRID):
        for col in range(SAMPLE_GRID):
            x = (width - tile_w) * col // (SAMPLE_GRID - 1)
            y = (height - tile_h) * row // (SAMPLE_GRID - 1)
            mosaic.paste(im.crop((x, y, x + tile_w, y + tile_h)), (col * tile_w, row * tile_h))
    sampled = len(_encode(mosaic, fmt, quality))
    return sampled * (width * height) / (mosaic.width * mosaic.height)


def _encode(im: Image.Image, fmt: str, quality: int | None) -> bytes:
    """Encode as lossy (quality given) or lossless (quality None) WebP, or as JPEG."""
    if fmt == "jpeg":
        # Through a real file: Pillow then encodes with the GIL released. Into a BytesIO
        # an optimised JPEG is one long call that holds it (~0.3 s for 16 MP), which
        # would stall the event loop.
        with tempfile.TemporaryFile() as spool:
            im.save(spool, "JPEG", quality=quality, optimize=True)
            spool.seek(0)
            return spool.read()
    buffer = io.BytesIO()
    if quality is None:
        im.save(buffer, "WEBP", lossless=True, quality=0, method=WEBP_LOSSLESS_METHOD)
    else:
        im.save(buffer, "WEBP", quality=quality, method=WEBP_METHOD)
    return buffer.getvalue()


def _flatten(im: Image.Image) -> Image.Image:
    """Composite an image with alpha onto white, for JPEG."""
    rgba = im.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


# --------------------------------------------------------------------------- wording


def _dims(size: tuple[int, int]) -> str:
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


def _limit_mib(limit_bytes: int) -> str:
    """An upload limit in MiB, as Discord states it.

    Callers often keep a small margin under the real limit (10 MiB - 64 KiB); that still
    reads as "10 MiB".
    """
    mib = limit_bytes / BYTES_PER_MIB
    whole = round(mib)
    if whole >= 1 and abs(mib - whole) <= whole * LIMIT_ROUNDING:
        return f"{whole} MiB"
    return f"{mib:.1f} MiB" if mib >= 1 else human_bytes(limit_bytes)


def _pixel_limit_words(original: tuple[int, int], limits: ImageLimits) -> str:
    """Name the limit that forced the downscale (the tighter of the two)."""
    width, height = original
    pixel_scale = math.sqrt(limits.max_pixels / (width * height))
    if pixel_scale <= limits.max_side / max(width, height):
        megapixels = limits.max_pixels / BYTES_PER_MIB  # 1,048,576 px is "1 megapixel"
        if megapixels == int(megapixels):
            return f"{int(megapixels)} megapixel limit"
        return f"{limits.max_pixels:,} pixel limit"
    return f"{limits.max_side} pixel side limit"


def _format_words(fmt: str) -> str:
    return {"HEIF": "HEIC/HEIF", "JXL": "JPEG XL", "JPEG2000": "JPEG 2000"}.get(fmt, fmt)


def _bomb_message(size: tuple[int, int] | None) -> str:
    claimed = f" claims to be {_dims(size)} pixels, which" if size else ""
    return (
        f"That image{claimed} is far too large to process safely, so it was refused "
        "without opening it."
    )


def _corrupt_message(fmt: str | None) -> str:
    what = f"{fmt} " if fmt else ""
    return f"That {what}image is damaged or incomplete and cannot be read."


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
MAX_STEM_CHARS = 64


def _safe_stem(filename: str) -> str:
    """A harmless file name stem from a user-supplied name (no path, no odd characters)."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return _clean_stem(name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name)


def _clean_stem(stem: str) -> str:
    stem = _UNSAFE_NAME_CHARS.sub("_", stem).strip("._")[:MAX_STEM_CHARS]
    return stem or "image"


def _named(stem: str, fmt: str) -> str:
    return f"{stem}.{EXTENSIONS.get(fmt, fmt)}"
