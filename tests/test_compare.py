"""Tests for bot.compare: the stored crops and the rendered before/after image."""

from __future__ import annotations

import functools
import io
import random

import pytest
from PIL import Image, ImageDraw

from bot import compare
from bot.compare import CompareCrops, CompareError, make_crops, render
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


def scaled_box(box: tuple[int, int, int, int], scale: tuple[float, float]) -> tuple[int, ...]:
    return tuple(int(v * s + 0.5) for v, s in zip(box, scale * 2, strict=True))


@functools.cache
def standard() -> tuple[Image.Image, Image.Image, CompareCrops]:
    """The synthetic 512x384 input, its 4x result, and their crops (cached: pure)."""
    source = textured_input()
    result = upscaled(source, (2048, 1536))
    return source, result, make_crops(encode(source), encode(result))


def test_the_rendered_image_decodes_as_rgb_png() -> None:
    """render() returns a PNG that decodes fully, in RGB."""
    *_, crops = standard()
    im = decode(render(crops))
    assert (im.format, im.mode) == ("PNG", "RGB")


def test_the_width_is_twice_the_after_width_plus_the_gutter_under_a_label_band() -> None:
    """The canvas is two after-widths plus the gutter, with a band of drawn text on top."""
    *_, crops = standard()
    after = decode(crops.after)
    im = decode(render(crops))
    band = im.height - after.height
    assert im.width == 2 * after.width + compare.GUTTER
    assert band >= compare.MIN_FONT_SIZE
    for left in (0, after.width + compare.GUTTER):
        label = im.crop((left, 0, left + after.width, band))
        colours = {colour for _, colour in label.getcolors(1 << 16)}
        assert compare.BACKGROUND in colours
        assert len(colours) > 1  # text was drawn


def test_the_before_half_is_the_input_crop_scaled_with_nearest() -> None:
    """The before half pixel-equals the stored input crop resized with NEAREST."""
    *_, crops = standard()
    after_size = decode(crops.after).size
    before, _ = halves(decode(render(crops)), after_size)
    expected = decode(crops.before).resize(after_size, Image.Resampling.NEAREST)
    assert before.tobytes() == expected.convert("RGB").tobytes()


def test_the_chosen_region_overlaps_the_only_textured_patch() -> None:
    """The crop box lands on the detailed patch, not on the flat background or a corner."""
    *_, crops = standard()
    assert overlaps(crops.box, PATCH)
    assert crops.box[2] - crops.box[0] == crops.box[3] - crops.box[1] == 96


def test_the_before_crop_is_the_input_at_the_box() -> None:
    """The stored before crop is exactly the input's pixels inside the box."""
    source, _, crops = standard()
    assert decode(crops.before).tobytes() == source.crop(crops.box).tobytes()


def test_the_after_half_is_the_result_cropped_at_four_times_the_box() -> None:
    """The after half pixel-equals the 4x result cropped at box x 4."""
    _, result, crops = standard()
    assert crops.scale == (4.0, 4.0)
    expected = result.crop(tuple(4 * v for v in crops.box))
    _, after = halves(decode(render(crops)), expected.size)
    assert after.tobytes() == expected.tobytes()


def test_the_choice_is_deterministic() -> None:
    """The same images give byte-identical crops and renders every time."""
    source, result, crops = standard()
    again = make_crops(encode(source), encode(result))
    assert again == crops
    assert render(again) == render(crops)


def test_a_flat_image_is_cropped_at_its_centre() -> None:
    """Without any detail the crop is centred, not in a corner."""
    source = Image.new("RGB", (400, 300), (10, 200, 30))
    crops = make_crops(encode(source), encode(upscaled(source, (1600, 1200))))
    assert crops.box == (152, 102, 248, 198)


def test_an_image_smaller_than_the_crop_side_is_taken_whole() -> None:
    """A 40x60 input gives a 40x60 box and a 160x240 after crop, and renders."""
    source = noise((40, 60))
    result = upscaled(source, (160, 240))
    crops = make_crops(encode(source), encode(result))
    assert crops.box == (0, 0, 40, 60)
    assert decode(crops.after).tobytes() == result.tobytes()
    im = decode(render(crops))
    assert im.width == 2 * 160 + compare.GUTTER


def test_a_thin_image_is_clipped_on_its_short_side_only() -> None:
    """A 600x50 input gives a 96x50 box."""
    source = noise((600, 50))
    crops = make_crops(encode(source), encode(upscaled(source, (2400, 200))))
    left, top, right, bottom = crops.box
    assert (right - left, top, bottom) == (96, 0, 50)


def test_a_result_not_exactly_four_times_maps_the_box_with_its_own_scale() -> None:
    """A 1199x801 result of a 300x200 input is cropped at the box times 1199/300, 801/200."""
    source = textured_input((300, 200))
    result = upscaled(source, (1199, 801))
    crops = make_crops(encode(source), encode(result))
    assert crops.scale == (1199 / 300, 801 / 200)
    expected = result.crop(scaled_box(crops.box, crops.scale))
    after = decode(crops.after)
    assert after.tobytes() == expected.tobytes()
    before, after_half = halves(decode(render(crops)), after.size)
    assert after_half.tobytes() == expected.tobytes()
    assert before.size == after.size


def test_a_two_times_result_works_too() -> None:
    """A 2x result gives scale (2, 2) and an after crop twice the box."""
    source = textured_input()
    crops = make_crops(encode(source), encode(upscaled(source, (1024, 768))))
    assert crops.scale == (2.0, 2.0)
    assert decode(crops.after).size == (192, 192)


def test_an_after_crop_over_the_side_limit_is_shrunk_and_the_scale_stays_true() -> None:
    """With max_after_side=200 the after crop is 200 px; scale stays 4, shown scale ~2.08."""
    source, result, _ = standard()
    crops = make_crops(encode(source), encode(result), max_after_side=200)
    assert decode(crops.after).size == (200, 200)
    assert crops.scale == (4.0, 4.0)
    assert crops.shown_scale() == pytest.approx((200 / 96, 200 / 96))
    assert decode(render(crops)).width == 2 * 200 + compare.GUTTER


def test_a_large_jpeg_result_is_decoded_reduced_when_it_will_be_shrunk() -> None:
    """A JPEG result whose crop must shrink 4x is drafted and still maps onto the box."""
    source, result, _ = standard()
    crops = make_crops(encode(source), encode(result, "JPEG", quality=95), max_after_side=96)
    assert decode(crops.after).size == (96, 96)
    assert overlaps(crops.box, PATCH)


def test_alpha_inputs_are_kept_in_the_crops_and_flattened_on_a_checkerboard() -> None:
    """An RGBA input keeps alpha in both crops; the render is RGB with a checker backdrop."""
    source = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    ImageDraw.Draw(source).ellipse((100, 100, 180, 180), fill=(200, 30, 30, 255))
    crops = make_crops(encode(source), encode(upscaled(source, (1024, 1024))))
    assert decode(crops.before).mode == "RGBA"
    assert decode(crops.after).mode == "RGBA"
    after_size = decode(crops.after).size
    im = decode(render(crops))
    assert im.mode == "RGB"
    before, after = halves(im, after_size)
    corner = (0, 0, 2 * compare.CHECKER_SQUARE, 2 * compare.CHECKER_SQUARE)
    for half in (before, after):
        colours = {colour for _, colour in half.crop(corner).getcolors()}
        assert colours == set(compare.CHECKER)


def test_a_palette_input_with_transparency_is_handled() -> None:
    """A P-mode PNG with a transparent index decodes, crops and renders."""
    source = textured_input((200, 200)).quantize(16)
    source.info["transparency"] = 0
    data = encode(source, transparency=0)
    crops = make_crops(data, encode(upscaled(source.convert("RGBA"), (800, 800))))
    assert decode(render(crops)).mode == "RGB"


def test_stored_crops_of_a_photo_are_small() -> None:
    """A 1024x1024 photo-like input and its 4096x4096 result store well under 400 KB."""
    small = noise((64, 64))
    source = small.resize((1024, 1024), Image.Resampling.BICUBIC)
    result = upscaled(source, (4096, 4096))
    crops = make_crops(encode(source), encode(result, compress_level=1))
    assert decode(crops.after).size == (384, 384)
    assert crops.stored_bytes < 150_000


def test_stored_crops_of_pure_noise_stay_within_the_byte_budget() -> None:
    """Incompressible crops shrink the box until before + after fit max_bytes."""
    source = noise((256, 256))
    result = noise((1024, 1024), seed=SEED + 1)
    crops = make_crops(encode(source), encode(result, compress_level=1), max_bytes=200_000)
    assert crops.stored_bytes <= 200_000
    assert crops.box[2] - crops.box[0] < 96
    assert len(render(crops)) < 2_000_000


def test_the_rendered_image_is_under_two_megabytes_at_the_largest_crops() -> None:
    """Even incompressible 512 px crops render below 2 MB."""
    crops = CompareCrops(
        before=encode(noise((128, 128))),
        after=encode(noise((512, 512), seed=SEED + 2)),
        box=(0, 0, 128, 128),
        scale=(4.0, 4.0),
    )
    assert len(render(crops)) < 2_000_000


def test_a_cjk_label_does_not_crash_and_is_drawn_or_replaced() -> None:
    """Japanese labels render; without a CJK font they fall back to the English ones."""
    *_, crops = standard()
    im = decode(render(crops, labels=("前", "後")))
    assert im.width == 2 * decode(crops.after).width + compare.GUTTER


def test_the_built_in_font_reports_its_missing_glyphs() -> None:
    """Pillow's built-in font covers "Before" but not "前" (its missing-glyph box is seen)."""
    font = compare._default_font(20)
    assert compare._covers(font, "Before")
    assert not compare._covers(font, "前")


def test_a_label_no_font_covers_falls_back_to_english() -> None:
    """With only the built-in font available, a Japanese label is drawn as "Before"."""
    compare._system_font_paths.cache_clear()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(compare, "FONT_PATHS", ())
            patch.setattr(compare, "FC_MATCH_PATTERNS", ())
            patch.delenv(compare.FONT_ENV, raising=False)
            font, text = compare._label_font("前", "Before", 20, 300)
    finally:
        compare._system_font_paths.cache_clear()
    assert text == "Before"
    assert font is compare._default_font(20)


def test_a_label_is_drawn_in_a_system_font_that_covers_it() -> None:
    """A label the built-in font lacks is drawn with a covering system font when present."""
    fonts = compare._candidate_fonts(20)
    if not any(compare._covers(font, "Après") for font in fonts):
        pytest.skip("no installed font covers é")
    font, text = compare._label_font("Après", "After", 20, 300)
    assert text == "Après"
    assert compare._covers(font, text)


def test_a_long_label_is_shortened_to_fit_its_half() -> None:
    """A label wider than its half shrinks and ends with an ellipsis."""
    font, text = compare._label_font("Before " * 20, "Before", 20, 150)
    assert text.endswith(("…", "..."))
    left, _, right, _ = font.getbbox(text)
    assert right - left <= 150


def test_webp_and_jpeg_output_formats_decode() -> None:
    """fmt="WEBP" and fmt="JPEG" give images of the same size as the PNG."""
    *_, crops = standard()
    size = decode(render(crops)).size
    for fmt in ("WEBP", "JPEG"):
        im = decode(render(crops, fmt=fmt))
        assert (im.format, im.size) == (fmt, size)


def test_mismatched_images_are_refused() -> None:
    """A result whose aspect ratio differs from the input's raises CompareError."""
    source = textured_input()
    with pytest.raises(CompareError):
        make_crops(encode(source), encode(upscaled(source, (2048, 2048))))


def test_undecodable_data_is_refused() -> None:
    """Non-images, truncated results and bad stored crops raise CompareError."""
    source, result, crops = standard()
    with pytest.raises(CompareError):
        make_crops(b"not an image", encode(result))
    with pytest.raises(CompareError):
        make_crops(encode(source), encode(result)[:5000])
    with pytest.raises(CompareError):
        render(CompareCrops(b"junk", crops.after, crops.box, crops.scale))


def test_a_sixteen_bit_grey_input_is_scaled_to_eight_bits_not_clipped() -> None:
    """A 16-bit greyscale PNG input gives an RGB before crop of its values / 257."""
    source = Image.new("I;16", (120, 120), 40000)
    result = Image.new("RGB", (480, 480), (155, 155, 155))
    crops = make_crops(encode(source), encode(result))
    assert decode(crops.before).convert("RGB").getpixel((0, 0)) == (155, 155, 155)


def test_a_jpeg_input_and_result_work() -> None:
    """JPEG bytes on both sides (passthrough uploads and JPEG results) crop and render."""
    source = textured_input()
    data = encode(source, "JPEG", quality=90)
    crops = make_crops(data, encode(upscaled(decode(data), (2048, 1536)), "JPEG", quality=90))
    assert overlaps(crops.box, PATCH)
    assert decode(render(crops)).size[0] == 2 * 384 + compare.GUTTER


def test_oversized_stored_crops_are_shrunk_so_the_render_stays_small() -> None:
    """Crops larger than make_crops makes (1024 px noise) still render below 2 MB."""
    crops = CompareCrops(
        before=encode(noise((256, 256))),
        after=encode(noise((1024, 1024), seed=SEED + 3)),
        box=(0, 0, 256, 256),
        scale=(4.0, 4.0),
    )
    im_bytes = render(crops)
    assert len(im_bytes) < 2_000_000
    assert decode(im_bytes).width == 2 * compare.RENDER_MAX_SIDE + compare.GUTTER
