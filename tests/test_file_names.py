"""One clean file name per job: the rules (bot.images.clean_filename) over the hostile-name
corpus, and the job queue recording, reading and uploading under that name only.

The queue tests run on both engines, on the rigs of tests/test_jobs.py.
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from bot import images
from bot.images.model import EXTENSIONS
from bot.images.prepare import (
    DEVICE_NAMES,
    DEVICE_SUFFIX,
    IMAGE_EXTENSIONS,
    MAX_STEM_CHARS,
    clean_stem,
)
from bot.jobs import Job, JobRequest, Source
from cogs.menu import shown_name
from tests.emulators.onemin import OneMinEmulator
from tests.hostilenames import CORPUS, MORE, NameCase
from tests.support.databases import Databases
from tests.support.images import png
from tests.test_jobs import ALICE, CHANNEL, GUILD, KEY, Rig, make_rig

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
    assert len(name.removesuffix(".png")) == MAX_STEM_CHARS == 64


@given(HOSTILE_TEXT, st.sampled_from((None, *FORMATS)))
def test_any_text_gives_a_clean_name(raw: str, fmt: str | None) -> None:
    """Whatever the text, the name is a clean stem (never a device name) with, given a
    format, that format's extension, and without one an image extension or none."""
    name = images.clean_filename(raw, fmt)
    match = CLEAN_NAME.fullmatch(name)
    assert match is not None, name
    assert match["stem"].upper() not in DEVICE_NAMES
    if fmt is not None:
        assert match["ext"] == EXTENSIONS[fmt]
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
    stem = clean_stem(raw)
    assert CLEAN_STEM.fullmatch(stem) and clean_stem(stem) == stem
    assert clean_stem(f"{stem}_4x") == f"{stem}_4x"


def test_prepare_input_names_its_output_for_the_format_it_sends() -> None:
    """A JPEG called CON.png is sent as CON_file.jpg."""
    prepared = images.prepare_input(jpeg(), "../CON.png")
    assert (prepared.format, prepared.filename) == ("jpeg", "CON_file.jpg")


# -- the job queue ---------------------------------------------------------------------------

RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def rigs(tmp_path: Path, databases: Databases) -> AsyncIterator[RigFactory]:
    """Rigs on one database (as successive processes would), stopped at the end."""
    made: list[Rig] = []
    async with OneMinEmulator(api_key=KEY) as emu, aiohttp.ClientSession() as session:

        async def make(**options: Any) -> Rig:
            made.append(await make_rig(tmp_path, databases, session, emu, **options))
            return made[-1]

        yield make
        for rig in reversed(made):
            await rig.queue.shutdown(grace=0.5)


def request(rig: Rig, filename: str, data: bytes | None = None) -> JobRequest:
    return JobRequest(
        GUILD,
        CHANNEL,
        ALICE,
        (),
        Source(rig.images.add(png() if data is None else data), filename),
        "the front end's context",
    )


async def source_name(rig: Rig, job_id: str) -> object:
    row = await rig.db.fetchone("SELECT source_name FROM jobs WHERE id = ?", (job_id,))
    assert row is not None
    return row["source_name"]


async def test_a_job_is_recorded_under_the_clean_name(rigs: RigFactory) -> None:
    """At the acknowledgement the row, and the job the front end gets back, carry the
    clean name (with the member's image extension), never the raw one."""
    r = await rigs(claim=False, max_per_member=len(CORPUS), limit=len(CORPUS))
    for case in CORPUS:
        job = await r.queue.accept(request(r, case.raw))
        expected = images.clean_filename(case.raw)
        assert job.source.filename == expected and expected.startswith(case.stem)
        assert await source_name(r, job.id) == expected


async def test_a_raw_name_an_older_version_stored_is_read_back_clean(rigs: RigFactory) -> None:
    """Rows written before names were cleaned at the acknowledgement hold the raw name:
    read into a job, its source and its prepared input carry the clean name (the input's
    with the extension of the format stored for it). PostgreSQL's text holds no NUL, so
    there no older version could have stored those names."""
    r = await rigs(claim=False)
    cases = [c for c in CORPUS if r.db.engine == "sqlite" or "\x00" not in c.raw]
    insert = (
        "INSERT INTO jobs (id, guild_id, channel_id, member_id, status, stage, output_format,"
        " source_name, source_url, input_format, input_bytes, input_width, input_height,"
        " created_at) VALUES (?, ?, ?, ?, 'queued', 'queued', 'png', ?, NULL, 'jpeg', 900,"
        " 64, 48, '2026-01-01 00:00:00.000000')"
    )
    for n, case in enumerate(cases):
        await r.db.write(insert, (f"{n:032x}", GUILD, CHANNEL, ALICE, case.raw))
    rows = await r.db.fetchall("SELECT * FROM jobs ORDER BY id")
    assert [row["source_name"] for row in rows] == [case.raw for case in cases]
    for row, case in zip(rows, cases, strict=True):
        job = Job.from_row(row)
        assert job.source.filename == images.clean_filename(case.raw)
        assert job.input.filename == f"{case.stem}.jpg"


async def test_an_older_versions_queued_job_is_uploaded_under_the_clean_name(
    rigs: RigFactory,
) -> None:
    """A job left in line by an older version, its raw name in the row, is claimed by this
    one: 1min.ai gets the clean name, named for the format sent."""
    first = await rigs(claim=False)
    job = await first.queue.accept(request(first, "cat.png", jpeg()))
    assert await first.queue.take_in(job)
    await first.db.write(
        "UPDATE jobs SET source_name = ? WHERE id = ?", ("../../etc/passwd\r\n.png", job.id)
    )
    second = await rigs()
    await second.settled(job)
    assert second.front.jobs[job.id].delivered
    assert second.emu.upload_filenames == ["passwd.jpg"]


async def test_an_upload_is_named_for_the_format_sent_not_the_members_extension(
    rig: Rig,
) -> None:
    """A JPEG attached as photo.png goes to 1min.ai as photo.jpg, with the JPEG's type."""
    job = await rig.queue.accept(request(rig, "photo.png", jpeg()))
    assert await rig.queue.take_in(job)
    await rig.settled(job)
    assert rig.emu.upload_filenames == ["photo.jpg"]
    assert rig.emu.assets[0].content_type == "image/jpeg"


@pytest.fixture
async def rig(rigs: RigFactory) -> Rig:
    return await rigs()


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("notes.txt", "notes.txt"),
        ("evil\u202egnp.exe", "evilgnp.exe"),
        ("line\nbreak\x00.pdf", "linebreak.pdf"),
        ("**bold**_x_.txt", "\\*\\*bold\\*\\*\\_x\\_.txt"),
        ("@everyone.txt", "@\u200beveryone.txt"),
        ("a" * 300, "a" * 80),
        ("\u202e", "?"),
    ],
)
def test_a_skipped_file_is_named_in_chat_without_controls_markdown_or_mentions(
    raw: str, shown: str
) -> None:
    """The menu's "skipped, not an image" note shows a member's file name as plain text."""
    assert shown_name(raw) == shown
