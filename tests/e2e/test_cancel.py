"""The Cancel button on a waiting job, through the real bot and the emulators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.emulators.discord import Injected, find_button
from tests.emulators.hold import Hold
from tests.harness import Harness, running_bot
from tests.support.images import png


def shown(h: Harness, it: Injected) -> str:
    """The current text of the interaction's reply, as the channel shows it."""
    assert it.original is not None
    message = h.discord.channel.messages.get(int(it.original["id"]), it.original)
    return str(message.get("content"))


def is_cancel(component: dict[str, Any]) -> bool:
    return str(component.get("custom_id", "")).startswith("upscale:cancel:")


def has_cancel(it: Injected) -> bool:
    message = it.original
    return message is not None and any(
        is_cancel(c) for row in message.get("components", []) for c in row.get("components", [])
    )


async def waiting_job(h: Harness) -> tuple[Injected, Injected, Hold]:
    """One job held while upscaling (the only slot) and a second one of alice's waiting;
    releasing the hold lets the first finish."""
    upscale = h.onemin.hold("upscale")
    running = await h.discord.slash("upscale", {"image": h.discord.attachment(png(), "a.png")})
    await upscale.reached()
    queued = await h.discord.slash("upscale", {"image": h.discord.attachment(png(), "b.png")})
    await queued.wait(has_cancel)
    return running, queued, upscale


async def press_cancel(h: Harness, it: Injected, member: Any = None) -> Injected:
    assert it.original is not None
    button = find_button(it.original, is_cancel)
    click = await h.discord.click(it.original, button["custom_id"], member=member)
    await click.acked()
    return click


async def test_requester_cancels_a_queued_job_and_is_refunded(tmp_path: Path) -> None:
    """Cancel on a waiting job: the reply says cancelled, the credit comes back, and
    1min.ai never sees the image."""
    async with running_bot(tmp_path, max_concurrent_jobs=1) as h:
        running, queued, upscale = await waiting_job(h)
        await press_cancel(h, queued)
        await h.discord.wait_until(lambda: "Cancelled" in shown(h, queued))
        upscale.release()
        await running.final(timeout=20)
        assert await h.balance(h.discord.alice.user.id) == (1, 0)
        assert h.onemin.calls["upload"] == 1


async def test_moderator_can_cancel_a_members_job(tmp_path: Path) -> None:
    """A moderator pressing Cancel on someone's waiting job cancels and refunds it."""
    async with running_bot(tmp_path, max_concurrent_jobs=1) as h:
        running, queued, upscale = await waiting_job(h)
        await press_cancel(h, queued, member=h.discord.moderator)
        await h.discord.wait_until(lambda: "Cancelled" in shown(h, queued))
        upscale.release()
        await running.final(timeout=20)
        assert await h.balance(h.discord.alice.user.id) == (1, 0)


async def test_another_member_cannot_cancel(tmp_path: Path) -> None:
    """Another member pressing Cancel is told no; the job goes on and is delivered."""
    async with running_bot(tmp_path, max_concurrent_jobs=1) as h:
        _, queued, upscale = await waiting_job(h)
        click = await press_cancel(h, queued, member=h.discord.bob)
        reply = await click.final()
        assert "Only the member" in reply["content"]
        upscale.release()
        final = await queued.final(timeout=20)
        assert final.get("attachments")
        assert await h.balance(h.discord.alice.user.id) == (2, 0)


async def test_cancel_after_the_upscale_started_is_too_late(tmp_path: Path) -> None:
    """Pressed once the image is with the upscaler, Cancel says it is too late."""
    async with running_bot(tmp_path, max_concurrent_jobs=1) as h:
        upload = h.onemin.hold("upload")
        upscale = h.onemin.hold("upscale")
        it = await h.discord.slash("upscale", {"image": h.discord.attachment(png(), "a.png")})
        await it.wait(has_cancel)  # shown while queued or uploading
        assert it.original is not None
        # The member's client still shows the button it had while the job was uploading.
        stale = {**it.original, "id": "1"}
        upload.release()
        await upscale.reached()
        button = find_button(stale, is_cancel)
        click = await h.discord.click(stale, button["custom_id"])
        reply = await click.final()
        assert "Too late" in reply["content"]
        upscale.release()
        final = await it.final(timeout=20)
        assert final.get("attachments")
        assert await h.balance(h.discord.alice.user.id) == (1, 0)
