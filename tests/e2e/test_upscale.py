"""/upscale and "Upscale image" end to end: the real bot against both emulators."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
import statistics
from pathlib import Path

import pytest

from tests.emulators.discord import ATTACH_FILES, BOT_PERMISSIONS, find_button
from tests.harness import Harness, running_bot
from tests.imagecorpus import case
from tests.support.images import decode, noise_png, png
from tests.support.timings import SHORT_TIMINGS

MiB = 1024 * 1024
PROGRESS_INTERVAL = 0.5  # seconds between progress edits in the throttle test


def api_calls(h: Harness) -> int:
    return sum(h.onemin.calls.values())


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
async def test_upscale_delivers_a_4x_image_in_each_format(tmp_path: Path, fmt: str) -> None:
    """The deferred reply is edited with a file of the chosen format at 4x the input size."""
    async with running_bot(tmp_path) as h:
        it, final = await h.upscale(png((80, 60)), fmt=fmt)
        assert it.ack_type == 5
        _, data = it.file(final)
        image = decode(data)
        assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
        assert image.size == (320, 240)
        assert await h.balance(h.discord.alice.user.id) == (1, 0)


async def test_result_embed_shows_sizes_format_time_and_credits(tmp_path: Path) -> None:
    """The delivered embed names original -> new size, format, file size, time, credits left."""
    async with running_bot(tmp_path) as h:
        _, final = await h.upscale(png((80, 60)))
        fields = {f["name"]: f["value"] for f in final["embeds"][0]["fields"]}
        assert fields["Size"] == "80×60 → 320×240"
        assert fields["Format"] == "PNG"
        assert fields["Credits left"] == "9"
        assert {"File size", "Time"} <= fields.keys()


async def test_input_over_the_pixel_limit_is_fitted_and_the_user_told(tmp_path: Path) -> None:
    """A 2000x1500 input is scaled to fit ~1 MP, upscaled 4x from there, with a notice."""
    async with running_bot(tmp_path) as h:
        it, final = await h.upscale(png((2000, 1500)))
        image = decode(it.file(final)[1])
        fitted = h.onemin.assets[0]
        w, h_ = decode(fitted.data).size
        assert w * h_ <= 1_048_576
        assert image.size == (w * 4, h_ * 4)
        assert "Scaled down" in final["embeds"][0]["description"]


async def test_context_menu_upscales_the_messages_attachment(tmp_path: Path) -> None:
    """ "Upscale image" on a message with an image attachment delivers that image at 4x."""
    async with running_bot(tmp_path) as h:
        attachment = h.discord.attachment(png((50, 40)), "photo.png", "image/png")
        message = h.discord.user_message(attachments=[attachment])
        it = await h.discord.message_command("Upscale image", message)
        final = await it.final()
        assert decode(it.file(final)[1]).size == (200, 160)


async def test_context_menu_upscales_an_embedded_image(tmp_path: Path) -> None:
    """A message with only an image embed (Discord-hosted) is upscaled from the embed."""
    async with running_bot(tmp_path) as h:
        hosted = h.discord.attachment(png((40, 40)), "embedded.png")
        media = {"url": hosted["url"], "proxy_url": hosted["url"], "width": 40, "height": 40}
        embed = {"type": "image", "url": hosted["url"], "image": media}
        message = h.discord.user_message(embeds=[embed])
        it = await h.discord.message_command("Upscale image", message)
        final = await it.final()
        assert decode(it.file(final)[1]).size == (160, 160)


async def test_context_menu_on_a_message_without_image_explains(tmp_path: Path) -> None:
    """A message with no image gets a plain refusal and costs nothing."""
    async with running_bot(tmp_path) as h:
        message = h.discord.user_message(content="just words")
        it = await h.discord.message_command("Upscale image", message)
        final = await it.final()
        assert "no image" in final["content"]
        assert api_calls(h) == 0


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("text_as_png", "not an image"),
        ("side_31", "32"),
        ("bomb_png_30000", "too large to process"),
        ("wide_3_to_1", "2.5"),
        ("truncated_png", "damaged"),
    ],
)
async def test_bad_input_is_refused_clearly_at_no_cost(
    tmp_path: Path, name: str, words: str
) -> None:
    """Each refused input gets a clear message, no 1min.ai call and no credit spent."""
    sample = case(name)
    async with running_bot(tmp_path) as h:
        _, final = await h.upscale(sample.data, sample.filename)
        assert words.lower() in final["content"].lower(), final["content"]
        assert api_calls(h) == 0
        assert await h.balance(h.discord.alice.user.id) == (0, 0)


async def test_file_over_50_mb_is_refused_before_download(tmp_path: Path) -> None:
    """An attachment declaring more than 50 MB is refused without fetching it."""
    async with running_bot(tmp_path) as h:
        attachment = h.discord.attachment(b"x", "huge.png")
        attachment["size"] = 60_000_000
        it = await h.discord.slash("upscale", {"image": attachment})
        final = await it.final()
        assert "too large" in final["content"]
        assert not [c for c in h.discord.calls if c.path.startswith("/cdn/")]
        assert api_calls(h) == 0


async def test_member_job_cap_refuses_extra_jobs_without_reserving(tmp_path: Path) -> None:
    """Beyond MAX_JOBS_PER_USER the member is told to wait; nothing is reserved for it."""
    async with running_bot(tmp_path, max_jobs_per_user=1) as h:
        upscale = h.onemin.hold("upscale")
        first = await h.discord.slash("upscale", {"image": h.discord.attachment(png(), "a.png")})
        await first.wait(lambda it: bool(it.original and it.original["content"]))
        _, final = await h.upscale(png(), "b.png")
        assert "already have 1 upscale" in final["content"]
        assert await h.balance(h.discord.alice.user.id, settled=False) == (1, 1)
        upscale.release()
        await first.final()
        assert h.onemin.upscales == 1


async def test_member_at_their_limit_is_told_when_it_resets(tmp_path: Path) -> None:
    """With a limit of 1 the second upscale is refused with a reset time, nothing spent."""
    async with running_bot(tmp_path, default_user_limit=1) as h:
        await h.upscale(png())
        _, final = await h.upscale(png())
        assert "reached your limit" in final["content"]
        assert re.search(r"<t:\d+:R>", final["content"])
        assert h.onemin.upscales == 1


FAULTS = [
    ("upscale", "unauthorized", {}, "API key"),
    ("upscale", "out_of_credits", {}, "out of credits"),
    # Rate limited for longer than ONEMIN_BUSY_TIMEOUT (default 30 min): busy, at once.
    ("upscale", "rate_limited", {"retry_after": "7200", "times": 5}, "busy"),
    ("upscale", "rejected", {}, "could not process"),
    ("upscale", "server_error", {"status": 500}, "down"),
    ("upscale", "html_error", {"status": 502}, "down"),
    ("upscale", "drop", {}, "down"),
    ("upscale", "malformed_json", {}, "unusable"),
    ("upscale", "failure_status", {}, "unusable"),
    ("upscale", "empty_url", {}, "unusable"),
    ("upload", "server_error", {"status": 503, "times": 5}, "down"),
    ("download", "expired", {}, "unusable"),
    ("download", "truncated", {"times": 5}, "down"),
    ("upscale", "temporary_url", {"url": "http://169.254.169.254/latest/meta-data"}, "unusable"),
]


@pytest.mark.parametrize(("route", "fault", "options", "words"), FAULTS)
async def test_service_fault_is_explained_refunded_and_next_job_works(
    tmp_path: Path, route: str, fault: str, options: dict[str, object], words: str
) -> None:
    """Each 1min.ai fault: a plain message, the credit refunded, the next upscale works.

    (A refused key or an empty account opens the circuit breaker: the job waits, and is
    refunded with the same words once the outage lasts ``circuit_give_up``, here at once.)
    """
    async with running_bot(tmp_path, circuit_probe_interval=0.2, circuit_give_up=0.0) as h:
        options = dict(options)
        times = options.pop("times", 1)
        assert isinstance(times, int)
        h.onemin.fail(route, fault, times=times, **options)
        _, final = await h.upscale(png())
        text = final["content"]
        assert words.lower() in text.lower(), text
        assert "refunded" in text
        assert "http" not in text and "Traceback" not in text
        alice = h.discord.alice.user.id
        assert await h.balance(alice) == (0, 0)
        h.onemin.clear_faults()
        async with asyncio.timeout(10):  # the circuit (if it opened) closes after a probe
            while (await h.services.circuit.state()).open:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        it, final = await h.upscale(png())
        assert it.file(final)
        assert await h.balance(alice) == (1, 0)


@pytest.mark.parametrize("retry_after", [1, None])
async def test_rate_limited_job_waits_and_is_delivered_not_refunded(
    tmp_path: Path, retry_after: int | None
) -> None:
    """A 429 (with or without Retry-After) sends the job back to wait; it is then delivered."""
    # Without Retry-After the job waits 0.25-0.5 s, then 0.5-1 s (1-2 s, then 2-4 s for
    # members): long enough that the "waiting" line is shown (the first edit comes 0.2 s in).
    timings = dataclasses.replace(SHORT_TIMINGS, rate_backoff_base=0.5)
    async with running_bot(tmp_path, timings=timings) as h:
        options = {} if retry_after is None else {"retry_after": retry_after}
        h.onemin.fail("upscale", "rate_limited", times=2, **options)
        it, final = await h.upscale(png(), timeout=30)
        assert it.file(final)
        assert await h.balance(h.discord.alice.user.id) == (1, 0)
        assert any("Waiting for the upscaling service" in e["content"] for e in it.edits)


async def test_out_of_credits_warns_the_owner_in_the_log(tmp_path: Path) -> None:
    """1min.ai running out of credits is logged as a warning for the owner."""
    async with running_bot(tmp_path, circuit_probe_interval=0.2) as h:
        h.onemin.fail("upscale", "out_of_credits")
        await h.upscale(png())
        assert any("out of credits" in line and "WARNING" in line for line in h.logs.lines)


async def test_upscale_that_takes_too_long_is_stopped_and_refunded(tmp_path: Path) -> None:
    """A 1min.ai call that never finishes times out: plain message and refund."""
    async with running_bot(tmp_path, upscale_timeout=1.0) as h:
        h.onemin.fail("upscale", "hang")
        _, final = await h.upscale(png())
        assert "took too long" in final["content"]
        assert await h.balance(h.discord.alice.user.id) == (0, 0)


async def test_large_result_is_fitted_under_the_upload_limit_with_a_link(tmp_path: Path) -> None:
    """A result over the 10 MiB limit is re-encoded to fit, said so, full-size link added."""
    async with running_bot(tmp_path) as h:
        it, final = await h.upscale(noise_png((1024, 768), seed=7), timeout=60)
        _, data = it.file(final)
        assert len(data) <= 10 * MiB
        assert decode(data).size[0] >= 2048
        assert "upload limit" in final["embeds"][0]["description"]
        link = find_button(final, lambda c: c.get("style") == 5)
        assert link["url"].startswith(h.onemin.base_url)
        assert h.onemin.results  # the original exists, bigger than the limit
        assert max(len(r) for r in h.onemin.results.values()) > 10 * MiB


async def test_job_outliving_the_token_is_posted_in_the_channel(tmp_path: Path) -> None:
    """When the interaction token is (nearly) expired, the result is a channel message
    that mentions the requester."""
    async with running_bot(tmp_path) as h:
        alice = h.discord.alice.user.id
        it = await h.discord.slash(
            "upscale", {"image": h.discord.attachment(png(), "a.png")}, age=14 * 60 + 45
        )
        await it.acked()
        await h.discord.wait_until(
            lambda: any(m.get("attachments") for m in h.discord.channel_messages())
        )
        posted = next(m for m in h.discord.channel_messages() if m.get("attachments"))
        assert f"<@{alice}>" in posted["content"]
        assert decode(posted["_files"][0][1]).size == (256, 192)
        await h.idle()
        assert await h.balance(alice) == (1, 0)


async def test_missing_attach_files_is_explained_and_costs_nothing(tmp_path: Path) -> None:
    """Without Attach Files in the channel the bot says so and spends nothing."""
    async with running_bot(tmp_path) as h:
        h.discord.channel.bot_permissions = BOT_PERMISSIONS & ~ATTACH_FILES
        _, final = await h.upscale(png())
        assert "Attach Files" in final["content"]
        assert api_calls(h) == 0


async def test_dm_is_refused(tmp_path: Path) -> None:
    """/upscale in a DM gets a plain refusal."""
    async with running_bot(tmp_path) as h:
        attachment = h.discord.attachment(png(), "a.png")
        it = await h.discord.slash("upscale", {"image": attachment}, channel=h.discord.dm_channel)
        final = await it.final()
        assert "server" in final["content"]
        assert api_calls(h) == 0


async def test_waiting_job_shows_its_place_in_line(tmp_path: Path) -> None:
    """With one job running, the next member's reply says they are queued with a position."""
    async with running_bot(tmp_path, max_concurrent_jobs=1) as h:
        upscale = h.onemin.hold("upscale")  # the first job upscales until released
        first = await h.discord.slash("upscale", {"image": h.discord.attachment(png(), "a.png")})
        await first.wait(lambda it: "Upscaling" in ((it.original or {}).get("content") or ""))
        second = await h.discord.slash(
            "upscale", {"image": h.discord.attachment(png(), "b.png")}, member=h.discord.bob
        )
        await second.wait(lambda it: "in line" in ((it.original or {}).get("content") or ""))
        assert second.original is not None and "#1 in line" in second.original["content"]
        upscale.release()
        await first.final()
        await second.final()


# A place in line alone is shown at most every 20 s x the place (so once while a member
# waits in the tests below); stages keep the short clocks' 0.5 s.
FAR_BACK_TIMINGS = dataclasses.replace(
    SHORT_TIMINGS, place_interval_per_place=20.0, place_interval_max=60.0
)


async def far_back_in_line(tmp_path: Path, *, ahead: int = 4) -> list[str]:
    """Every version of the reply of a member queued behind ``ahead`` others (one job
    at a time, 1min.ai taking 1 s each: the member is #3 in line, then #2, then #1)."""
    async with running_bot(tmp_path, max_concurrent_jobs=1, timings=FAR_BACK_TIMINGS) as h:
        h.onemin.upscale_delay = 1.0
        members = [h.discord.add_member(f"q{i}") for i in range(ahead)]
        for member in members:
            await h.discord.slash(
                "upscale", {"image": h.discord.attachment(png(), "a.png")}, member=member
            )
        last = await h.discord.slash(
            "upscale", {"image": h.discord.attachment(png(), "b.png")}, member=h.discord.bob
        )
        final = await last.final(timeout=60)
        assert final.get("attachments")
        return [str(edit.get("content") or "") for edit in last.edits]


async def test_a_member_far_back_in_line_sees_their_place_less_often(tmp_path: Path) -> None:
    """Far back in line, the reply shows the member's place soon after the command, then
    not every change of it: one place while the jobs ahead start (1 s apart; with an edit
    every 0.5 s it would show three)."""
    shown = await far_back_in_line(tmp_path)
    queued = re.compile(r"Queued: you're (#\d+|next) in line")
    places = {m[1] for text in shown if (m := queued.search(text))}
    assert len(places) == 1


async def test_a_member_far_back_in_line_still_sees_the_stage_change_at_once(
    tmp_path: Path,
) -> None:
    """However long the wait for the next place, the job's own stages (waiting for a
    slot, uploading, upscaling) are shown at the usual interval, before the result."""
    shown = await far_back_in_line(tmp_path)
    stages = ("Waiting for the upscaling service", "Uploading", "Upscaling")
    assert any(stage in text for text in shown[:-1] for stage in stages)


async def test_gif_is_converted_and_the_user_told(tmp_path: Path) -> None:
    """An animated GIF is upscaled from its first frame, with a note saying so."""
    sample = case("animated_gif")
    async with running_bot(tmp_path) as h:
        it, final = await h.upscale(sample.data, sample.filename)
        assert "first frame" in final["embeds"][0]["description"]
        assert decode(it.file(final)[1]).format == "PNG"


async def test_requester_can_delete_the_result(tmp_path: Path) -> None:
    """The delete button removes the result for its requester."""
    async with running_bot(tmp_path) as h:
        _, final = await h.upscale(png())
        button = find_button(final, lambda c: c.get("custom_id", "").startswith("upscale:delete"))
        click = await h.discord.click(final, button["custom_id"])
        await h.discord.wait_until(lambda: int(final["id"]) not in h.discord.channel.messages)
        assert click.ack_type is not None


async def test_others_cannot_delete_the_result(tmp_path: Path) -> None:
    """Another member pressing delete is refused and the result stays."""
    async with running_bot(tmp_path) as h:
        _, final = await h.upscale(png())
        button = find_button(final, lambda c: c.get("custom_id", "").startswith("upscale:delete"))
        click = await h.discord.click(final, button["custom_id"], member=h.discord.bob)
        await click.final()
        assert click.original is not None and "Only the member" in click.original["content"]
        assert int(final["id"]) in h.discord.channel.messages


async def test_moderator_can_delete_any_result(tmp_path: Path) -> None:
    """A moderator (Manage Server) may delete someone else's result."""
    async with running_bot(tmp_path) as h:
        _, final = await h.upscale(png())
        button = find_button(final, lambda c: c.get("custom_id", "").startswith("upscale:delete"))
        await h.discord.click(final, button["custom_id"], member=h.discord.moderator)
        await h.discord.wait_until(lambda: int(final["id"]) not in h.discord.channel.messages)


async def test_burst_of_50_is_acked_in_time_and_every_job_ends(tmp_path: Path) -> None:
    """50 members at once: every ack within 3 s; every job delivered or refused with reason."""
    async with running_bot(tmp_path) as h:
        members = [h.discord.add_member(f"m{i}") for i in range(50)]
        image = png((48, 48))
        its = await asyncio.gather(
            *(
                h.discord.slash(
                    "upscale", {"image": h.discord.attachment(image, "a.png")}, member=m
                )
                for m in members
            )
        )
        finals = await asyncio.gather(*(it.final(timeout=60) for it in its))
        latencies = [it.ack_latency for it in its if it.ack_latency is not None]
        assert len(latencies) == len(its) and max(latencies) < 3.0
        delivered = sum(bool(f.get("attachments")) for f in finals)
        assert delivered == 50, [f["content"] for f in finals if not f.get("attachments")]
        print(
            f"burst of 50: ack p50 {statistics.median(latencies) * 1000:.0f} ms,"
            f" max {max(latencies) * 1000:.0f} ms"
        )


async def test_delete_button_works_on_a_message_from_before_a_restart(tmp_path: Path) -> None:
    """The delete button needs no memory of the job: on a freshly started bot, pressing it
    on an older result (here: a message the bot never saw) still deletes it."""
    async with running_bot(tmp_path) as h:
        alice = h.discord.alice.user.id
        old = h.discord.user_message(h.discord.me, content="an older result")
        old["components"] = [
            {
                "type": 1,
                "components": [
                    {
                        "type": 2,
                        "style": 2,
                        "label": "Delete",
                        "custom_id": f"upscale:delete:{alice}",
                    }
                ],
            }
        ]
        await h.discord.click(old, f"upscale:delete:{alice}")
        await h.discord.wait_until(lambda: int(old["id"]) not in h.discord.channel.messages)


async def test_progress_edits_are_at_least_the_progress_interval_apart(tmp_path: Path) -> None:
    """While a job waits and runs, progress edits of the reply are throttled: never closer
    than the progress interval (2 s for members; a shorter one here, same throttle)."""
    timings = dataclasses.replace(SHORT_TIMINGS, progress_interval=PROGRESS_INTERVAL)
    async with running_bot(tmp_path, max_concurrent_jobs=1, timings=timings) as h:
        # bob's job waits ~0.9 s, then runs ~0.9 s: several progress states to show, each
        # stage longer than the interval
        h.onemin.upscale_delay = 1.8 * PROGRESS_INTERVAL
        await h.discord.slash("upscale", {"image": h.discord.attachment(png(), "a.png")})
        it = await h.discord.slash(
            "upscale", {"image": h.discord.attachment(png(), "b.png")}, member=h.discord.bob
        )
        await it.final(timeout=30)
        token = it.token
        progress = [
            c.at for c in h.discord.calls if c.method == "PATCH" and token in c.path and not c.files
        ]
        assert len(progress) >= 2
        gaps = [b - a for a, b in itertools.pairwise(progress)]
        assert min(gaps) >= 0.95 * PROGRESS_INTERVAL
        await h.idle()
