"""The one test image 1min.ai is checked with.

Two checks send it, each as an asset upload (the cheapest authenticated call: uploads are
not AI features, and no credit cost is documented for them):

* ``upscale-bot check`` (:func:`bot.app.check.check_onemin`) uploads it to see that the API
  key is accepted;
* the circuit's probe (:func:`bot.app.services.probe_onemin`) uploads it to see whether 1min.ai
  accepts the bot again, and, when the account had run out of credits, also upscales it:
  only a feature call shows that credits are back.

So it must be a valid upscaler input, not merely a valid file: :data:`PROBE_SIDE` px a
side, inside the upscaler's limits (32 to 1,536 px a side and at least 1,024 pixels,
``docs/onemin-api.md`` section 5) with room to spare, plain mid-grey RGB (about 150 bytes
as a PNG), the cheapest upscale there is.
"""

from __future__ import annotations

import functools
import io

from PIL import Image

__all__ = ["PROBE_SIDE", "probe_png"]

PROBE_SIDE = 64  # px: the smallest square the upscaler takes comfortably
PROBE_GREY = (128, 128, 128)  # RGB: a flat image compresses to almost nothing


@functools.cache
def probe_png() -> bytes:
    """The probe image as PNG bytes (built once, on first use)."""
    out = io.BytesIO()
    Image.new("RGB", (PROBE_SIDE, PROBE_SIDE), PROBE_GREY).save(out, "PNG")
    return out.getvalue()
