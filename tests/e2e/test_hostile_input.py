"""The hostile-input corpus through the real command path (Discord -> bot -> 1min.ai)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import running_bot
from tests.imagecorpus import case, case_names
from tests.support.images import decode

PROGRESS = ("⏳", "⚙️")


@pytest.mark.parametrize("name", case_names(big=True))
async def test_corpus_file_is_refused_clearly_or_upscaled_correctly(
    tmp_path: Path, name: str
) -> None:
    """Refused files: a plain message, no 1min.ai call, no credit. Odd but valid files:
    delivered at 4x the prepared size, charged once. Never a crash."""
    sample = case(name)
    async with running_bot(tmp_path) as h:
        it, final = await h.upscale(sample.data, sample.filename, timeout=60)
        alice = h.discord.alice.user.id
        if sample.expect.refused:
            assert not final.get("attachments"), name
            text = final["content"]
            assert text and not text.startswith(PROGRESS) and "Traceback" not in text
            assert sum(h.onemin.calls.values()) == 0
            assert await h.balance(alice) == (0, 0)
        else:
            _, data = it.file(final)
            expected = sample.expect.size
            assert expected is not None
            assert decode(data).size == (expected[0] * 4, expected[1] * 4)
            assert await h.balance(alice) == (1, 0)
