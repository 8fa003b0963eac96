"""Before/after comparison images for delivered upscales, made locally at no cost.

Two pure, synchronous, CPU-bound steps (callers run them in a thread or the image
worker; nothing here knows about Discord, asyncio or the database):

* :func:`input_crop`, when a result is checked: pick the most detailed region of the
  input, at most ``crop_side`` px a side, and keep it (:class:`CompareCrops`: a PNG of
  at most 96x96 px, tens of bytes to ~37 KB, with the box, the result's scale and the
  input's size). That is all that is stored, so a Compare click works after a restart
  and in any process of a fleet for as long as the row is kept, without keeping either
  full-size image and without making, for every delivered job, an after crop that few
  members ever ask for.
* :func:`render`, at click time: the result region is cut from the result as it was
  posted (the message's attachment, which the click carries): the box times that
  image's own per-axis scale, each edge rounded half up, so a result that was fitted to
  the upload limit (re-encoded or resized) is compared as it was delivered. The input
  crop is scaled with NEAREST to exactly the result crop's size (so the difference shown
  is honest: no smoothing is credited to the upscaler) and set beside it, with a small
  gutter and a label band on top of each half. Transparency is flattened onto the same
  checkerboard in both halves. Crops stored by earlier versions carry their after crop
  (a lossless WebP made at delivery) and render from it alone.

``input_image`` must be the image that was sent to the upscaler (``PreparedImage.data``:
upright, at most about one megapixel), not the user's original upload, so that its pixel
grid is the one the result was made from.

Labels are drawn in the first font that covers them (:func:`bot.images.fonts.label_font`); when
none does, the English default label is drawn instead ("Before" / "After"), never tofu
boxes.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw

from bot.images.decode import RESULT_BOMB_PIXELS, ImageSource, source_head
from bot.images.fonts import MIN_FONT_SIZE, label_font
from bot.images.sniff import DECODABLE_FORMATS, HEAD_BYTES, sniff

log = logging.getLogger(__name__)

DEFAULT_LABELS = ("Before", "After")

# input_crop tuning.
CROP_SIDE = 96  # px of input: the side of the compared region (clipped to small images)
INPUT_MAX_PIXELS = 4 * 1_048_576  # inputs are prepared to about 1 MP; refuse far more
SCALE_ASPECT_TOLERANCE = 0.05  # per-axis scales this far apart mean the images differ
CELLS_PER_CROP = 4  # detail is scored on a grid of crop_side / 4 cells
FLATTEN_GREY = 128  # analysis backdrop for transparent pixels (flat, so never "detail")
FLAT_ENERGY = 0.25  # mean grey-level gradient below which a window counts as flat

# render tuning.
GUTTER = 6  # px between the halves
LABEL_PAD = 6  # px above and below the label text
MAX_FONT_SIZE = 28
FONT_SIZE_DIVISOR = 16  # font size = half width / this, clamped to the two above
RENDER_MAX_SIDE = 512  # after crops above this shrink (LANCZOS): the output stays < 2 MB
STORED_MAX_PIXELS = 4 * 1_048_576  # stored crops decoded at click time: refuse far more
BACKGROUND = (32, 34, 37)  # gutter and label band (Discord-dark, neutral)
TEXT_COLOUR = (235, 235, 235)
CHECKER = ((204, 204, 204), (240, 240, 240))  # transparency backdrop, light greys
CHECKER_SQUARE = 8  # px
JPEG_QUALITY = 90
WEBP_LOSSLESS_METHOD = 1  # libwebp effort for fmt="WEBP" output
WEBP_LOSSLESS_QUALITY = 50  # (lossless "quality" is effort too: 100 takes ~10x longer)
STORED_FORMATS = frozenset({"PNG", "WEBP"})


class CompareError(ValueError):
    """The comparison cannot be made (undecodable or mismatched images)."""


@dataclass(frozen=True)
class CompareCrops:
    """What a delivered job keeps for its Compare button.

    ``before`` is a PNG of the input region ``box`` (input pixel coordinates, left, top,
    right, bottom). ``scale`` is the true result/input scale per axis, as checked at
    delivery (e.g. (4.0, 4.0)); ``input_size`` the input's size, which maps the box onto
    the posted result at click time. ``after`` is None: the result region is cut at
    click time (:func:`render` with ``result``). Crops stored by earlier versions have no
    ``input_size`` and carry ``after``, a lossless WebP of the result region made at
    delivery (shrunk to at most 512 px a side), which :func:`render` uses instead.
    """

    before: bytes
    box: tuple[int, int, int, int]
    scale: tuple[float, float]
    input_size: tuple[int, int] | None = None
    after: bytes | None = None

    @property
    def stored_bytes(self) -> int:
        return len(self.before) + len(self.after or b"")

    def stored(self) -> tuple[bytes, bytes, str]:
        """The ``compare_crops`` row's ``input_crop``, ``result_crop`` and ``box``.

        ``result_crop`` is empty when the after half is cut at click time; ``box`` is
        JSON: ``[[left, top, right, bottom], [scale x, scale y], [input w, input h]]``
        (earlier versions wrote the first two only).
        """
        parts: list[list[float] | list[int]] = [list(self.box), list(self.scale)]
        if self.input_size is not None:
            parts.append(list(self.input_size))
        return self.before, self.after or b"", json.dumps(parts)

    @classmethod
    def from_stored(cls, input_crop: bytes, result_crop: bytes, box: str) -> CompareCrops:
        """Read back what :meth:`stored` wrote (or an earlier version did)."""
        parts = json.loads(box)
        left, top, right, bottom = (int(v) for v in parts[0])
        scale = (float(parts[1][0]), float(parts[1][1]))
        size = (int(parts[2][0]), int(parts[2][1])) if len(parts) > 2 else None
        return cls(
            before=input_crop,
            box=(left, top, right, bottom),
            scale=scale,
            input_size=size,
            after=result_crop or None,
        )


# --------------------------------------------------------------------------- input_crop


def input_crop(
    input_image: bytes, result_size: tuple[int, int], *, crop_side: int = CROP_SIDE
) -> CompareCrops:
    """Crop the most detailed region of the input, for a result of ``result_size``.

    The region is a ``crop_side`` square (clipped to small images) placed where the
    input's gradient energy is highest, scored on a grid of ``crop_side / 4`` cells; ties
    (a flat image) go to the window nearest the centre, so the choice is deterministic.
    Raises :class:`CompareError` when the input cannot be decoded, or the result is not
    the same picture at one scale (its per-axis scales differ by more than 5%).
    """
    if crop_side < 1:
        raise ValueError("crop_side must be positive")
    with _decode_input(input_image) as source:
        width, height = source.size
        scale = _scale_of(result_size, source.size)
        box = _box_around(_most_detailed_centre(source, crop_side), crop_side, width, height)
        before = _png(source.crop(box))
    log.debug("Compare crop: box %s scale %.3fx%.3f, %d bytes", box, *scale, len(before))
    return CompareCrops(before=before, box=box, scale=scale, input_size=(width, height))


def _scale_of(size: tuple[int, int], base: tuple[int, int]) -> tuple[float, float]:
    """``size / base`` per axis; :class:`CompareError` unless both axes agree within 5%."""
    scale = (size[0] / base[0], size[1] / base[1])
    if abs(scale[0] / scale[1] - 1) > SCALE_ASPECT_TOLERANCE:
        raise CompareError(f"result {size[0]}x{size[1]} is not a scaled {base[0]}x{base[1]} input")
    return scale


def _cut_after(
    result_image: ImageSource,
    box: tuple[int, int, int, int],
    input_size: tuple[int, int],
    max_side: int,
) -> Image.Image:
    """The region ``box`` (input px) of the result, in RGB or RGBA, at most ``max_side``
    px a side (shrunk with LANCZOS). The box is mapped with the result's own per-axis
    scale, each edge rounded half up. Raises :class:`CompareError` for a result that
    cannot be decoded or is not the input at one scale."""
    with _open(result_image, RESULT_BOMB_PIXELS, "result") as result:
        full_w, full_h = result.size
        scale = _scale_of(result.size, input_size)
        max_crop = max((box[2] - box[0]) * scale[0], (box[3] - box[1]) * scale[1])
        if result.format == "JPEG" and max_crop >= 2 * max_side:
            # libjpeg's DCT scaling decodes at 1/2, 1/4 or 1/8 of the size: the crop is
            # shrunk below anyway, so the full-resolution pixels are never needed.
            reduce_by = min(8, 2 ** int(max_crop / max_side).bit_length() // 2)
            result.draft("RGB", (-(-full_w // reduce_by), -(-full_h // reduce_by)))
        try:
            result.load()
        except Exception as exc:
            raise CompareError("the result image could not be decoded") from exc
        left, top, right, bottom = (
            _scaled_edge(edge, result.size[axis], input_size[axis])
            for axis, edge in ((0, box[0]), (1, box[1]), (0, box[2]), (1, box[3]))
        )
        crop = _to_working_mode(
            result.crop((left, top, max(right, left + 1), max(bottom, top + 1)))
        )
    if max(crop.size) > max_side:
        ratio = max_side / max(crop.size)
        target = (max(1, round(crop.width * ratio)), max(1, round(crop.height * ratio)))
        crop = crop.resize(target, Image.Resampling.LANCZOS)
    return crop


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


def _to_working_mode(im: Image.Image) -> Image.Image:
    """RGBA when the image has transparency, RGB otherwise (the same object if already)."""
    mode = "RGBA" if _has_alpha(im) else "RGB"
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


# --------------------------------------------------------------------------- render


def render(
    crops: CompareCrops,
    *,
    result: ImageSource | None = None,
    labels: tuple[str, str] = DEFAULT_LABELS,
    fmt: str = "PNG",
) -> bytes:
    """One image: the input crop (NEAREST, at the result crop's size) beside the result crop.

    The result crop is the stored ``crops.after`` when there is one (crops of earlier
    versions), else the region cut from ``result``: the result as it was posted (its
    bytes, or the path of its file), mapped with its own scale and shrunk to at most
    :data:`RENDER_MAX_SIDE` px a side. Layout: ``[label band | gutter | label band]``
    over ``[before | gutter | after]``; the width is ``2 * after width + GUTTER``.
    ``fmt`` is "PNG" (default), "WEBP" (lossless) or "JPEG". The output is RGB:
    transparency is flattened onto a light checkerboard, aligned identically in both
    halves. Raises :class:`CompareError` for crops or a result that do not decode, a
    result that is not the input at one scale, or no result to cut from.
    """
    out_format = fmt.upper().replace("JPG", "JPEG")
    if out_format not in ("PNG", "WEBP", "JPEG"):
        raise ValueError(f"unsupported output format {fmt!r}")
    before = _decode_stored(crops.before, "before")
    if crops.after is not None:
        after = _decode_stored(crops.after, "after")
        if max(after.size) > RENDER_MAX_SIDE:
            ratio = RENDER_MAX_SIDE / max(after.size)
            target = (max(1, round(after.width * ratio)), max(1, round(after.height * ratio)))
            after = after.resize(target, Image.Resampling.LANCZOS)
    elif result is None or crops.input_size is None:
        raise CompareError("no result to cut the after half from")
    else:
        after = _cut_after(result, crops.box, crops.input_size, RENDER_MAX_SIDE)
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
        font, text = label_font(label, fallback, size, half_w - 2 * LABEL_PAD)
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
