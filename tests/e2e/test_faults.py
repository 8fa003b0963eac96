"""Fault tolerance end to end: Discord's gateway and REST misbehaving during a job."""

from __future__ import annotations

import json
from pathlib import Path

from tests.harness import DISCORD_TOKEN, ONEMIN_KEY, running_bot
from tests.support.images import decode, png

# The deferred reply, edited through the interaction webhook (by id or as @original).
WEBHOOK_MESSAGE = r"/webhooks/\d+/[^/]+/messages/[^/]+$"


async def test_gateway_reconnect_mid_job_still_delivers_once(tmp_path: Path) -> None:
    """The gateway asks the bot to reconnect while a job is upscaling: the bot resumes,
    the result is delivered once and charged once."""
    async with running_bot(tmp_path) as h:
        upscale = h.onemin.hold("upscale")
        it = await h.discord.slash("upscale", {"image": h.discord.attachment(png(), "a.png")})
        await upscale.reached()
        await h.discord.force_reconnect()
        await h.discord.wait_connected()
        upscale.release()
        final = await it.final()
        assert decode(it.file(final)[1]).size == (256, 192)
        assert h.discord.resumes >= 1
        assert await h.balance(h.discord.alice.user.id) == (1, 0)
        assert h.onemin.upscales == 1


async def test_interaction_sent_while_disconnected_is_handled_after_resume(
    tmp_path: Path,
) -> None:
    """An /upscale that arrives while the bot reconnects is delivered after it resumes."""
    async with running_bot(tmp_path) as h:
        await h.discord.force_reconnect()
        _, final = await h.upscale(png())
        assert final.get("attachments")


async def test_rest_429_and_500_while_delivering_are_retried(tmp_path: Path) -> None:
    """Discord answers the delivery with 429 twice then 500: discord.py retries, the
    result arrives once and is charged once."""
    async with running_bot(tmp_path) as h:
        h.discord.fail(WEBHOOK_MESSAGE, 429, method="PATCH", times=2, files_only=True)
        h.discord.fail(WEBHOOK_MESSAGE, 500, method="PATCH", times=1, files_only=True)
        it = await h.discord.slash("upscale", {"image": h.discord.attachment(png(), "a.png")})
        final = await it.final(timeout=30)
        assert final.get("attachments")
        assert await h.balance(h.discord.alice.user.id) == (1, 0)
        delivered = [c for c in h.discord.calls if c.files and c.status == 200]
        assert len(delivered) == 1


async def test_final_delivery_failure_refunds_and_is_logged(tmp_path: Path) -> None:
    """Discord refusing the delivery (403: permission lost mid-job) refunds the credit,
    tells the member and logs it."""
    async with running_bot(tmp_path) as h:
        it = await h.discord.slash("upscale", {"image": h.discord.attachment(png(), "a.png")})
        h.discord.fail(WEBHOOK_MESSAGE, 403, method="PATCH", files_only=True)
        final = await it.final(timeout=30)
        assert "Attach Files" in final["content"] and "refunded" in final["content"]
        assert await h.balance(h.discord.alice.user.id) == (0, 0)
        assert any("could not be delivered" in line for line in h.logs.lines)


async def test_secrets_never_reach_logs_or_discord(tmp_path: Path) -> None:
    """Across a success, a refusal and several service faults, neither the bot token nor
    the API key appears in any log line or in anything sent to Discord."""
    async with running_bot(tmp_path, circuit_probe_interval=0.2) as h:
        await h.upscale(png())
        await h.upscale(b"not an image", "x.png")
        for route, fault in (
            ("upscale", "unauthorized"),
            ("upload", "rejected"),
            ("upscale", "drop"),
        ):
            h.onemin.fail(route, fault)
            await h.upscale(png())
        await (await h.discord.slash("credits")).final()
        sent = json.dumps([c.json for c in h.discord.calls], default=str)
        for secret in (DISCORD_TOKEN, ONEMIN_KEY):
            assert secret not in sent
            assert not [line for line in h.logs.lines if secret in line]
        assert len(h.logs.lines) > 20  # the check read real logs
