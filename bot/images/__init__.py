"""Image handling for upscales: validate and prepare inputs, fit results under an upload cap.

Everything here is synchronous, CPU-bound Pillow work; callers run it in a thread or a
worker process. Nothing here knows about Discord or HTTP, nor about any language: a
refusal (:class:`ImageRejected`) and every note about what was done to an image is a
catalogue key with named parameters (:class:`bot.i18n.Text`, keys ``image.*``,
``note.*``, ``fit.*``), rendered by the front end in the member's language.

* :mod:`bot.images.sniff`: what a file is, from its first bytes.
* :mod:`bot.images.decode`: opening untrusted data (bytes or a file) safely;
  :func:`describe_image`.
* :mod:`bot.images.prepare`: :func:`prepare_input` turns an untrusted upload into what
  the upscaler accepts, or raises :class:`ImageRejected`; :func:`clean_filename` makes a
  member's file name safe (the name stored, sent to 1min.ai and posted).
* :mod:`bot.images.fit`: :func:`fit_to_limit` makes a result fit an upload limit.
* :mod:`bot.images.model`: the limits, the refusal, the records, size formatting.
* :mod:`bot.images.probe`: :func:`probe_png`, the test image 1min.ai is checked with.

``from bot import images`` gives what the rest of the bot uses of them (``__all__``):
preparing an input, the limits and records, size formatting, the probe image; what only
the tests use (sniffing, describing and fitting an image directly, the constants) is
imported from its module. The rest of the package is imported by module:
:mod:`bot.images.workers` (the worker process that fits and checks results),
:mod:`bot.images.compare` (the Compare image), :mod:`bot.images.download` (a member's
image, over HTTP), :mod:`bot.images.chart` (the ``/usage`` chart) and
:mod:`bot.images.heap`. This package's ``__init__`` is what the image worker process
imports with them, so it stays light: Pillow work only, no HTTP client, no database.
"""

from __future__ import annotations

from bot.images.model import (
    BYTES_PER_MB,
    BYTES_PER_MIB,
    CONTENT_TYPES,
    FittedImage,
    ImageLimits,
    ImageRejected,
    Note,
    PreparedImage,
    human_bytes,
)
from bot.images.prepare import clean_filename, prepare_input
from bot.images.probe import probe_png

__all__ = [
    "BYTES_PER_MB",
    "BYTES_PER_MIB",
    "CONTENT_TYPES",
    "FittedImage",
    "ImageLimits",
    "ImageRejected",
    "Note",
    "PreparedImage",
    "clean_filename",
    "human_bytes",
    "prepare_input",
    "probe_png",
]
