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

``from bot import images`` gives all of the public names below.
"""

from __future__ import annotations

from bot.images.decode import RESULT_BOMB_PIXELS, ImageSource, describe_image
from bot.images.fit import fit_to_limit
from bot.images.model import (
    BYTES_PER_MB,
    BYTES_PER_MIB,
    CONTENT_TYPES,
    EXTENSIONS,
    FittedImage,
    ImageLimits,
    ImageRejected,
    Note,
    PreparedImage,
    Rejection,
    human_bytes,
)
from bot.images.prepare import MAX_STEM_CHARS, clean_filename, clean_stem, prepare_input
from bot.images.probe import PROBE_SIDE, probe_png
from bot.images.sniff import DECODABLE_FORMATS, HEAD_BYTES, UPLOAD_FORMATS, sniff

__all__ = [
    "BYTES_PER_MB",
    "BYTES_PER_MIB",
    "CONTENT_TYPES",
    "DECODABLE_FORMATS",
    "EXTENSIONS",
    "HEAD_BYTES",
    "MAX_STEM_CHARS",
    "PROBE_SIDE",
    "RESULT_BOMB_PIXELS",
    "UPLOAD_FORMATS",
    "FittedImage",
    "ImageLimits",
    "ImageRejected",
    "ImageSource",
    "Note",
    "PreparedImage",
    "Rejection",
    "clean_filename",
    "clean_stem",
    "describe_image",
    "fit_to_limit",
    "human_bytes",
    "prepare_input",
    "probe_png",
    "sniff",
]
