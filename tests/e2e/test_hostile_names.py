"""The hostile-name corpus end to end: each name is sent to 1min.ai and posted to Discord
under its clean name only, once, charged once; straight through, and across a kill -9
between the acknowledgement and the upload.

Every name of :data:`tests.hostilenames.CORPUS` is one attachment (a small PNG, or a
small JPEG for every other name, so the name sent follows the format sent), all of them
in one bot run. The attachment's URL keeps the emulated CDN's own name; only the file
name Discord reports is hostile, as it is for a member's upload.
"""

from __future__ import annotations

import io
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from bot import images
from bot.images.model import EXTENSIONS
from tests.e2e.test_restart import World, result_jobs, results, stop, world
from tests.emulators.discord import DiscordEmulator, Injected
from tests.emulators.hold import Hold
from tests.harness import running_bot
from tests.hostilenames import CORPUS, NameCase
from tests.support.images import png

FINAL_TIMEOUT = 60.0  # seconds for a job's result under a loaded test machine
# cogs/delivery.py names the result "<stem>_4x" from at most this much of the input's stem.
RESULT_STEM_CHARS = 60


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 60, 30)).save(out, "JPEG")
    return out.getvalue()


def sent_as(index: int) -> str:
    """The format the index-th name's image is in (and so is uploaded in)."""
    return "jpeg" if index % 2 else "png"


def uploaded_name(index: int, case: NameCase) -> str:
    return f"{case.stem}.{EXTENSIONS[sent_as(index)]}"


def posted_name(case: NameCase) -> str:
    return f"{case.stem[:RESULT_STEM_CHARS]}_4x.png"


def hostile_attachment(discord: DiscordEmulator, index: int, case: NameCase) -> dict[str, Any]:
    data = jpeg() if sent_as(index) == "jpeg" else png()
    attachment = discord.attachment(data, f"upload{index}.{EXTENSIONS[sent_as(index)]}")
    attachment["filename"] = case.raw
    return attachment


def check_posted_under_clean_names(finals: list[tuple[Injected, dict[str, Any]]]) -> None:
    """Each result's file (its multipart name and the attachment's) has the clean name."""
    for (it, final), case in zip(finals, CORPUS, strict=True):
        assert final.get("attachments"), (case.raw, final.get("content"))
        assert it.file(final)[0] == posted_name(case), case.raw
        assert [a["filename"] for a in final["attachments"]] == [posted_name(case)], case.raw


def expected_uploads() -> Counter[str]:
    return Counter(uploaded_name(i, case) for i, case in enumerate(CORPUS))


async def test_each_hostile_name_is_delivered_once_under_its_clean_name(tmp_path: Path) -> None:
    """Straight through: every name is uploaded to 1min.ai and posted to Discord under its
    clean name, each job delivered once and charged once."""
    count = len(CORPUS)
    async with running_bot(tmp_path, max_jobs_per_user=count, default_user_limit=count) as h:
        injected = [
            await h.discord.slash("upscale", {"image": hostile_attachment(h.discord, i, case)})
            for i, case in enumerate(CORPUS)
        ]
        finals = [(it, await it.final(timeout=FINAL_TIMEOUT)) for it in injected]
        check_posted_under_clean_names(finals)
        assert Counter(h.onemin.upload_filenames) == expected_uploads()
        assert h.onemin.calls["upload"] == count and h.onemin.upscales == count
        assert await h.balance(h.discord.alice.user.id) == (count, 0)
        posted = [m for m in h.discord.channel_messages() if m.get("attachments")]
        assert len(posted) == count


def stored_names(w: World) -> list[object]:
    return [name for (name,) in w.query("SELECT source_name FROM jobs ORDER BY created_at, id")]


async def test_hostile_names_cut_off_before_their_upload_are_delivered_once_clean(
    tmp_path: Path,
) -> None:
    """kill -9 with half the jobs taking their image in, the rest in line and one at its
    upload: after a restart every job is delivered once and charged once, and 1min.ai and
    Discord saw only clean names (the cut-off upload's included). The names stored at the
    acknowledgement are the clean ones."""
    count = len(CORPUS)
    limits = {"MAX_JOBS_PER_USER": str(count), "DEFAULT_USER_LIMIT": str(count)}
    in_line = [i for i in range(count) if i % 2 == 0]  # taken in, then wait for the upload
    in_intake = [i for i in range(count) if i % 2 == 1]  # their download is held
    async with world(tmp_path) as w:
        upload = w.onemin.hold("upload", times=1)
        proc = await w.start(MAX_CONCURRENT_JOBS="1", **limits)
        injected: dict[int, Injected] = {}
        try:
            for i in in_line:
                attachment = hostile_attachment(w.discord, i, CORPUS[i])
                injected[i] = await w.discord.slash("upscale", {"image": attachment})
            await upload.reached()
            downloads: list[Hold] = []
            for i in in_intake:
                attachment = hostile_attachment(w.discord, i, CORPUS[i])
                downloads.append(w.discord.hold_attachment(attachment))
                injected[i] = await w.discord.slash("upscale", {"image": attachment})
            # The job at its upload holds the one slot; another may be claimed ahead of
            # its turn, waiting for the slot (status running, stage queued).
            await w.wait_for(
                lambda: (
                    w.query(
                        "SELECT status = 'intake', COUNT(*) FROM jobs GROUP BY status = 'intake'"
                        " ORDER BY 1"
                    )
                    == [(0, len(in_line)), (1, len(in_intake))]
                )
            )
            assert w.query("SELECT COUNT(*) FROM jobs WHERE stage = 'uploading'") == [(1,)]
            clean = Counter(images.clean_filename(case.raw) for case in CORPUS)
            assert Counter(stored_names(w)) == clean
            cut_off = list(w.onemin.upload_filenames)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            stop(proc)
        assert len(cut_off) == 1 and cut_off[0] in expected_uploads()
        for hold in downloads:
            hold.release()
        upload.release()
        proc = await w.start(**limits)
        try:
            finals = [(injected[i], await injected[i].final(FINAL_TIMEOUT)) for i in range(count)]
            check_posted_under_clean_names(finals)
            await w.wait_settled()
            assert w.query("SELECT status, COUNT(*) FROM jobs GROUP BY status") == [
                ("delivered", count)
            ]
            assert w.query("SELECT state, COUNT(*) FROM ledger_entries GROUP BY state") == [
                ("committed", count)
            ]
            assert len(results(w)) == count and len(set(result_jobs(w))) == count
            assert w.onemin.upscales == count
            uploads = w.onemin.upload_filenames
            assert uploads[:1] == cut_off
            assert Counter(uploads[1:]) == expected_uploads()
        finally:
            stop(proc)
