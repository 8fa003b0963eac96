"""The test image both 1min.ai checks upload (bot.images.probe): one image, a valid
upscaler input that the bot itself would send unchanged."""

from __future__ import annotations

from bot.images import prepare_input, probe_png
from bot.images.probe import PROBE_SIDE


def test_the_probe_image_is_an_input_the_bot_would_send_as_it_is() -> None:
    """prepare_input takes it without a change: a PNG of PROBE_SIDE px a side, no notes."""
    prepared = prepare_input(probe_png(), "probe.png")
    assert (prepared.format, prepared.size, prepared.notes) == (
        "png",
        (PROBE_SIDE, PROBE_SIDE),
        (),
    )
    assert prepared.data == probe_png()


def test_the_probe_image_is_a_few_hundred_bytes_at_most() -> None:
    """A flat image: the upload both checks make stays tiny (a cheap call, a tiny asset)."""
    assert len(probe_png()) < 512
