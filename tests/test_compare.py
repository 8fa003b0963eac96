"""Tests for bot.images.compare: the input crop kept per job and the before/after image rendered
from it and the posted result."""

from __future__ import annotations

import functools
import io
import random

import pytest
from PIL import Image, ImageChops, ImageDraw

from bot.images import compare
from bot.images.compare import CompareCrops, CompareError, input_crop, render
from bot.images.fonts import MIN_FONT_SIZE
from tests.support.images import decode

SEED = 20260802
PATCH = (300, 180, 380, 260)  # the one textured region of the synthetic input (512x384)


def encode(im: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = SEED) -> Image.Image:
    bands = len(Image.new(mode, (1, 1)).getbands())
    return Image.frombytes(mode, size, random.Random(seed).randbytes(size[0] * size[1] * bands))


def textured_input(size: tuple[int, int] = (512, 384), mode: str = "RGB") -> Image.Image:
    """A flat background with one noisy patch (PATCH), away from every corner."""
    background = (90, 120, 150, 255)[: len(mode)]
    im = Image.new(mode, size, background)
    im.paste(noise((PATCH[2] - PATCH[0], PATCH[3] - PATCH[1]), mode), PATCH[:2])
    return im


def upscaled(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The stand-in for the upscaler: a LANCZOS resize."""
    return im.resize(size, Image.Resampling.LANCZOS)


def halves(rendered: Image.Image, after_size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    """The before and after image areas of a rendered comparison (below the label band)."""
    width, height = after_size
    band = rendered.height - height
    before = rendered.crop((0, band, width, band + height))
    after = rendered.crop((width + compare.GUTTER, band, 2 * width + compare.GUTTER, band + height))
    return before, after


def overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def scaled_box(
    box: tuple[int, int, int, int], scale: float | tuple[float, float]
) -> tuple[int, int, int, int]:
    """``box`` times ``scale`` (one factor, or one per axis), rounded half up."""
    sx, sy = (scale, scale) if isinstance(scale, int | float) else scale
    left, top, right, bottom = box
    return (
        int(left * sx + 0.5),
        int(top * sy + 0.5),
        int(right * sx + 0.5),
        int(bottom * sy + 0.5),
    )


def colours_in(image: Image.Image) -> set[tuple[int, ...] | float]:
    """The distinct colours of ``image`` (at most 65,536 of them)."""
    counts = image.getcolors(1 << 16)
    assert counts is not None, "more than 65,536 colours"
    return {colour for _, colour in counts}


def crop_for(source: Image.Image | bytes, result: Image.Image) -> CompareCrops:
    """What a job keeps for Compare, for ``source`` and its result ``result``."""
    data = source if isinstance(source, bytes) else encode(source)
    return input_crop(data, result.size)


def after_size(crops: CompareCrops, scale: float = 4.0) -> tuple[int, int]:
    """The size of the after half for a result at ``scale`` (no shrinking)."""
    left, top, right, bottom = crops.box
    return round((right - left) * scale), round((bottom - top) * scale)


@functools.cache
def standard() -> tuple[Image.Image, Image.Image, CompareCrops]:
    """The synthetic 512x384 input, its 4x result, and what is kept (cached: pure)."""
    source = textured_input()
    result = upscaled(source, (2048, 1536))
    return source, result, crop_for(source, result)


@functools.cache
def standard_posted() -> bytes:
    """The standard 4x result as posted (a PNG)."""
    return encode(standard()[1])


def standard_render(labels: tuple[str, str] = compare.DEFAULT_LABELS, fmt: str = "PNG") -> bytes:
    """The standard comparison, its after half cut from the posted 4x result."""
    *_, crops = standard()
    return render(crops, result=standard_posted(), labels=labels, fmt=fmt)


def test_the_rendered_image_decodes_as_rgb_png() -> None:
    """render() returns a PNG that decodes fully, in RGB."""
    im = decode(standard_render())
    assert (im.format, im.mode) == ("PNG", "RGB")


def test_the_width_is_twice_the_after_width_plus_the_gutter_under_a_label_band() -> None:
    """The canvas is two after-widths plus the gutter, with a band of drawn text on top."""
    *_, crops = standard()
    width, height = after_size(crops)
    im = decode(standard_render())
    band = im.height - height
    assert im.width == 2 * width + compare.GUTTER
    assert band >= MIN_FONT_SIZE
    for left in (0, width + compare.GUTTER):
        label = im.crop((left, 0, left + width, band))
        colours = colours_in(label)
        assert compare.BACKGROUND in colours
        assert len(colours) > 1  # text was drawn


def test_the_before_half_is_the_input_crop_scaled_with_nearest() -> None:
    """The before half pixel-equals the kept input crop resized with NEAREST."""
    *_, crops = standard()
    size = after_size(crops)
    before, _ = halves(decode(standard_render()), size)
    expected = decode(crops.before).resize(size, Image.Resampling.NEAREST)
    assert before.tobytes() == expected.convert("RGB").tobytes()


def test_the_chosen_region_overlaps_the_only_textured_patch() -> None:
    """The crop box lands on the detailed patch, not on the flat background or a corner."""
    *_, crops = standard()
    assert overlaps(crops.box, PATCH)
    assert crops.box[2] - crops.box[0] == crops.box[3] - crops.box[1] == 96


def test_the_before_crop_is_the_input_at_the_box() -> None:
    """The kept before crop is exactly the input's pixels inside the box."""
    source, _, crops = standard()
    assert decode(crops.before).tobytes() == source.crop(crops.box).tobytes()


def test_only_the_input_crop_and_where_it_lies_are_kept() -> None:
    """A job keeps the before crop, the box, the result's scale and the input's size; no
    after crop is made when the result is checked."""
    *_, crops = standard()
    assert crops.after is None
    assert (crops.scale, crops.input_size) == ((4.0, 4.0), (512, 384))


def test_the_after_half_is_the_posted_result_cut_at_four_times_the_box() -> None:
    """The after half pixel-equals the posted 4x result cropped at box x 4."""
    _, result, crops = standard()
    expected = result.crop(scaled_box(crops.box, 4))
    _, after = halves(decode(standard_render()), expected.size)
    assert after.tobytes() == expected.tobytes()


def test_a_resized_posted_result_is_cut_with_its_own_scale() -> None:
    """A result posted at 3x (fitted to the upload limit) is cut at the box x 3: the same
    region as it was delivered; the kept scale stays the true 4x."""
    _, result, crops = standard()
    posted = result.resize((1536, 1152), Image.Resampling.LANCZOS)
    expected = posted.crop(scaled_box(crops.box, 3))
    im = decode(render(crops, result=encode(posted)))
    before, after = halves(im, expected.size)
    assert after.tobytes() == expected.tobytes()
    assert before.size == expected.size
    assert crops.scale == (4.0, 4.0)


def test_a_reencoded_posted_result_is_cut_as_it_was_posted() -> None:
    """A result posted as lossy WebP is cut from the WebP's own pixels."""
    _, result, crops = standard()
    posted = encode(result, "WEBP", quality=90)
    expected = decode(posted).convert("RGB").crop(scaled_box(crops.box, 4))
    _, after = halves(decode(render(crops, result=posted)), expected.size)
    assert after.tobytes() == expected.tobytes()


def test_the_choice_is_deterministic() -> None:
    """The same images give identical crops and byte-identical renders every time."""
    source, result, crops = standard()
    again = crop_for(source, result)
    assert again == crops
    assert render(again, result=standard_posted()) == standard_render()


def test_a_flat_image_is_cropped_at_its_centre() -> None:
    """Without any detail the crop is centred, not in a corner."""
    source = Image.new("RGB", (400, 300), (10, 200, 30))
    crops = crop_for(source, upscaled(source, (1600, 1200)))
    assert crops.box == (152, 102, 248, 198)


def test_an_image_smaller_than_the_crop_side_is_taken_whole() -> None:
    """A 40x60 input gives a 40x60 box, and its 160x240 result is the whole after half."""
    source = noise((40, 60))
    result = upscaled(source, (160, 240))
    crops = crop_for(source, result)
    assert crops.box == (0, 0, 40, 60)
    im = decode(render(crops, result=encode(result)))
    assert im.width == 2 * 160 + compare.GUTTER
    _, after = halves(im, (160, 240))
    assert after.tobytes() == result.tobytes()


def test_a_thin_image_is_clipped_on_its_short_side_only() -> None:
    """A 600x50 input gives a 96x50 box."""
    source = noise((600, 50))
    crops = crop_for(source, upscaled(source, (2400, 200)))
    left, top, right, bottom = crops.box
    assert (right - left, top, bottom) == (96, 0, 50)


def test_a_result_not_exactly_four_times_maps_the_box_with_its_own_scale() -> None:
    """A 1199x801 result of a 300x200 input is cut at the box times 1199/300, 801/200."""
    source = textured_input((300, 200))
    result = upscaled(source, (1199, 801))
    crops = crop_for(source, result)
    assert crops.scale == (1199 / 300, 801 / 200)
    expected = result.crop(scaled_box(crops.box, crops.scale))
    before, after = halves(decode(render(crops, result=encode(result))), expected.size)
    assert after.tobytes() == expected.tobytes()
    assert before.size == expected.size


def test_a_two_times_result_works_too() -> None:
    """A 2x result gives scale (2, 2) and an after half twice the box."""
    source = textured_input()
    result = upscaled(source, (1024, 768))
    crops = crop_for(source, result)
    assert crops.scale == (2.0, 2.0)
    im = decode(render(crops, result=encode(result)))
    assert im.width == 2 * 192 + compare.GUTTER


def test_an_after_half_over_the_side_limit_is_shrunk() -> None:
    """A 96 px box of an 8x result (768 px) is shown at RENDER_MAX_SIDE (512 px)."""
    source = noise((128, 128))
    result = upscaled(source, (1024, 1024))
    crops = crop_for(source, result)
    im = decode(render(crops, result=encode(result, compress_level=1)))
    assert im.width == 2 * compare.RENDER_MAX_SIDE + compare.GUTTER


def test_a_large_jpeg_result_is_decoded_reduced_when_it_will_be_shrunk() -> None:
    """A JPEG result whose region must shrink 2x is drafted, still cut at the box."""
    source = textured_input((256, 192))
    result = upscaled(source, (4096, 3072))  # 16x: a 96 px box is 1536 px, shown at 512
    crops = crop_for(source, result)
    posted = encode(result, "JPEG", quality=95)
    im = decode(render(crops, result=posted))
    assert im.width == 2 * compare.RENDER_MAX_SIDE + compare.GUTTER
    _, after = halves(im, (compare.RENDER_MAX_SIDE, compare.RENDER_MAX_SIDE))
    expected = result.crop(scaled_box(crops.box, 16)).resize(after.size)
    difference = ImageChops.difference(after, expected.convert("RGB")).convert("L")
    _, largest = difference.getextrema()
    assert isinstance(largest, int | float) and largest < 64  # the same region, not a shifted one


def test_alpha_inputs_are_kept_in_the_crop_and_flattened_on_a_checkerboard() -> None:
    """An RGBA input keeps alpha in its crop; the render is RGB with a checker backdrop
    behind both halves."""
    source = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    ImageDraw.Draw(source).ellipse((100, 100, 180, 180), fill=(200, 30, 30, 255))
    result = upscaled(source, (1024, 1024))
    crops = crop_for(source, result)
    assert decode(crops.before).mode == "RGBA"
    im = decode(render(crops, result=encode(result)))
    assert im.mode == "RGB"
    before, after = halves(im, after_size(crops))
    corner = (0, 0, 2 * compare.CHECKER_SQUARE, 2 * compare.CHECKER_SQUARE)
    for half in (before, after):
        colours = colours_in(half.crop(corner))
        assert colours == set(compare.CHECKER)


def test_a_palette_input_with_transparency_is_handled() -> None:
    """A P-mode PNG with a transparent index decodes, crops and renders."""
    source = textured_input((200, 200)).quantize(16)
    source.info["transparency"] = 0
    data = encode(source, transparency=0)
    result = upscaled(source.convert("RGBA"), (800, 800))
    crops = crop_for(data, result)
    assert decode(render(crops, result=encode(result))).mode == "RGB"


def test_what_a_job_keeps_is_small_even_for_noise() -> None:
    """The kept crop of a 1024x1024 RGBA noise input is under 40 KB (96x96 px at most)."""
    source = noise((1024, 1024), "RGBA")
    crops = input_crop(encode(source, compress_level=1), (4096, 4096))
    assert crops.stored_bytes < 40_000
    assert decode(crops.before).size == (96, 96)


def test_the_rendered_image_is_under_two_megabytes_at_the_largest_crops() -> None:
    """Even incompressible 512 px after halves render below 2 MB."""
    crops = CompareCrops(
        before=encode(noise((128, 128))),
        box=(0, 0, 128, 128),
        scale=(4.0, 4.0),
        input_size=(128, 128),
    )
    posted = encode(noise((512, 512), seed=SEED + 2), compress_level=1)
    assert len(render(crops, result=posted)) < 2_000_000


def test_crops_kept_by_an_earlier_version_render_from_their_after_crop() -> None:
    """Crops stored with an after crop (earlier versions) render without a result."""
    _, result, crops = standard()
    expected = result.crop(scaled_box(crops.box, 4))
    old = CompareCrops(
        before=crops.before,
        box=crops.box,
        scale=crops.scale,
        after=encode(expected, "WEBP", lossless=True),
    )
    _, after = halves(decode(render(old)), expected.size)
    assert after.tobytes() == expected.tobytes()


def test_what_is_kept_reads_back_from_its_row() -> None:
    """stored() and from_stored() round-trip: the row has no after crop and a box of
    box, scale and input size."""
    *_, crops = standard()
    input_crop_bytes, result_crop, box = crops.stored()
    assert result_crop == b""
    assert CompareCrops.from_stored(input_crop_bytes, result_crop, box) == crops


def test_a_row_of_an_earlier_version_reads_back_with_its_after_crop() -> None:
    """A row written before crops were cut at click time (a two-part box, an after crop)
    reads back with its after crop and no input size."""
    crops = CompareCrops.from_stored(b"before", b"after", "[[1, 2, 3, 4], [4.0, 4.0]]")
    assert crops == CompareCrops(b"before", (1, 2, 3, 4), (4.0, 4.0), None, b"after")


def test_a_cjk_label_does_not_crash_and_is_drawn_or_replaced() -> None:
    """Japanese labels render; without a CJK font they fall back to the English ones."""
    *_, crops = standard()
    im = decode(standard_render(labels=("前", "後")))
    assert im.width == 2 * after_size(crops)[0] + compare.GUTTER


def test_webp_and_jpeg_output_formats_decode() -> None:
    """fmt="WEBP" and fmt="JPEG" give images of the same size as the PNG."""
    size = decode(standard_render()).size
    for fmt in ("WEBP", "JPEG"):
        im = decode(standard_render(fmt=fmt))
        assert (im.format, im.size) == (fmt, size)


def test_mismatched_images_are_refused() -> None:
    """A result whose aspect ratio differs from the input's raises CompareError, when the
    input is cropped and when a posted result is cut."""
    source, _, crops = standard()
    with pytest.raises(CompareError):
        input_crop(encode(source), (2048, 2048))
    with pytest.raises(CompareError):
        render(crops, result=encode(upscaled(source, (2048, 2048))))


def test_undecodable_data_is_refused() -> None:
    """Non-image inputs, truncated posted results, bad kept crops and no result at all
    raise CompareError."""
    *_, crops = standard()
    with pytest.raises(CompareError):
        input_crop(b"not an image", (2048, 1536))
    with pytest.raises(CompareError):
        render(crops, result=standard_posted()[:5000])
    with pytest.raises(CompareError):
        render(
            CompareCrops(b"junk", crops.box, crops.scale, crops.input_size),
            result=standard_posted(),
        )
    with pytest.raises(CompareError):
        render(crops)


def test_a_sixteen_bit_grey_input_is_scaled_to_eight_bits_not_clipped() -> None:
    """A 16-bit greyscale PNG input gives an RGB before crop of its values / 257."""
    source = Image.new("I;16", (120, 120), 40000)
    crops = input_crop(encode(source), (480, 480))
    assert decode(crops.before).convert("RGB").getpixel((0, 0)) == (155, 155, 155)


def test_a_jpeg_input_and_result_work() -> None:
    """JPEG bytes on both sides (passthrough uploads and JPEG results) crop and render."""
    source = textured_input()
    data = encode(source, "JPEG", quality=90)
    result = upscaled(decode(data), (2048, 1536))
    crops = crop_for(data, result)
    assert overlaps(crops.box, PATCH)
    posted = encode(result, "JPEG", quality=90)
    assert decode(render(crops, result=posted)).size[0] == 2 * 384 + compare.GUTTER


def test_oversized_stored_crops_are_shrunk_so_the_render_stays_small() -> None:
    """Kept after crops larger than earlier versions made (1024 px noise) still render
    below 2 MB."""
    crops = CompareCrops(
        before=encode(noise((256, 256))),
        box=(0, 0, 256, 256),
        scale=(4.0, 4.0),
        after=encode(noise((1024, 1024), seed=SEED + 3)),
    )
    im_bytes = render(crops)
    assert len(im_bytes) < 2_000_000
    assert decode(im_bytes).width == 2 * compare.RENDER_MAX_SIDE + compare.GUTTER
