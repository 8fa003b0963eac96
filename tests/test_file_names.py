"""One clean file name per job: the rules (bot.images.clean_filename) over the hostile-name
corpus."""

from __future__ import annotations

import io
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from bot import images
from bot.images.prepare import DEVICE_NAMES, DEVICE_SUFFIX, IMAGE_EXTENSIONS
from tests.hostilenames import CORPUS, MORE, NameCase

# What a clean name is (see bot.images.clean_filename): a stem of 1-64 letters, digits,
# "_" and "-" that begins and ends with a letter or digit, and an optional extension.
CLEAN_STEM = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9])?")
CLEAN_NAME = re.compile(rf"(?P<stem>{CLEAN_STEM.pattern})(?:\.(?P<ext>[a-z0-9]+))?")
FORMATS = ("png", "jpeg", "webp")
# Pieces hostile names are made of, for the property tests.
PIECES = st.sampled_from(
    [
        "/", "\\", "..", ".", "~", "%2e", "%2F", "%5c", "%25", "%00", "\x00", "\r\n", "\t",
        " ", "\u202e", "\u2066", "\u200b", "\ufeff", "_", "-", "CON", "nul", "Com1", "lpt9",
        "png", "JPG", ".webp", ".exe", "é", "\u0301", "写真", "Ａ", "\uff0f", "¹",
    ]
)  # fmt: skip
HOSTILE_TEXT = st.lists(st.one_of(PIECES, st.text(max_size=4)), max_size=40).map("".join)


def ids(cases: tuple[NameCase, ...]) -> list[str]:
    return [ascii(case.raw)[:40] for case in cases]


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 60, 30)).save(out, "JPEG")
    return out.getvalue()


# -- the rules -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CORPUS + MORE, ids=ids(CORPUS + MORE))
def test_a_hostile_name_becomes_its_clean_stem_with_the_formats_extension(case: NameCase) -> None:
    """Paths, "..", "~", NUL, CR/LF, bidi controls, percent-encoding, device names, long
    and empty names, other scripts: each gives its expected clean stem, and ".png"."""
    assert images.clean_filename(case.raw, "png") == f"{case.stem}.png"


@pytest.mark.parametrize(("fmt", "extension"), [("png", "png"), ("jpeg", "jpg"), ("webp", "webp")])
def test_the_extension_is_that_of_the_format_sent_whatever_the_members(
    fmt: str, extension: str
) -> None:
    """The member's extension (or its absence) never names what is sent."""
    assert images.clean_filename("photo.gif", fmt) == f"photo.{extension}"
    assert images.clean_filename("photo.PNG", fmt) == f"photo.{extension}"
    assert images.clean_filename("photo", fmt) == f"photo.{extension}"
    assert images.clean_filename("photo.exe", fmt) == f"photo_exe.{extension}"


def test_without_a_format_only_an_image_extension_is_kept_lower_cased() -> None:
    """The name recorded at the acknowledgement (its format is not known yet) keeps the
    member's extension when it names an image format; any other is part of the stem."""
    assert images.clean_filename("Photo.JPG") == "Photo.jpg"
    assert images.clean_filename("scan.tiff") == "scan.tiff"
    assert images.clean_filename("payload.exe") == "payload_exe"
    assert images.clean_filename("archive.tar.gz") == "archive_tar_gz"
    assert images.clean_filename("photo") == "photo"


def test_an_unknown_format_is_refused() -> None:
    """A format with no extension of its own is a bug in the caller, not a name."""
    with pytest.raises(ValueError, match="gif"):
        images.clean_filename("photo.png", "gif")


@pytest.mark.parametrize("device", sorted(DEVICE_NAMES))
def test_a_device_name_in_any_case_with_or_without_extension_gets_a_suffix(device: str) -> None:
    """CON, NUL, COM1, LPT1...: as a stem they would name a device on Windows."""
    for raw in (device, device.lower(), f"{device}.png", f"{device.lower()}.jpeg"):
        stem = images.clean_filename(raw, "png").removesuffix(".png")
        assert stem == raw.split(".")[0] + DEVICE_SUFFIX
        assert stem.upper() not in DEVICE_NAMES


def test_a_long_name_is_cut_to_64_characters_of_stem() -> None:
    """A 244-character name gives a 64-character stem (and its extension)."""
    raw = CORPUS[2].raw
    assert len(raw) == 244
    name = images.clean_filename(raw, "png")
    assert len(name.removesuffix(".png")) == images.MAX_STEM_CHARS == 64


@given(HOSTILE_TEXT, st.sampled_from((None, *FORMATS)))
def test_any_text_gives_a_clean_name(raw: str, fmt: str | None) -> None:
    """Whatever the text, the name is a clean stem (never a device name) with, given a
    format, that format's extension, and without one an image extension or none."""
    name = images.clean_filename(raw, fmt)
    match = CLEAN_NAME.fullmatch(name)
    assert match is not None, name
    assert match["stem"].upper() not in DEVICE_NAMES
    if fmt is not None:
        assert match["ext"] == images.EXTENSIONS[fmt]
    else:
        assert match["ext"] is None or match["ext"] in IMAGE_EXTENSIONS


@given(HOSTILE_TEXT, st.sampled_from((None, *FORMATS)))
def test_cleaning_a_clean_name_changes_nothing_but_its_extension(raw: str, fmt: str | None) -> None:
    """The name stored at the acknowledgement, cleaned again for the format sent (at
    intake, or read back from the row), is the name cleaned once for that format."""
    assert images.clean_filename(images.clean_filename(raw), fmt) == images.clean_filename(raw, fmt)


@given(HOSTILE_TEXT)
def test_cleaning_a_clean_stem_changes_nothing(raw: str) -> None:
    """The result's stem ("<stem>_4x", cleaned again when it is fitted) stays as it was."""
    stem = images.clean_stem(raw)
    assert CLEAN_STEM.fullmatch(stem) and images.clean_stem(stem) == stem
    assert images.clean_stem(f"{stem}_4x") == f"{stem}_4x"


def test_prepare_input_names_its_output_for_the_format_it_sends() -> None:
    """A JPEG called CON.png is sent as CON_file.jpg."""
    prepared = images.prepare_input(jpeg(), "../CON.png")
    assert (prepared.format, prepared.filename) == ("jpeg", "CON_file.jpg")
