"""Validating an untrusted upload and turning it into something the upscaler accepts.

``docs/onemin-api.md``, "Input limits": png/jpeg/webp, 32-1,536 px a side, at most about one
megapixel, aspect ratio 1:2.5 to 2.5:1. The format is sniffed from the content,
dimensions are read from the header before anything is decoded, and decompression bombs
are refused unopened. Refusals are :class:`ImageRejected` with an ``image.*`` key; what
was done to an accepted image is told in ``note.*`` notes. :func:`clean_filename` makes
the one clean file name a job's image goes by (stored, sent to 1min.ai, posted).
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import unicodedata
from typing import BinaryIO
from urllib.parse import unquote

from PIL import Image

from bot.i18n import Text
from bot.images.decode import NOTE_16BIT, bomb, corrupt, guard, open_image, to_upload_mode
from bot.images.model import (
    BYTES_PER_MIB,
    CONTENT_TYPES,
    EXTENSIONS,
    ImageLimits,
    ImageRejected,
    Note,
    PreparedImage,
    Rejection,
    dims,
    format_words,
    human_bytes,
)
from bot.images.sniff import (
    DECODABLE_FORMATS,
    HEAD_BYTES,
    UPLOAD_FORMATS,
    looks_like,
    sniff,
    webp_canvas,
)

log = logging.getLogger(__name__)

JUST_OVER_RATIO = 1.01  # sizes this close above a limit are called "just over" it
FLOAT_SLACK = 1e-9  # 2500 * (1536 / 2500) is 1535.9999999999998 in floating point

# Modes that go to the upscaler unchanged (anything else is converted first).
_PASS_MODES = {"PNG": {"RGB", "RGBA", "L"}, "JPEG": {"RGB", "L"}, "WEBP": {"RGB", "RGBA"}}
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
DEFAULT_LIMITS = ImageLimits()
_ANIMATION_NOTES = {
    "TIFF": "note.multipage_tiff",
    "GIF": "note.animated_gif",
    "PNG": "note.animated_png",
    "WEBP": "note.animated_webp",
}


def prepare_input(
    source: bytes | os.PathLike[str] | str,
    filename: str,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> PreparedImage:
    """Validate an untrusted upload and turn it into something the upscaler accepts.

    ``source`` is the file's bytes or a path to it; ``filename`` only names the output
    (:func:`clean_filename` of it for the format sent; the format is always sniffed from
    the content). Raises :class:`ImageRejected` (and nothing else for bad input) with
    ``kind`` one of the module's kind constants.
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
        raise ImageRejected(Rejection.EMPTY, "image.empty")
    if size > limits.max_bytes:
        limit = human_bytes(limits.max_bytes)
        if size < limits.max_bytes * JUST_OVER_RATIO:  # "50.0 MB, limit 50 MB" reads oddly
            raise ImageRejected(Rejection.TOO_LARGE, "image.just_over", limit=limit)
        raise ImageRejected(
            Rejection.TOO_LARGE, "image.too_large", size=human_bytes(size), limit=limit
        )


def _refuse_unreadable(head: bytes) -> ImageRejected:
    looks = looks_like(head)
    if looks is None:
        return ImageRejected(Rejection.NOT_IMAGE, "image.not_image")
    return ImageRejected(
        Rejection.NOT_IMAGE, "image.not_image_looks_like", looks=Text.of(f"image.looks.{looks}")
    )


def _prepare(
    fp: BinaryIO, file_size: int, filename: str, limits: ImageLimits, data: bytes | None
) -> PreparedImage:
    head = fp.read(HEAD_BYTES)
    fp.seek(0)
    fmt = sniff(head)
    if fmt is None:
        raise _refuse_unreadable(head)
    if fmt not in DECODABLE_FORMATS:
        raise ImageRejected(Rejection.UNSUPPORTED, "image.unsupported", format=format_words(fmt))

    if fmt == "WEBP":
        # Pillow's WebP reader allocates the whole canvas when it opens the file, so the
        # size is checked from the bitstream header first.
        canvas = webp_canvas(head)
        if canvas and canvas[0] * canvas[1] > limits.bomb_pixels:
            raise bomb(canvas)
    im = open_image(fp, fmt, limits.bomb_pixels)
    with im:
        width, height = im.size
        _check_geometry(width, height, limits)
        animated = _is_animated(im, fmt)
        target = _fit_size(width, height, limits)
        resized = target != (width, height)
        if resized and fmt == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale when that still covers the target: far less
            # memory and time for big photos, and libjpeg's DCT scaling is high quality.
            guard(lambda: im.draft(None, target), fmt)
        # The one full decode. It must come before anything that decodes implicitly (a
        # PNG's getexif() does): Pillow does not retry a failed load, it skips it.
        guard(im.load, fmt)
        orientation = _orientation(im)

        swaps = orientation in _SWAPS_AXES
        original_size = (height, width) if swaps else (width, height)
        final_size = (target[1], target[0]) if swaps else target
        png_16bit = fmt == "PNG" and len(head) > 24 and head[12:16] == b"IHDR" and head[24] == 16
        notes: list[Note] = []
        if animated:
            notes.append(Text.of(_ANIMATION_NOTES.get(fmt, "note.animated_other")))
        if fmt not in UPLOAD_FORMATS:
            notes.append(Text.of("note.converted", format=fmt))

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
        notes.append(_scaled_down_note(original_size, final_size, limits))
    log.debug(
        "Prepared %s %s -> %s %s (%d -> %d bytes)",
        fmt,
        dims(original_size),
        out_format,
        dims(final_size),
        file_size,
        len(out_data),
    )
    return PreparedImage(
        data=out_data,
        format=out_format,
        content_type=CONTENT_TYPES[out_format],
        filename=clean_filename(filename, out_format),
        original_size=original_size,
        size=final_size,
        source_format=fmt,
        notes=tuple(notes),
    )


def _check_geometry(width: int, height: int, limits: ImageLimits) -> None:
    if min(width, height) < limits.min_side:
        raise ImageRejected(
            Rejection.TOO_SMALL,
            "image.too_small",
            size=dims((width, height)),
            min_side=limits.min_side,
        )
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect:
        number = f"{ratio:.2f}".rstrip("0").rstrip(".")
        shape = f"{number}:1" if width >= height else f"1:{number}"
        raise ImageRejected(
            Rejection.ASPECT,
            "image.aspect",
            size=dims((width, height)),
            shape=shape,
            max_aspect=limits.max_aspect,
        )


def _is_animated(im: Image.Image, fmt: str) -> bool:
    """Whether the image has more frames (an MPO's extra pictures do not count)."""
    try:
        return bool(getattr(im, "is_animated", False)) and im.format != "MPO"
    except Exception as exc:
        log.debug("Could not count frames: %r", exc)
        raise corrupt(fmt) from exc


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
    notes: list[Note],
) -> bytes:
    """Bring a decoded image to an uploadable mode and size, upright, as PNG bytes."""
    icc_profile = im.info.get("icc_profile") if im.mode in ("RGB", "RGBA") else None
    try:
        out, mode_note = to_upload_mode(im)
        if png_16bit and mode_note is None:
            mode_note = NOTE_16BIT
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
        raise ImageRejected(Rejection.UNSUPPORTED, "image.colour_mode", mode=im.mode) from exc
    return buffer.getvalue()


def _scaled_down_note(
    original: tuple[int, int], final: tuple[int, int], limits: ImageLimits
) -> Note:
    """Name the limit that forced the downscale (the tighter of the two)."""
    before, after = dims(original), dims(final)
    width, height = original
    pixel_scale = math.sqrt(limits.max_pixels / (width * height))
    if pixel_scale <= limits.max_side / max(width, height):
        megapixels = limits.max_pixels / BYTES_PER_MIB  # 1,048,576 px is "1 megapixel"
        if megapixels == int(megapixels):
            return Text.of(
                "note.scaled_down_megapixels", before=before, after=after, count=int(megapixels)
            )
        return Text.of(
            "note.scaled_down_pixels", before=before, after=after, pixels=limits.max_pixels
        )
    return Text.of("note.scaled_down_side", before=before, after=after, side=str(limits.max_side))


# -- file names --------------------------------------------------------------------------
#
# A member's file name is untrusted text: it may carry a path, control, bidi or
# percent-encoded characters, hundreds of characters, or a Windows device name. One clean
# name is made from it when the job is recorded (:func:`clean_filename`), and that name is
# the one stored, sent to 1min.ai and, with "_4x", posted to Discord.

MAX_STEM_CHARS = 64  # the stem's length at most, characters
FALLBACK_STEM = "image"  # the stem when nothing usable is left of the name
DEVICE_SUFFIX = "_file"  # appended to a stem that is a Windows device name
# Extensions that name an image format; after any other dot, it is all part of the stem.
IMAGE_EXTENSIONS = frozenset(
    {"png", "apng", "jpg", "jpeg", "jpe", "jfif", "webp", "gif", "bmp", "dib", "tif", "tiff"}
    | {"heic", "heif", "avif"}
)
# Names Windows keeps for devices, whatever their case and extension ("con.png" is one).
DEVICE_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{port}{n}" for port in ("COM", "LPT") for n in range(10)}
)
_SEPARATORS = re.compile(r"[/\\]")
_NOT_STEM_CHARS = re.compile(r"[^A-Za-z0-9-]+")  # each run becomes one "_"


def clean_filename(filename: str, fmt: str | None = None) -> str:
    """The clean name for a member's file name; with ``fmt``, for that format.

    A clean name is ``<stem>.<extension>``:

    * the stem is 1 to :data:`MAX_STEM_CHARS` characters of ``A-Z a-z 0-9 _ -``, beginning
      and ending with a letter or a digit (:func:`clean_stem`): never empty
      (:data:`FALLBACK_STEM`), never a Windows device name (:data:`DEVICE_NAMES`, which
      get :data:`DEVICE_SUFFIX`);
    * the extension is that of ``fmt`` (``"png"``, ``"jpeg"`` or ``"webp"``: the format
      actually sent), or without ``fmt`` the member's own extension, lower-cased, when it
      names an image format (:data:`IMAGE_EXTENSIONS`), else none.

    The name is percent-decoded once and only its last path part is kept (after ``/`` or
    ``\\``), so ``..%2f..%2fetc%2fpasswd.png`` is ``passwd.png``. Cleaning a clean name
    changes nothing but its extension: ``clean_filename(clean_filename(n), f)`` is
    ``clean_filename(n, f)``. Raises ``ValueError`` for a ``fmt`` that is not one of
    :data:`bot.images.model.EXTENSIONS`.
    """
    name = unicodedata.normalize("NFKD", unquote(filename, errors="replace"))
    parts = (_trim_end(part) for part in reversed(_SEPARATORS.split(name)))
    name = next((part for part in parts if part.strip(". ")), "")
    base, dot, extension = name.rpartition(".")
    extension = extension.lower()
    if dot and extension in IMAGE_EXTENSIONS:
        name = base
    else:
        extension = ""
    if fmt is not None:
        if fmt not in EXTENSIONS:
            raise ValueError(f"no file extension for the format {fmt!r}")
        extension = EXTENSIONS[fmt]
    stem = clean_stem(name)
    return f"{stem}.{extension}" if extension else stem


def clean_stem(stem: str) -> str:
    """A clean stem (see :func:`clean_filename`) from any text.

    Accents are dropped and compatibility forms folded (``é`` is ``e``, a full-width
    ``Ａ`` is ``A``); each run of anything else (dots, spaces, control and bidi
    characters, other scripts) becomes one ``_``; the result is cut to
    :data:`MAX_STEM_CHARS`. Cleaning a clean stem changes nothing.
    """
    folded = "".join(c for c in unicodedata.normalize("NFKD", stem) if not unicodedata.combining(c))
    cleaned = _NOT_STEM_CHARS.sub("_", folded).strip("_-")[:MAX_STEM_CHARS].rstrip("_-")
    if not cleaned:
        return FALLBACK_STEM
    if cleaned.upper() in DEVICE_NAMES:
        return cleaned + DEVICE_SUFFIX
    return cleaned


def _trim_end(part: str) -> str:
    """``part`` without trailing dots, spaces, control or format characters (which some
    systems drop, so that ``photo.png `` or ``photo.png\\x00`` is ``photo.png``)."""
    end = len(part)
    while end and (
        part[end - 1] == "."
        or part[end - 1].isspace()
        or unicodedata.category(part[end - 1]) in ("Cc", "Cf")
    ):
        end -= 1
    return part[:end]
