"""What a waiting member is told: why the job waits, and never a restart that did not
happen (the real bot against the emulators)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import running_bot
from tests.support.images import png

RESTARTED = "The bot restarted"


@pytest.mark.parametrize("trouble", ["401", "406"])
async def test_a_job_waiting_for_a_refusing_service_says_why_and_until_when(
    tmp_path: Path, trouble: str
) -> None:
    """1min.ai refuses the bot's account (key refused, or out of credits): the job that
    hit it waits in line, and its message says the service is refusing the account, that
    the owner was told, and when the job will be refunded if that lasts (the circuit's
    opening plus ONEMIN_OUTAGE_REFUND_AFTER)."""
    async with running_bot(tmp_path, circuit_probe_interval=3600, circuit_give_up=600) as h:
        if trouble == "401":
            h.onemin.refuse_key(True)
        else:
            h.onemin.set_credits(0)
        it = await h.discord.slash("upscale", {"image": h.discord.attachment(png(), "a.png")})

        def says_why() -> bool:
            return "refusing the bot's account" in str((it.original or {}).get("content"))

        await it.wait(lambda _: says_why(), timeout=15)
        text = str((it.original or {}).get("content"))
        assert "the bot owner has been told" in text
        state = await h.services.circuit.state()
        assert state.opened_at is not None
        assert f"<t:{int(state.opened_at + 600)}:R>" in text
        assert RESTARTED not in text


async def test_no_restart_notice_when_the_service_accepts_the_bot_again(tmp_path: Path) -> None:
    """A job that waited for the circuit continues when it closes and is delivered; the
    member is never told "the bot restarted", since it did not."""
    async with running_bot(tmp_path, circuit_probe_interval=0.3) as h:
        h.onemin.refuse_key(True)
        it = await h.discord.slash("upscale", {"image": h.discord.attachment(png(), "a.png")})
        await it.wait(
            lambda i: "refusing the bot's account" in str((i.original or {}).get("content")),
            timeout=15,
        )
        h.onemin.refuse_key(False)
        final = await it.final(timeout=30)
        assert final.get("attachments")
        seen = [str(edit.get("content")) for edit in it.edits]
        assert not any(RESTARTED in text for text in seen), seen
        channel = [str(m.get("content")) for m in h.discord.channel_messages()]
        assert not any(RESTARTED in text for text in channel)
