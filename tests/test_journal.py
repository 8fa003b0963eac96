"""The journal of acknowledged interactions (bot.frontend.journal): lines appended, done,
read back after a death mid-write, and compacted. The answers a start gives from it are
in tests/e2e/test_ack_journal.py."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from bot.frontend.journal import AckJournal, Acknowledged, journal_path, read_journal

TOKEN = "journal-test-token-never-logged"


def ack(interaction_id: int, *job_ids: str) -> Acknowledged:
    return Acknowledged(
        interaction_id=interaction_id,
        application_id=42,
        token=TOKEN,
        created_at=1_700_000_000.5,
        guild_id=7,
        channel_id=8,
        member_id=9,
        job_ids=job_ids or (f"job{interaction_id}",),
        locale="de",
        guild_locale="fr",
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return journal_path(tmp_path / "spool", None)


def refuse(fd: int, data: bytes) -> int:
    raise OSError(28, "No space left on device")


def opened(path: Path, **kw: int) -> AckJournal:
    journal = AckJournal(path, **kw)
    journal.open()
    return journal


def lines_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_journal_is_named_by_the_process_shards_in_a_folder_of_its_spool(
    tmp_path: Path,
) -> None:
    """Shards 3 and 1 and all shards have journals of their own, under spool/journal."""
    assert journal_path(tmp_path, [3, 1]) == tmp_path / "journal" / "acks-1-3.jsonl"
    assert journal_path(tmp_path, None) == tmp_path / "journal" / "acks-all.jsonl"


def test_an_acknowledged_interaction_reads_back_whole(path: Path) -> None:
    """Every field of an acknowledgement, the job ids in order, survives the file."""
    journal = opened(path)
    journal.acknowledged(ack(1, "a", "b", "c"))
    assert read_journal(path) == {1: ack(1, "a", "b", "c")}


def test_the_deferred_reply_id_is_read_back_with_its_interaction(path: Path) -> None:
    """A start after the acknowledgement edits the reply Discord named."""
    journal = opened(path)
    journal.acknowledged(ack(1))
    journal.deferred(1, 555)
    assert read_journal(path)[1].message_id == 555


def test_a_done_interaction_is_not_read_back(path: Path) -> None:
    """Only the interactions not done are left for the next start."""
    journal = opened(path)
    journal.acknowledged(ack(1))
    journal.acknowledged(ack(2))
    journal.done(1)
    assert list(read_journal(path)) == [2]
    assert [a.interaction_id for a in journal.pending] == [2]


def test_a_line_is_in_the_file_before_the_call_returns(path: Path) -> None:
    """Nothing waits in a buffer of the process: what a kill -9 would leave is there."""
    journal = opened(path)
    journal.acknowledged(ack(1))
    assert lines_of(path)[-1]["ack"] == 1


def test_a_torn_last_line_is_skipped_with_a_warning(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A process killed mid-write leaves half a line: the lines before it read, the half
    line does not, and the next start writes whole lines after it."""
    journal = opened(path)
    journal.acknowledged(ack(1))
    journal.acknowledged(ack(2))
    journal.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # the second line cut short
    with caplog.at_level(logging.WARNING, "bot.frontend.journal"):
        after = AckJournal(path)
        assert [a.interaction_id for a in after.open()] == [1]
    assert any("Skipped 1 unreadable lines" in r.getMessage() for r in caplog.records)
    after.acknowledged(ack(3))
    assert list(read_journal(path)) == [1, 3]


def test_a_short_write_does_not_spoil_the_next_line(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that stopped halfway (a full disk) is followed by a line that reads."""
    journal = opened(path)
    real_write = os.write

    def half_write(fd: int, data: bytes) -> int:
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(os, "write", half_write)
    journal.acknowledged(ack(1))
    monkeypatch.setattr(os, "write", real_write)
    journal.acknowledged(ack(2))
    assert list(read_journal(path)) == [2]


def test_opening_rewrites_the_file_without_done_interactions(path: Path) -> None:
    """A start leaves one line per interaction still open, whatever the last run wrote."""
    journal = opened(path)
    for n in range(1, 6):
        journal.acknowledged(ack(n))
        journal.deferred(n, 100 + n)
    for n in (1, 2, 4):
        journal.done(n)
    journal.close()
    again = AckJournal(path)
    assert [(a.interaction_id, a.message_id) for a in again.open()] == [(3, 103), (5, 105)]
    assert [line["ack"] for line in lines_of(path)] == [3, 5]


def test_the_file_is_compacted_every_n_lines(path: Path) -> None:
    """After ``compact_every`` lines the file holds only the interactions in flight."""
    journal = opened(path, compact_every=10)
    journal.acknowledged(ack(100))  # stays in flight throughout
    for n in range(1, 20):
        journal.acknowledged(ack(n))
        journal.done(n)
    assert len(lines_of(path)) < 10
    assert list(read_journal(path)) == [100]


def test_the_file_is_readable_by_the_bots_user_only(path: Path) -> None:
    """It holds interaction tokens: no group or other permission."""
    opened(path).acknowledged(ack(1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_journal_that_cannot_be_opened_lets_commands_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A spool where the journal's folder cannot be made: one warning, and every call
    after it does nothing instead of raising."""
    (tmp_path / "spool").write_text("a file where the folder should be")
    journal = AckJournal(journal_path(tmp_path / "spool", None))
    with caplog.at_level(logging.WARNING, "bot.frontend.journal"):
        assert journal.open() == []
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    journal.acknowledged(ack(1))
    journal.deferred(1, 5)
    journal.done(1)
    journal.close()


def test_a_failing_write_is_one_warning_and_no_error(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A disk that refuses every write is reported once, not once per command."""
    journal = opened(path)

    monkeypatch.setattr(os, "write", refuse)
    with caplog.at_level(logging.WARNING, "bot.frontend.journal"):
        for n in range(5):
            journal.acknowledged(ack(n))
            journal.done(n)
    assert len(caplog.records) == 1 and "No space left" in caplog.records[0].getMessage()


def test_no_token_is_logged(
    path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither a torn file nor a failing write puts a token in the log."""
    journal = opened(path)
    journal.acknowledged(ack(1))
    journal.close()
    path.write_bytes(path.read_bytes()[:-30])
    with caplog.at_level(logging.DEBUG):
        again = AckJournal(path)
        again.open()
        monkeypatch.setattr(os, "write", refuse)
        again.acknowledged(ack(2))
    assert caplog.records and not any(TOKEN in r.getMessage() for r in caplog.records)


def test_opened_again_it_reads_nothing_of_its_own_as_the_last_runs(path: Path) -> None:
    """Closed and opened again in one process (the upscale cog unloaded and loaded), the
    interactions in flight stay in the file and none is handed back as left by a restart."""
    journal = opened(path)
    journal.acknowledged(ack(1))
    journal.close()
    assert journal.open() == []
    assert list(read_journal(path)) == [1]
