"""Tests for bot.images: input validation and preparation, result fitting, the corpus."""

from __future__ import annotations

import functools
import io
import json
import pickle
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from bot import images
from bot.i18n import Text
from bot.images import FittedImage, ImageLimits, ImageRejected, PreparedImage, fit
from bot.images.decode import describe_image
from bot.images.fit import fit_to_limit
from bot.images.model import EXTENSIONS, Rejection
from bot.images.sniff import sniff
from tests import imagecorpus as corpus
from tests.support.images import colour_at, decode, level_at

MIB = 1024 * 1024
DISCORD_LIMIT = 10 * MIB  # bytes, Discord's default attachment limit

REFUSED = [c.name for c in corpus.all_cases() if c.expect.refused]
ACCEPTED = [c.name for c in corpus.all_cases() if not c.expect.refused]
WITH_NOTES = [c.name for c in corpus.all_cases() if c.expect.note]
PASSTHROUGH = [c.name for c in corpus.all_cases() if c.expect.passthrough]
REENCODED = [n for n in ACCEPTED if n not in PASSTHROUGH]


@functools.cache
def prepare(name: str, limits: ImageLimits | None = None) -> PreparedImage:
    """prepare_input on a corpus case (cached: it is pure, and several tests inspect it)."""
    case = corpus.case(name)
    return images.prepare_input(case.data, case.filename, limits or ImageLimits())


def english(words: ImageRejected | Text | None) -> str:
    """A refusal or a note as an English-speaking member reads it."""
    if words is None:
        return ""
    return words.render("en-US")


def close_to(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=False))


# --------------------------------------------------------------------------- the corpus


def test_corpus_covers_the_hostile_input_list() -> None:
    """The corpus has every kind of file the hostile-input issue lists, and at least 25."""
    required = {
        "zero_bytes", "truncated_png", "truncated_jpeg", "text_as_png", "html_as_png",
        "pdf_as_png", "svg_as_png", "bomb_png_30000", "animated_gif", "animated_png",
        "animated_webp", "png_16bit_gray", "cmyk_jpeg", "palette_transparency",
        "exif_rotated", "one_by_one", "thin_40000x10", "over_50mb", "corrupt_png_body",
        "polyglot_png_zip", "bmp", "tiff", "gray_png", "big_jpeg_4000x3000",
        "wide_2_5_to_1", "wide_3_to_1",
    }  # fmt: skip
    names = set(corpus.case_names())
    assert required <= names
    assert len(names) >= 25


def test_corpus_bomb_is_a_small_file_claiming_a_huge_image() -> None:
    """The decompression bomb really is tens of thousands of pixels a side in a small file."""
    data = corpus.case("bomb_png_30000").data
    assert len(data) < 1_000_000
    assert struct.unpack(">II", data[16:24]) == (30_000, 30_000)  # IHDR width, height


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("name", REFUSED)
def test_hostile_input_is_refused_with_its_kind(name: str) -> None:
    """Each refused corpus file raises ImageRejected with the expected kind."""
    with pytest.raises(ImageRejected) as caught:
        prepare(name)
    assert caught.value.kind == corpus.case(name).expect.kind


@pytest.mark.parametrize("name", REFUSED)
def test_refusal_message_is_plain_words(name: str) -> None:
    """Refusal messages are short sentences, with no exception names or internals."""
    with pytest.raises(ImageRejected) as caught:
        prepare(name)
    message = english(caught.value)
    assert message.endswith(".") and len(message) < 300
    for leak in ("Error", "Traceback", "Exception", "PIL", "0x"):
        assert leak not in message


def test_bomb_is_refused_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decompression bomb is refused from its header: no pixel data is ever loaded."""

    def no_load(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    with pytest.raises(ImageRejected) as caught:
        images.prepare_input(corpus.case("bomb_png_9000").data, "bomb.png")
    assert caught.value.kind == "bomb"


def test_bomb_is_refused_even_with_pillows_guard_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our own pixel cap refuses a bomb even if Image.MAX_IMAGE_PIXELS is switched off."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageRejected) as caught:
        images.prepare_input(corpus.case("bomb_png_30000").data, "bomb.png")
    assert caught.value.kind == "bomb"


def test_webp_bomb_is_refused_before_pillow_opens_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A WebP claiming a huge canvas is refused from its header (Pillow would allocate it)."""

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("the WebP bomb was opened")

    monkeypatch.setattr(Image, "open", no_open)
    with pytest.raises(ImageRejected) as caught:
        images.prepare_input(corpus.case("bomb_webp_header").data, "bomb.webp")
    assert caught.value.kind == "bomb"


def test_bomb_cap_is_configurable() -> None:
    """A lower bomb_pixels limit refuses an ordinary image above it."""
    with pytest.raises(ImageRejected) as caught:
        prepare("plain_png", ImageLimits(bomb_pixels=50_000))
    assert caught.value.kind == "bomb"


def test_oversized_file_on_disk_is_refused_before_reading(tmp_path: Path) -> None:
    """A file over max_bytes is refused from its size alone (a sparse 60 MB file here)."""
    path = tmp_path / "huge.png"
    with open(path, "wb") as fh:
        fh.truncate(60_000_000)
    with pytest.raises(ImageRejected) as caught:
        images.prepare_input(path, "huge.png")
    assert caught.value.kind == "too_large"
    assert "50 MB" in english(caught.value)


def test_aspect_refusal_states_the_supported_range() -> None:
    """The aspect-ratio refusal tells the user which shapes are accepted."""
    with pytest.raises(ImageRejected) as caught:
        prepare("wide_3_to_1")
    assert "1:2.5" in english(caught.value) and "2.5:1" in english(caught.value)


def test_too_small_refusal_names_the_minimum() -> None:
    """The too-small refusal says the minimum side in pixels."""
    with pytest.raises(ImageRejected) as caught:
        prepare("one_by_one")
    assert "32 pixels" in english(caught.value)


def test_non_image_refusal_says_what_the_file_looks_like() -> None:
    """A PDF renamed .png is called a PDF, so the user knows what went wrong."""
    with pytest.raises(ImageRejected) as caught:
        prepare("pdf_as_png")
    assert "PDF" in english(caught.value)


def test_image_rejected_survives_pickling() -> None:
    """ImageRejected keeps kind and message (key and params) across a process boundary."""
    error = pickle.loads(
        pickle.dumps(ImageRejected(Rejection.BOMB, "image.bomb_claimed", size="9×9"))
    )
    too_big = (
        "That image claims to be 9×9 pixels, which is far too large to process safely, "
        "so it was refused without opening it."
    )
    assert (error.kind, english(error), str(error)) == ("bomb", too_big, too_big)
    looks = Text.of("image.looks.pdf")
    nested = ImageRejected(Rejection.NOT_IMAGE, "image.not_image_looks_like", looks=looks)
    nested = pickle.loads(pickle.dumps(nested))
    assert "(it looks like a PDF document)" in english(nested)
    assert "PDF" in nested.render("ja") and nested.render("ja") != english(nested)


# --------------------------------------------------------------------------- acceptance


@pytest.mark.parametrize("name", ACCEPTED)
def test_odd_input_is_prepared_at_the_expected_size_and_format(name: str) -> None:
    """Each accepted corpus file becomes an upload of the expected format and size."""
    expect = corpus.case(name).expect
    prepared = prepare(name)
    assert (prepared.format, prepared.size) == (expect.format, expect.size)
    assert describe_image(prepared.data) == (expect.format, expect.size)


@pytest.mark.parametrize("name", ACCEPTED)
def test_prepared_upload_meets_the_api_limits(name: str) -> None:
    """Every upload is png/jpeg/webp in RGB, RGBA or L, within the side and pixel limits."""
    limits = ImageLimits()
    prepared = prepare(name)
    im = decode(prepared.data)
    width, height = im.size
    assert im.format in ("PNG", "JPEG", "WEBP") and im.mode in ("RGB", "RGBA", "L")
    assert limits.min_side <= min(width, height) and max(width, height) <= limits.max_side
    assert width * height <= limits.max_pixels
    assert max(width, height) / min(width, height) <= limits.max_aspect


@pytest.mark.parametrize("name", WITH_NOTES)
def test_changes_are_explained_in_notes(name: str) -> None:
    """Frames dropped, conversions and downscales are told to the user in a note."""
    fragment = corpus.case(name).expect.note
    assert fragment is not None
    assert any(fragment in english(note) for note in prepare(name).notes)


@pytest.mark.parametrize("name", PASSTHROUGH)
def test_clean_upload_formats_pass_through_untouched(name: str) -> None:
    """A png/jpeg/webp that needs no change is uploaded as its original bytes."""
    assert prepare(name).data == corpus.case(name).data


@pytest.mark.parametrize("name", REENCODED)
def test_converted_inputs_are_reencoded_as_png(name: str) -> None:
    """Anything that needed a change is uploaded as a freshly encoded PNG."""
    prepared = prepare(name)
    assert prepared.data != corpus.case(name).data and prepared.format == "png"


@pytest.mark.parametrize("name", ["polyglot_png_zip", "polyglot_jpeg_html"])
def test_polyglot_payload_is_not_passed_on(name: str) -> None:
    """Data appended after an image (a zip, a script) never reaches the upload."""
    data = prepare(name).data
    assert b"PK\x03\x04" not in data and b"<script>" not in data and b"<html>" not in data


def test_exif_orientation_really_rotates_the_pixels() -> None:
    """An orientation-6 photo is turned upright: the stored left edge becomes the top."""
    im = decode(prepare("exif_rotated").data)
    assert im.size == (40, 80)
    assert close_to(colour_at(im, (20, 5)), corpus.RED)
    assert close_to(colour_at(im, (20, 70)), corpus.BLUE)


def test_animated_gif_uses_the_first_frame() -> None:
    """The first frame (red) of an animated GIF is what gets uploaded."""
    im = decode(prepare("animated_gif").data).convert("RGB")
    assert close_to(colour_at(im, (10, 10)), corpus.RED, tolerance=0)


def test_cmyk_jpeg_keeps_its_colours() -> None:
    """A CMYK JPEG of pure red becomes RGB red, not inverted or muddy."""
    im = decode(prepare("cmyk_jpeg").data)
    assert im.mode == "RGB" and close_to(colour_at(im, (32, 24)), corpus.RED)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    """A 16-bit grey ramp keeps its mid-tones when reduced to 8 bits."""
    im = decode(prepare("png_16bit_gray").data)
    assert im.mode == "L" and 100 < level_at(im, (0, 32)) < 156
    assert level_at(im, (0, 0)) < 10 and level_at(im, (0, 63)) > 245


def test_palette_transparency_becomes_alpha() -> None:
    """A palette PNG with a transparent index keeps that transparency as an alpha channel."""
    im = decode(prepare("palette_transparency").data)
    assert im.mode == "RGBA"
    assert colour_at(im, (2, 2))[3] == 0 and colour_at(im, (32, 32)) == (255, 0, 0, 255)


def test_big_photo_is_scaled_to_fit_one_megapixel() -> None:
    """A 4000x3000 photo is scaled down, keeping its shape, to at most 1,048,576 pixels."""
    prepared = prepare("big_jpeg_4000x3000")
    assert prepared.original_size == (4000, 3000) and prepared.size == (1182, 886)


def test_pixel_limit_is_configurable() -> None:
    """A lower max_pixels scales an image that the default limits would pass through."""
    prepared = prepare("plain_png", ImageLimits(max_pixels=20_000))
    width, height = prepared.size
    assert width * height <= 20_000 and abs(width / height - 1.5) < 0.02
    assert any("Scaled down" in english(note) for note in prepared.notes)


def test_content_decides_the_format_not_the_name() -> None:
    """A JPEG named .png is treated (and renamed) as a JPEG."""
    prepared = prepare("jpeg_named_png")
    assert (prepared.format, prepared.content_type) == ("jpeg", "image/jpeg")
    assert prepared.filename == "image.jpg" and prepared.source_format == "JPEG"


def test_output_filename_is_made_safe() -> None:
    """Path parts and odd characters in the user's file name do not reach the output name."""
    case = corpus.case("plain_png")
    prepared = images.prepare_input(case.data, "../../etc/my holiday?.PNG")
    assert prepared.filename == "my_holiday.png"


def test_path_source_gives_the_same_result_as_bytes(tmp_path: Path) -> None:
    """Preparing from a spooled file equals preparing from the same bytes in memory."""
    case = corpus.case("big_jpeg_4000x3000")
    path = tmp_path / "spooled.in"
    path.write_bytes(case.data)
    assert images.prepare_input(path, case.filename) == images.prepare_input(
        case.data, case.filename
    )


def test_path_source_passes_clean_files_through(tmp_path: Path) -> None:
    """A clean JPEG read from disk is uploaded as its original bytes."""
    case = corpus.case("plain_jpeg")
    path = tmp_path / "spooled.in"
    path.write_bytes(case.data)
    assert images.prepare_input(path, case.filename).data == case.data


# --------------------------------------------------------------------------- sniffing


@pytest.mark.parametrize(
    ("index", "expected"),
    [(0, "PNG"), (1, "JPEG"), (3, "GIF"), (4, "WEBP"), (5, "WEBP"), (6, "BMP"), (7, "TIFF")],
)
def test_sniff_recognises_formats_from_content(index: int, expected: str) -> None:
    """sniff names each format from its first bytes."""
    assert sniff(corpus.seeds()[index][:64]) == expected


@pytest.mark.parametrize("name", ["text_as_png", "html_as_png", "pdf_as_png", "svg_as_png"])
def test_sniff_finds_no_image_in_documents(name: str) -> None:
    """Text, HTML, PDF and SVG are not images, whatever their name."""
    assert sniff(corpus.case(name).data[:64]) is None


def test_sniff_recognises_heic_as_unsupported_format() -> None:
    """An iPhone HEIC photo is recognised (so the refusal can name it)."""
    assert sniff(corpus.case("heic_as_jpg").data) == "HEIF"


# --------------------------------------------------------------------------- describe_image


def test_describe_image_reports_format_and_size() -> None:
    """describe_image returns the lower-case format and the pixel size."""
    assert describe_image(corpus.case("plain_webp").data) == ("webp", (300, 200))


@pytest.mark.parametrize(
    ("name", "kind"),
    [("zero_bytes", "empty"), ("truncated_png", "corrupt"), ("text_as_png", "not_image")],
)
def test_describe_image_rejects_a_broken_result(name: str, kind: str) -> None:
    """A 0-byte, truncated or non-image "result" is detected, not described."""
    with pytest.raises(ImageRejected) as caught:
        describe_image(corpus.case(name).data)
    assert caught.value.kind == kind


# --------------------------------------------------------------------------- fit_to_limit


@pytest.fixture(scope="module")
def noisy_png() -> bytes:
    """A 4096x4096 PNG of pure noise (~48 MiB): the worst case for fitting."""
    return corpus.encode(corpus.noise((4096, 4096)), "PNG", compress_level=0)


@pytest.fixture(scope="module")
def fitted_noisy_png(noisy_png: bytes) -> FittedImage:
    return fit_to_limit(noisy_png, "png", DISCORD_LIMIT, "result")


def test_fit_makes_a_noisy_4096_png_fit_10_mib(
    noisy_png: bytes, fitted_noisy_png: FittedImage
) -> None:
    """A 4096x4096 noise PNG far over 10 MiB is delivered under 10 MiB."""
    assert len(noisy_png) > DISCORD_LIMIT
    assert len(fitted_noisy_png.data) <= DISCORD_LIMIT


def test_fit_output_is_what_it_claims(fitted_noisy_png: FittedImage) -> None:
    """The fitted data decodes as the declared format and size, with a matching name."""
    fitted = fitted_noisy_png
    assert describe_image(fitted.data) == (fitted.format, fitted.size)
    assert fitted.filename == f"result.{EXTENSIONS[fitted.format]}"


def test_fit_note_says_what_was_done(fitted_noisy_png: FittedImage) -> None:
    """The note names the new format, the limit and where the original is."""
    note = english(fitted_noisy_png.note)
    assert fitted_noisy_png.reencoded
    assert "WebP" in note and "10 MiB" in note and "original" in note


def test_fit_note_names_the_limit_a_caller_kept_a_margin_under(noisy_jpeg: bytes) -> None:
    """A limit of 1 MiB minus a small safety margin is still called "1 MiB" in the note."""
    assert len(noisy_jpeg) > MIB
    fitted = fit_to_limit(noisy_jpeg, "jpeg", MIB - 16 * 1024, "result")
    assert "Discord's 1 MiB upload limit" in english(fitted.note)


def test_fit_leaves_a_result_within_the_limit_untouched() -> None:
    """A result already under the limit is returned as the same bytes, with no note."""
    data = corpus.case("plain_png").data
    fitted = fit_to_limit(data, "png", DISCORD_LIMIT, "result")
    assert fitted.data is data and not fitted.reencoded and not fitted.resized
    assert (fitted.format, fitted.size, fitted.note) == ("png", (300, 200), None)


@pytest.fixture(scope="module")
def noisy_jpeg() -> bytes:
    return corpus.encode(corpus.noise((1024, 1024), seed=7), "JPEG", quality=100)


def test_fit_keeps_jpeg_as_jpeg(noisy_jpeg: bytes) -> None:
    """A JPEG result over the limit is re-encoded as JPEG, not switched to WebP."""
    fitted = fit_to_limit(noisy_jpeg, "jpeg", len(noisy_jpeg) // 2, "result")
    assert fitted.format == "jpeg" and fitted.filename == "result.jpg"
    assert describe_image(fitted.data)[0] == "jpeg"
    assert len(fitted.data) <= len(noisy_jpeg) // 2


def test_fit_prefers_lossless_when_it_is_enough() -> None:
    """A PNG a little over the limit becomes lossless WebP with identical pixels."""
    original = corpus.picture((1024, 768))
    data = corpus.encode(original, "PNG", compress_level=1)
    fitted = fit_to_limit(data, "png", len(data) - 1, "result")
    assert fitted.format == "webp" and not fitted.resized
    assert decode(fitted.data).convert("RGB").tobytes() == original.tobytes()


def test_fit_resizes_as_a_last_resort(noisy_jpeg: bytes) -> None:
    """Under a limit no quality can meet, the image is scaled down, keeping its shape."""
    fitted = fit_to_limit(noisy_jpeg, "jpeg", 100_000, "result")
    assert fitted.resized and len(fitted.data) <= 100_000
    assert fitted.size[0] < 1024 and abs(fitted.size[0] - fitted.size[1]) <= 1
    assert "Scaled down" in english(fitted.note)


def test_fit_flattens_transparency_for_jpeg() -> None:
    """An RGBA image fitted as JPEG becomes a valid RGB JPEG."""
    image = corpus.noise((256, 256), "RGBA")
    data = corpus.encode(image, "PNG")
    fitted = fit_to_limit(data, "jpeg", len(data) // 4, "result")
    assert decode(fitted.data).mode == "RGB" and fitted.format == "jpeg"


def test_fit_gives_up_on_an_impossible_limit(noisy_jpeg: bytes) -> None:
    """A limit too small for even a tiny image raises ValueError instead of looping."""
    with pytest.raises(ValueError, match="cannot fit"):
        fit_to_limit(noisy_jpeg, "jpeg", 50, "result")


def test_describe_image_reads_a_result_from_its_file(tmp_path: Path) -> None:
    """A result given as a file path is described like the same bytes."""
    data = corpus.case("plain_webp").data
    path = tmp_path / "result.bin"
    path.write_bytes(data)
    assert describe_image(path) == describe_image(data) == ("webp", (300, 200))


def test_describe_image_rejects_an_empty_result_file(tmp_path: Path) -> None:
    """A 0-byte result file is refused as empty, like 0 bytes."""
    path = tmp_path / "result.bin"
    path.write_bytes(b"")
    with pytest.raises(ImageRejected) as caught:
        describe_image(path)
    assert caught.value.kind == Rejection.EMPTY


def test_fit_from_a_file_path_matches_the_fit_from_bytes(tmp_path: Path) -> None:
    """fit_to_limit decodes a result from its file with the same outcome as from bytes."""
    data = corpus.encode(corpus.noise((300, 300), seed=3), "PNG")
    path = tmp_path / "result.png"
    path.write_bytes(data)
    from_path = fit_to_limit(path, "png", len(data) // 3, "result")
    from_bytes = fit_to_limit(data, "png", len(data) // 3, "result")
    assert from_path == from_bytes and from_path.reencoded


def test_fit_returns_a_file_within_the_limit_as_its_bytes(tmp_path: Path) -> None:
    """A result file already within the limit comes back as its own bytes, undecoded."""
    data = corpus.case("plain_png").data
    path = tmp_path / "result.png"
    path.write_bytes(data)
    fitted = fit_to_limit(path, "png", DISCORD_LIMIT, "result")
    assert fitted.data == data and not fitted.reencoded and fitted.size == (300, 200)


@pytest.fixture
def webp_methods(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, int], int]]:
    """Records (image size, libwebp method) of every lossy WebP encode the fit makes."""
    calls: list[tuple[tuple[int, int], int]] = []
    real = fit.save_lossy_webp

    def recording(im: Image.Image, buffer: io.BytesIO, quality: int, method: int) -> None:
        calls.append((im.size, method))
        real(im, buffer, quality, method)

    monkeypatch.setattr(fit, "save_lossy_webp", recording)
    return calls


@pytest.fixture(scope="module")
def noisy_webp_case() -> bytes:
    """1200x900 noise as PNG (~3 MB): fits as lossy WebP at full size under half that."""
    return corpus.encode(corpus.noise((1200, 900), seed=11), "PNG", compress_level=1)


@pytest.mark.parametrize(
    ("low_memory_pixels", "method"),
    [(500_000, fit.WEBP_LOW_MEMORY_METHOD), (2_000_000, fit.WEBP_METHOD)],
    ids=["above-threshold", "below-threshold"],
)
def test_lossy_webp_method_follows_the_image_size_in_estimate_and_encode(
    monkeypatch: pytest.MonkeyPatch,
    webp_methods: list[tuple[tuple[int, int], int]],
    noisy_webp_case: bytes,
    low_memory_pixels: int,
    method: int,
) -> None:
    """A lossy WebP fit of an image above WEBP_LOW_MEMORY_PIXELS uses the low-memory
    method, both for the sampled estimate (a small mosaic) and the full encode; an image
    below it keeps the default method for both."""
    monkeypatch.setattr(fit, "WEBP_LOW_MEMORY_PIXELS", low_memory_pixels)
    monkeypatch.setattr(fit, "SAMPLE_WHOLE_PIXELS", 100_000)  # estimate from a mosaic...
    monkeypatch.setattr(fit, "SAMPLE_TILE", 64)  # ...of 256x256 px, below either threshold
    limit = len(noisy_webp_case) // 2
    fitted = fit_to_limit(noisy_webp_case, "webp", limit, "result")
    assert fitted.format == "webp" and not fitted.resized and len(fitted.data) <= limit
    assert {size for size, _ in webp_methods} == {(256, 256), (1200, 900)}
    assert {used for _, used in webp_methods} == {method}


def test_failed_low_memory_webp_encode_falls_back_to_the_default_method(
    monkeypatch: pytest.MonkeyPatch,
    webp_methods: list[tuple[tuple[int, int], int]],
    noisy_webp_case: bytes,
) -> None:
    """When libwebp fails at the low-memory method (as methods 0 and 1 do on 16 MP:
    "encoding error 6"), the encode is repeated at the default method and still fits."""
    monkeypatch.setattr(fit, "WEBP_LOW_MEMORY_PIXELS", 500_000)
    recording = fit.save_lossy_webp

    def failing_low(im: Image.Image, buffer: io.BytesIO, quality: int, method: int) -> None:
        recording(im, buffer, quality, method)
        if method == fit.WEBP_LOW_MEMORY_METHOD:
            raise ValueError("encoding error 6")

    monkeypatch.setattr(fit, "save_lossy_webp", failing_low)
    limit = len(noisy_webp_case) // 2
    fitted = fit_to_limit(noisy_webp_case, "webp", limit, "result")
    assert len(fitted.data) <= limit
    assert decode(fitted.data).size == (1200, 900)
    methods = [used for _, used in webp_methods]  # each failure, then its retry
    assert methods[::2] == [fit.WEBP_LOW_MEMORY_METHOD] * (len(methods) // 2)
    assert methods[1::2] == [fit.WEBP_METHOD] * (len(methods) // 2)
    assert webp_methods[-1][0] == (1200, 900)


def test_default_webp_method_failure_is_not_retried(
    monkeypatch: pytest.MonkeyPatch, noisy_webp_case: bytes
) -> None:
    """An encode that fails at the default method raises (no loop of retries)."""

    def failing(im: Image.Image, buffer: io.BytesIO, quality: int, method: int) -> None:
        raise ValueError("encoding error 6")

    monkeypatch.setattr(fit, "save_lossy_webp", failing)
    with pytest.raises(ValueError, match="encoding error"):
        fit_to_limit(noisy_webp_case, "webp", len(noisy_webp_case) // 2, "result")


# --------------------------------------------------------------------------- fuzzing

MAGICS = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"BM" + bytes(12) + b"\x28\x00\x00\x00",
    b"II*\x00",
]
FUZZ_INPUTS = st.one_of(
    st.binary(max_size=512),
    st.tuples(st.sampled_from(MAGICS), st.binary(max_size=512)).map(b"".join),
)


def _prepare_or_reject(data: bytes) -> None:
    try:
        result = images.prepare_input(data, "fuzz.png")
    except ImageRejected as rejected:
        assert rejected.kind and english(rejected)
    else:
        assert isinstance(result, PreparedImage) and result.data


# Pillow warns (rather than raises) about damaged EXIF blocks; expected here, and harmless.
IGNORE_PILLOW_EXIF_WARNINGS = pytest.mark.filterwarnings(
    "ignore:Corrupt EXIF data:UserWarning", "ignore:Truncated File Read:UserWarning"
)
FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ
@IGNORE_PILLOW_EXIF_WARNINGS
@given(FUZZ_INPUTS)
def test_fuzz_random_bytes_are_only_ever_prepared_or_rejected(data: bytes) -> None:
    """Random bytes (some behind a real image signature) never raise anything else."""
    _prepare_or_reject(data)


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(corpus.seeds())))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip":
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 16))]
        else:
            del data[max(1, position) :]
        if not data:
            break
    return bytes(data)


@FUZZ
@IGNORE_PILLOW_EXIF_WARNINGS
@given(mutated_images())
def test_fuzz_mutated_images_are_only_ever_prepared_or_rejected(data: bytes) -> None:
    """Valid images with flipped, inserted, deleted or cut bytes never raise anything else."""
    _prepare_or_reject(data)


def test_fuzz_seeds_are_all_accepted() -> None:
    """The fuzzing seeds are valid images, so mutations start from decodable files."""
    for seed in corpus.seeds():
        assert isinstance(images.prepare_input(seed, "seed.png"), PreparedImage)


def test_notes_survive_the_jobs_json_round_trip() -> None:
    """Notes are stored with a job as JSON and read back as the same texts."""
    notes = prepare("big_jpeg_4000x3000").notes
    stored = json.dumps(list(notes))
    assert tuple(Text.from_json(n) for n in json.loads(stored)) == notes
    assert Text.from_json("Old English note.").render("de") == "Old English note."
