"""Before/after comparison images for delivered upscales, made locally at no cost.

Two pure, synchronous, CPU-bound steps (callers run them in a thread or process pool;
nothing here knows about Discord, asyncio or the database):

* :func:`make_crops`, at delivery time: pick the most detailed region of the input, crop
  it (at most ``crop_side`` px a side) and the exactly corresponding region of the result
  (the box times the per-axis scale, rounded half up). The two small crops
  (:class:`CompareCrops`, normally 96x96 PNG + 384x384 lossless WebP, some tens of KB) are
  what gets stored, so a Compare click works after a restart and for as long as the row
  is kept, without keeping the full-size images.
* :func:`render`, at click time: the input crop scaled with NEAREST to exactly the result
  crop's size (so the difference shown is honest: no smoothing is credited to the
  upscaler), side by side with the result crop, a small gutter, and a label band on top
  of each half. Transparency is flattened onto the same checkerboard in both halves.

``input_image`` must be the image that was sent to the upscaler (``PreparedImage.data``:
upright, at most about one megapixel), not the user's original upload, so that its pixel
grid is the one the result was made from.

Labels are drawn with Pillow's built-in font (``ImageFont.load_default(size=...)``, which
covers Latin scripts only). A label the built-in font cannot draw (every glyph is checked
against the font's "missing glyph" box) is drawn with the first system font that covers
it: DejaVu Sans (Greek, Cyrillic, ...), then CJK fonts found by ``fc-match`` or at common
Noto/Droid/WenQuanYi/macOS/Windows paths, or the file named by the environment variable
``COMPARE_LABEL_FONT``. When no font covers it, the English default label is drawn
instead ("Before" / "After"), never tofu boxes.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFont

from bot.images import DECODABLE_FORMATS, HEAD_BYTES, RESULT_BOMB_PIXELS, ImageSource, sniff
from bot.images.decode import source_head

log = logging.getLogger(__name__)

DEFAULT_LABELS = ("Before", "After")

# make_crops tuning.
INPUT_MAX_PIXELS = 4 * 1_048_576  # inputs are prepared to about 1 MP; refuse far more
SCALE_ASPECT_TOLERANCE = 0.05  # per-axis scales this far apart mean the images differ
CELLS_PER_CROP = 4  # detail is scored on a grid of crop_side / 4 cells
MAX_STORED_BYTES = 300_000  # before + after; the box shrinks until the pair fits
SHRINK_STEP = 0.75  # each shrink keeps this much of the crop side
MIN_CROP_SIDE = 16  # px of input; never shrink below this
FLATTEN_GREY = 128  # analysis backdrop for transparent pixels (flat, so never "detail")
WEBP_LOSSLESS_METHOD = 1  # libwebp effort: a 384 px crop in ~40 ms, within 1% of the best
WEBP_LOSSLESS_QUALITY = 50  # (lossless "quality" is effort too: 100 takes ~10x longer)
FLAT_ENERGY = 0.25  # mean grey-level gradient below which a window counts as flat

# render tuning.
GUTTER = 6  # px between the halves
LABEL_PAD = 6  # px above and below the label text
MIN_FONT_SIZE = 10
MAX_FONT_SIZE = 28
FONT_SIZE_DIVISOR = 16  # font size = half width / this, clamped to the two above
RENDER_MAX_SIDE = 512  # after crops above this (not from make_crops) shrink: output < 2 MB
STORED_MAX_PIXELS = 4 * 1_048_576  # stored crops decoded at click time: refuse far more
BACKGROUND = (32, 34, 37)  # gutter and label band (Discord-dark, neutral)
TEXT_COLOUR = (235, 235, 235)
CHECKER = ((204, 204, 204), (240, 240, 240))  # transparency backdrop, light greys
CHECKER_SQUARE = 8  # px
JPEG_QUALITY = 90
STORED_FORMATS = frozenset({"PNG", "WEBP"})

# System fonts tried, in order, for labels the built-in font cannot draw.
FONT_ENV = "COMPARE_LABEL_FONT"
FONT_PATHS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJKjp-Regular.otf",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/System/Library/Fonts/Hiragino Sans GB.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:\\Windows\\Fonts\\msgothic.ttc",
    "C:\\Windows\\Fonts\\YuGothM.ttc",
    "C:\\Windows\\Fonts\\msyh.ttc",
)
FC_MATCH_PATTERNS = (":lang=ja", ":lang=zh-cn", ":lang=ko")
FC_MATCH_TIMEOUT = 2.0  # s
_MISSING_PROBE = "\uffff"  # a noncharacter: every font draws its "missing glyph" for it


class CompareError(ValueError):
    """The comparison cannot be made (undecodable or mismatched images); skip the button."""


@dataclass(frozen=True)
class CompareCrops:
    """The two small crops stored at delivery time; everything :func:`render` needs.

    ``before`` is a PNG of the input region ``box`` (input pixel coordinates, left, top,
    right, bottom). ``after`` is a lossless WebP of the result region ``box`` x ``scale``
    (each edge rounded half up), shrunk with LANCZOS only if it would exceed
    ``max_after_side``. ``scale`` is always the true result/input scale per axis (what the
    user got, e.g. (4.0, 4.0)); :meth:`shown_scale` is what the stored crops show.
    """

    before: bytes
    after: bytes
    box: tuple[int, int, int, int]
    scale: tuple[float, float]

    @property
    def stored_bytes(self) -> int:
        return len(self.before) + len(self.after)

    def shown_scale(self) -> tuple[float, float]:
        """The after crop's size over the box's size per axis (reads only its header)."""
        with Image.open(io.BytesIO(self.after)) as im:
            width, height = im.size
        left, top, right, bottom = self.box
        return width / (right - left), height / (bottom - top)


# --------------------------------------------------------------------------- make_crops


def make_crops(
    input_image: bytes,
    result_image: ImageSource,
    *,
    crop_side: int = 96,
    max_after_side: int = 512,
    max_bytes: int = MAX_STORED_BYTES,
) -> CompareCrops:
    """Crop the most detailed region of the input and the matching region of the result.

    The region is a ``crop_side`` square (clipped to small images) placed where the
    input's gradient energy is highest, scored on a grid of ``crop_side / 4`` cells; ties
    (a flat image) go to the window nearest the centre, so the choice is deterministic.
    If the two encoded crops together exceed ``max_bytes`` the region shrinks about its
    centre (never below 16 px) rather than losing pixels to lossy coding.
    ``result_image`` may be the path of the result's file (decoded from the file). Raises
    :class:`CompareError` when either image cannot be decoded or they are not the same
    picture at two scales (their per-axis scales differ by more than 5%).
    """
    if crop_side < 1 or max_after_side < 1:
        raise ValueError("crop_side and max_after_side must be positive")
    with (
        _decode_input(input_image) as source,
        _open(result_image, RESULT_BOMB_PIXELS, "result") as result,
    ):
        width, height = source.size
        centre = _most_detailed_centre(source, crop_side)
        full_w, full_h = result.size
        scale = (full_w / width, full_h / height)
        if abs(scale[0] / scale[1] - 1) > SCALE_ASPECT_TOLERANCE:
            raise CompareError(f"result {full_w}x{full_h} is not a scaled {width}x{height} input")
        max_after_crop = max(crop_side * scale[0], crop_side * scale[1])
        if result.format == "JPEG" and max_after_crop >= 2 * max_after_side:
            # libjpeg's DCT scaling decodes at 1/2, 1/4 or 1/8 of the size: the crop is
            # shrunk below anyway, so the full-resolution pixels are never needed.
            reduce_by = min(8, 2 ** int(max_after_crop / max_after_side).bit_length() // 2)
            result.draft("RGB", (-(-full_w // reduce_by), -(-full_h // reduce_by)))
        try:
            result.load()
        except Exception as exc:
            raise CompareError("the result image could not be decoded") from exc
        box, before, after = _crop_pair(
            source, result, centre, crop_side, max_after_side, max_bytes
        )
    log.debug(
        "Compare crops: box %s scale %.3fx%.3f, %d + %d bytes",
        box,
        scale[0],
        scale[1],
        len(before),
        len(after),
    )
    return CompareCrops(before=before, after=after, box=box, scale=scale)


def _crop_pair(
    source: Image.Image,
    result: Image.Image,
    centre: tuple[float, float],
    crop_side: int,
    max_after_side: int,
    max_bytes: int,
) -> tuple[tuple[int, int, int, int], bytes, bytes]:
    """The box and both encoded crops, shrinking the box about ``centre`` to fit the bytes.

    Only the result's crop is converted (RGB/RGBA), never the whole decoded result.
    """
    width, height = source.size
    mode = "RGBA" if _has_alpha(result) else "RGB"
    side = crop_side
    while True:
        box = _box_around(centre, side, width, height)
        before = _png(source.crop(box))
        left, top, right, bottom = (
            _scaled_edge(edge, result.size[axis], source.size[axis])
            for axis, edge in ((0, box[0]), (1, box[1]), (0, box[2]), (1, box[3]))
        )
        crop = _to_working_mode(
            result.crop((left, top, max(right, left + 1), max(bottom, top + 1))), mode
        )
        if max(crop.size) > max_after_side:
            ratio = max_after_side / max(crop.size)
            target = (max(1, round(crop.width * ratio)), max(1, round(crop.height * ratio)))
            crop = crop.resize(target, Image.Resampling.LANCZOS)
        after = _webp_lossless(crop)
        if len(before) + len(after) <= max_bytes or side <= MIN_CROP_SIDE:
            return box, before, after
        side = max(MIN_CROP_SIDE, int(side * SHRINK_STEP))


def _scaled_edge(edge: int, full: int, base: int) -> int:
    """``edge * full / base`` rounded half up, exactly (integers, no float error)."""
    return (2 * edge * full + base) // (2 * base)


def _decode_input(data: bytes) -> Image.Image:
    with _open(data, INPUT_MAX_PIXELS, "input") as im:
        try:
            im.load()
        except Exception as exc:
            raise CompareError("the input image could not be decoded") from exc
        out = _to_working_mode(im)
        return out if out is not im else im.copy()


def _open(source: ImageSource, max_pixels: int, what: str) -> Image.Image:
    """Open lazily (header only) as exactly the sniffed format; refuse bombs unopened."""
    try:
        head = source_head(source)
    except OSError as exc:
        raise CompareError(f"the {what} could not be read") from exc
    fmt = sniff(head[:HEAD_BYTES])
    if fmt is None or fmt not in DECODABLE_FORMATS:
        raise CompareError(f"the {what} is not an image we decode")
    try:
        im = Image.open(source if isinstance(source, Path) else io.BytesIO(source), formats=[fmt])
    except Exception as exc:  # includes Pillow's DecompressionBombError
        raise CompareError(f"the {what} image could not be opened") from exc
    width, height = im.size
    if width <= 0 or height <= 0 or width * height > max_pixels:
        im.close()
        raise CompareError(f"the {what} image is {width}x{height}, out of bounds")
    return im


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _to_working_mode(im: Image.Image, mode: str | None = None) -> Image.Image:
    """RGBA when the image has transparency, RGB otherwise (the same object if already)."""
    mode = mode or ("RGBA" if _has_alpha(im) else "RGB")
    if im.mode == mode:
        return im
    if im.mode.startswith("I;16") or im.mode == "I":
        # Pillow clips 16-bit values when converting; scale them to 8 bits instead.
        im = im.convert("I").point(lambda v: v * (1 / 257)).convert("L")
    return im.convert(mode)


def _most_detailed_centre(im: Image.Image, crop_side: int) -> tuple[float, float]:
    """The centre (input px) of the crop-sized window with the most gradient energy.

    Energy is the mean absolute difference between horizontally and vertically adjacent
    grey pixels (transparent pixels count as flat grey, so hidden colour is not detail),
    averaged over cells of ``crop_side / 4`` px; windows of 4 x 4 cells are compared.
    """
    width, height = im.size
    if im.mode == "RGBA":
        grey = Image.new("RGB", im.size, (FLATTEN_GREY,) * 3)
        grey.paste(im, mask=im.getchannel("A"))
        grey = grey.convert("L")
    else:
        grey = im.convert("L")
    win_w, win_h = min(crop_side, width), min(crop_side, height)
    if (win_w, win_h) == (width, height) or min(width, height) < 2:
        return width / 2, height / 2
    step = max(1, crop_side // CELLS_PER_CROP)
    grid_w, grid_h = max(1, (width - 1) // step), max(1, (height - 1) // step)
    energy = _gradient_energy(grey).crop((0, 0, grid_w * step, grid_h * step))
    cells = energy.convert("F").reduce(step)
    flat = getattr(cells, "get_flattened_data", None) or cells.getdata  # Pillow >= 12.1
    values = list(flat())
    span_w, span_h = max(1, win_w // step), max(1, win_h // step)

    # Summed-area table over the cells, so each window sum is four look-ups.
    table = [[0.0] * (grid_w + 1) for _ in range(grid_h + 1)]
    for row in range(grid_h):
        running = 0.0
        above, here = table[row], table[row + 1]
        for col in range(grid_w):
            running += values[row * grid_w + col]
            here[col + 1] = above[col + 1] + running

    best: tuple[float, float, float, float] | None = None
    for row in range(grid_h - span_h + 1):
        for col in range(grid_w - span_w + 1):
            total = (
                table[row + span_h][col + span_w]
                - table[row][col + span_w]
                - table[row + span_h][col]
                + table[row][col]
            )
            cx, cy = (col + span_w / 2) * step, (row + span_h / 2) * step
            distance = (cx - width / 2) ** 2 + (cy - height / 2) ** 2
            # Rounded, so float noise never decides; nearer the centre wins ties.
            key = (round(total, 3), -distance, -cy, -cx)
            if best is None or key > best:
                best = key
    assert best is not None
    if best[0] < FLAT_ENERGY * span_w * span_h:
        return width / 2, height / 2  # nothing stands out: the centre, not a corner
    return -best[3], -best[2]


def _gradient_energy(grey: Image.Image) -> Image.Image:
    """(|dx| + |dy|) / 2 per pixel, one px smaller each way (no wrap-around at edges)."""
    width, height = grey.size
    inner = (0, 0, width - 1, height - 1)
    dx = ImageChops.difference(grey.crop((1, 0, width, height - 1)), grey.crop(inner))
    dy = ImageChops.difference(grey.crop((0, 1, width - 1, height)), grey.crop(inner))
    return ImageChops.add(dx, dy, scale=2.0)


def _box_around(
    centre: tuple[float, float], side: int, width: int, height: int
) -> tuple[int, int, int, int]:
    """A ``side`` square (clipped to the image) centred on ``centre``, kept inside."""
    box_w, box_h = min(side, width), min(side, height)
    left = min(max(0, round(centre[0] - box_w / 2)), width - box_w)
    top = min(max(0, round(centre[1] - box_h / 2)), height - box_h)
    return left, top, left + box_w, top + box_h


def _png(im: Image.Image) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _webp_lossless(im: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # exact: keep the colour under fully transparent pixels, so the pixels are identical.
    im.save(
        buffer,
        "WEBP",
        lossless=True,
        quality=WEBP_LOSSLESS_QUALITY,
        method=WEBP_LOSSLESS_METHOD,
        exact=True,
    )
    return buffer.getvalue()


# --------------------------------------------------------------------------- render


def render(
    crops: CompareCrops,
    *,
    labels: tuple[str, str] = DEFAULT_LABELS,
    fmt: str = "PNG",
) -> bytes:
    """One image: the input crop (NEAREST, at the result crop's size) beside the result crop.

    Layout: ``[label band | gutter | label band]`` over ``[before | gutter | after]``; the
    width is ``2 * after width + GUTTER``. ``fmt`` is "PNG" (default), "WEBP" (lossless)
    or "JPEG". The output is RGB: transparency is flattened onto a light checkerboard,
    aligned identically in both halves. Raises :class:`CompareError` for stored crops that
    do not decode.
    """
    out_format = fmt.upper().replace("JPG", "JPEG")
    if out_format not in ("PNG", "WEBP", "JPEG"):
        raise ValueError(f"unsupported output format {fmt!r}")
    before = _decode_stored(crops.before, "before")
    after = _decode_stored(crops.after, "after")
    if max(after.size) > RENDER_MAX_SIDE:
        ratio = RENDER_MAX_SIDE / max(after.size)
        target = (max(1, round(after.width * ratio)), max(1, round(after.height * ratio)))
        after = after.resize(target, Image.Resampling.LANCZOS)
    half_w, half_h = after.size
    before = before.resize(after.size, Image.Resampling.NEAREST)
    if before.mode == "RGBA" or after.mode == "RGBA":
        before, after = _on_checker(before), _on_checker(after)
    else:
        before, after = before.convert("RGB"), after.convert("RGB")

    size = max(MIN_FONT_SIZE, min(MAX_FONT_SIZE, half_w // FONT_SIZE_DIVISOR))
    band = size + 2 * LABEL_PAD
    canvas = Image.new("RGB", (2 * half_w + GUTTER, band + half_h), BACKGROUND)
    canvas.paste(before, (0, band))
    canvas.paste(after, (half_w + GUTTER, band))
    draw = ImageDraw.Draw(canvas)
    for index, (label, fallback) in enumerate(zip(labels, DEFAULT_LABELS, strict=True)):
        font, text = _label_font(label, fallback, size, half_w - 2 * LABEL_PAD)
        left = index * (half_w + GUTTER)
        if text:
            draw.text((left + half_w / 2, band / 2), text, font=font, fill=TEXT_COLOUR, anchor="mm")

    buffer = io.BytesIO()
    if out_format == "PNG":
        canvas.save(buffer, "PNG", compress_level=6)
    elif out_format == "WEBP":
        canvas.save(
            buffer,
            "WEBP",
            lossless=True,
            quality=WEBP_LOSSLESS_QUALITY,
            method=WEBP_LOSSLESS_METHOD,
        )
    else:
        canvas.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _decode_stored(data: bytes, what: str) -> Image.Image:
    fmt = sniff(data[:HEAD_BYTES])
    if fmt not in STORED_FORMATS:
        raise CompareError(f"the stored {what} crop is not PNG or WebP")
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            if im.width * im.height > STORED_MAX_PIXELS:
                raise CompareError(f"the stored {what} crop is too large")
            im.load()
            out = _to_working_mode(im)
            return out if out is not im else im.copy()
    except CompareError:
        raise
    except Exception as exc:
        raise CompareError(f"the stored {what} crop could not be decoded") from exc


def _on_checker(im: Image.Image) -> Image.Image:
    """Composite onto a light checkerboard anchored at the top-left of the half."""
    backdrop = Image.new("RGB", im.size, CHECKER[0])
    square = Image.new("RGB", (CHECKER_SQUARE, CHECKER_SQUARE), CHECKER[1])
    for top in range(0, im.height, CHECKER_SQUARE):
        first = (top // CHECKER_SQUARE) % 2 * CHECKER_SQUARE
        for left in range(first, im.width, 2 * CHECKER_SQUARE):
            backdrop.paste(square, (left, top))
    rgba = im.convert("RGBA")
    backdrop.paste(rgba, mask=rgba.getchannel("A"))
    return backdrop


def _label_font(
    label: str, fallback: str, size: int, max_width: int
) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, str]:
    """The font and text to draw: the label in a font that covers it, else the fallback.

    The text shrinks down to ``MIN_FONT_SIZE`` and is then cut with an ellipsis to fit.
    """
    label = " ".join(label.split())  # no newlines or tabs in a one-line band
    chosen = None
    for text in (label, fallback):
        if not text:
            continue
        for font in _candidate_fonts(size):
            if _covers(font, text):
                chosen = (text, font)
                break
        if chosen:
            break
    if chosen is None:  # cannot happen with Pillow's built-in font and an English label
        return ImageFont.load_default(), ""
    text, font = chosen
    current = size
    while _width(font, text) > max_width and current > MIN_FONT_SIZE:
        current -= 1
        font = _sized(font, current)
    if _width(font, text) > max_width:
        ellipsis = "…" if _covers(font, "…") else "..."
        while text and _width(font, text + ellipsis) > max_width:
            text = text[:-1]
        text = text.rstrip() + ellipsis if text else ""
    return font, text


label_font = _label_font  # public: bot.chart draws the /usage chart's labels with it


def _width(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> float:
    left, _, right, _ = font.getbbox(text)
    return right - left


def _sized(
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont, size: int
) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if isinstance(font, ImageFont.FreeTypeFont):
        return font.font_variant(size=size)
    return font


def _candidate_fonts(size: int) -> list[ImageFont.FreeTypeFont | ImageFont.ImageFont]:
    """Pillow's built-in font, then the system fonts that load, at ``size``."""
    fonts: list[ImageFont.FreeTypeFont | ImageFont.ImageFont] = [_default_font(size)]
    for path in _system_font_paths():
        font = _load_font(path, size)
        if font is not None:
            fonts.append(font)
    return fonts


@functools.cache
def _default_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@functools.cache
def _load_font(path: str, size: int) -> ImageFont.FreeTypeFont | None:
    try:
        return ImageFont.truetype(path, size)
    except OSError:
        return None


@functools.cache
def _system_font_paths() -> tuple[str, ...]:
    """Existing font files worth trying, in order (looked up once per process)."""
    paths: list[str] = []
    override = os.environ.get(FONT_ENV)
    if override:
        paths.append(override)
    paths.extend(FONT_PATHS)
    fc_match = shutil.which("fc-match")
    if fc_match:
        for pattern in FC_MATCH_PATTERNS:
            try:
                found = subprocess.run(
                    [fc_match, "-f", "%{file}", pattern],
                    capture_output=True,
                    text=True,
                    timeout=FC_MATCH_TIMEOUT,
                    check=False,
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                continue
            if found:
                paths.append(found)
    unique: list[str] = []
    for path in paths:
        if path not in unique and os.path.isfile(path):
            unique.append(path)
    return tuple(unique)


def _covers(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> bool:
    """Whether ``font`` has a real glyph for every visible character of ``text``.

    A FreeType font draws its "missing glyph" (a box, or nothing) for characters it lacks,
    so each character's rendering is compared with the rendering of a noncharacter. A
    bitmap font (Pillow built without FreeType) is trusted with printable Latin-1 only.
    """
    if not isinstance(font, ImageFont.FreeTypeFont):
        return all(c.isprintable() and ord(c) < 256 for c in text)
    missing = _glyph(font, _MISSING_PROBE)
    for char in set(text):
        if char.isspace():
            continue
        if not char.isprintable():
            return False
        glyph = _glyph(font, char)
        if glyph == missing or glyph[1] is None:
            return False
    return True


@functools.lru_cache(maxsize=4096)
def _glyph(font: ImageFont.FreeTypeFont, char: str) -> tuple[tuple[int, int, int], bytes | None]:
    """A character's advance and ink box, and its ink (None when it draws nothing)."""
    left, top, right, bottom = (int(v) for v in font.getbbox(char))
    width, height = max(1, right - left), max(1, bottom - top)
    image = Image.new("L", (width, height))
    ImageDraw.Draw(image).text((-left, -top), char, font=font, fill=255)
    ink = image.tobytes() if image.getbbox() else None
    return (round(font.getlength(char)), width, height), ink
