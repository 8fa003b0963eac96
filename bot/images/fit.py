"""Making a (large) result fit an upload limit, changing as little as possible.

Lossless re-encoding when that can plausibly be enough, then high-quality lossy
WebP/JPEG, then downscaling; each full encode is tried only when an estimate from a
sample of the image says it will fit. What was done is told in a ``fit.*`` note.

Memory: a large result is opened from its file (never held as bytes beside its pixels),
and large lossy WebP encodes use a cheaper libwebp method (see
:data:`WEBP_LOW_MEMORY_METHOD`).
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
from pathlib import Path

from PIL import Image

from bot.i18n import Text
from bot.images.decode import (
    ImageSource,
    guard,
    open_result,
    source_head,
    source_size,
    to_upload_mode,
)
from bot.images.model import EXTENSIONS, FittedImage, Note, dims, limit_mib
from bot.images.prepare import clean_stem
from bot.images.sniff import UPLOAD_FORMATS, sniff

log = logging.getLogger(__name__)

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
# Lossy WebP of more than WEBP_LOW_MEMORY_PIXELS uses WEBP_LOW_MEMORY_METHOD instead. From
# method 3 up, libwebp buffers the tokens of the whole picture before writing them: about
# 15-27 bytes per pixel of detailed content (measured on 16 MP at quality 90: +257 MB for
# 4x-upscaled noise, +366 MB for pure noise), where method 2 needs about 6.5 (+110 MB)
# and takes half the time. Its files were 1-6% larger on three real pictures upscaled to
# 4096 px and 1.4% on the benchmark's 4x-upscaled noise, but up to 2.2x on pure pixel
# noise at some sizes, so small images, where the buffer costs little, keep method 4: at
# the threshold (4 MP) it costs at most about what method 2 costs at 16 MP. Methods 0 and
# 1 are not usable: they fail on 16 MP of detail ("encoding error 6", the first partition
# overflows). Should method 2 fail too, the encode is repeated at WEBP_METHOD. Size
# estimates sample with the method the full encode will use.
WEBP_LOW_MEMORY_METHOD = 2
WEBP_LOW_MEMORY_PIXELS = 4 * 1024 * 1024
WEBP_LOSSLESS_METHOD = 0  # fastest lossless effort (1.5 s for 16 MP vs 5 s at method 1)


def fit_to_limit(
    source: ImageSource, fmt: str, limit_bytes: int, filename_stem: str
) -> FittedImage:
    """Return the image within ``limit_bytes``, changing as little as possible.

    ``source`` is the image's bytes or the path of its file (a file is decoded from the
    file, not read into memory first). ``fmt`` is the requested format ("png", "jpeg" or
    "webp"). In order: the data as it is if it fits; lossless WebP (same pixels) when
    that can plausibly be enough for a PNG or WebP; lossy WebP (or JPEG when JPEG was
    requested) at quality 90 then 80; then downscaling, each step sized from an estimate
    made on a sample of the image. A result already within the limit is returned as it
    is without being decoded (check results with :func:`bot.images.decode.describe_image`).
    Raises :class:`bot.images.ImageRejected` for data that is not a decodable image, and
    ``ValueError`` if even a tiny version cannot fit (a limit of a few bytes).
    """
    requested = "jpeg" if fmt.lower() in ("jpg", "jpeg") else fmt.lower()
    stem = clean_stem(filename_stem)
    sniffed = sniff(source_head(source))
    actual = sniffed.lower() if sniffed in UPLOAD_FORMATS else requested
    source_bytes = source_size(source)
    if source_bytes <= limit_bytes:
        data = source.read_bytes() if isinstance(source, Path) else source
        with open_result(data) as im:
            size = im.size
        return FittedImage(data, actual, _named(stem, actual), size, False, False, None)

    with open_result(source) as opened:
        guard(opened.load, opened.format)
        im, _ = to_upload_mode(opened)
        im.load()
    if im.mode == "RGBA" and im.getchannel("A").getextrema() == (255, 255):
        im = im.convert("RGB")  # an opaque alpha channel only costs bytes
    full_size = im.size
    limit = limit_mib(limit_bytes)

    def done(out: bytes, out_fmt: str, note: Note, size: tuple[int, int]) -> FittedImage:
        log.debug(
            "Fitted %s (%d bytes) into %d bytes: %s", requested, source_bytes, limit_bytes, note.key
        )
        return FittedImage(out, out_fmt, _named(stem, out_fmt), size, size != full_size, True, note)

    worth_trying, aim = limit_bytes * FIT_TRY, limit_bytes * RESIZE_AIM
    if (
        requested == "png"
        and source_bytes <= limit_bytes * LOSSLESS_PLAUSIBLE_RATIO
        and _sampled_size(im, "webp", None) <= worth_trying
    ):
        out = _encode(im, "webp", None)
        if len(out) <= limit_bytes:
            return done(out, "webp", Text.of("fit.lossless", limit=limit), full_size)

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
                note = Text.of("fit.reencoded", format=lossy_words, quality=quality, limit=limit)
                return done(out, lossy, note, full_size)
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
            note = Text.of(
                "fit.scaled",
                size=dims(new_size),
                format=lossy_words,
                quality=quality,
                limit=limit,
                original=dims(full_size),
            )
            return done(out, lossy, note, new_size)
        estimate = len(out)
    raise ValueError(f"cannot fit a {dims(full_size)} image into {limit_bytes} bytes")


def _sampled_size(im: Image.Image, fmt: str, quality: int | None) -> float:
    """Estimate the encoded size of ``im`` from a mosaic of tiles spread over it.

    Encoding a 4x4 grid of 256 px tiles costs about 1/16 of a 4096x4096 encode and
    predicts its size well, because tiles keep the image's own detail per pixel. The
    mosaic is encoded with the WebP method the full image would be encoded with.
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
    sampled = len(_encode(mosaic, fmt, quality, _webp_method(im.size)))
    return sampled * (width * height) / (mosaic.width * mosaic.height)


def _webp_method(size: tuple[int, int]) -> int:
    """The libwebp method for a lossy encode of an image this size (see WEBP_METHOD)."""
    return WEBP_LOW_MEMORY_METHOD if size[0] * size[1] > WEBP_LOW_MEMORY_PIXELS else WEBP_METHOD


def _encode(
    im: Image.Image, fmt: str, quality: int | None, webp_method: int | None = None
) -> bytes:
    """Encode as lossy (quality given) or lossless (quality None) WebP, or as JPEG.

    Lossy WebP uses ``webp_method``, by default the one for the image's size.
    """
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
        return buffer.getvalue()
    method = _webp_method(im.size) if webp_method is None else webp_method
    try:
        save_lossy_webp(im, buffer, quality, method)
    except (OSError, ValueError) as exc:  # libwebp's errors ("encoding error 6")
        if method == WEBP_METHOD:
            raise
        log.info(
            "WebP method %d failed on %s (%s); encoding with method %d",
            method,
            dims(im.size),
            exc,
            WEBP_METHOD,
        )
        buffer = io.BytesIO()
        save_lossy_webp(im, buffer, quality, WEBP_METHOD)
    return buffer.getvalue()


def save_lossy_webp(im: Image.Image, buffer: io.BytesIO, quality: int, method: int) -> None:
    """The fit's one call to libwebp's lossy encoder (tests wrap it to see the methods
    used and to fail as libwebp does: "encoding error 6")."""
    im.save(buffer, "WEBP", quality=quality, method=method)


def _flatten(im: Image.Image) -> Image.Image:
    """Composite an image with alpha onto white, for JPEG."""
    rgba = im.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _named(stem: str, fmt: str) -> str:
    return f"{stem}.{EXTENSIONS.get(fmt, fmt)}"
