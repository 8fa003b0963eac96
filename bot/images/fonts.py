"""Fonts for the images the bot draws (the Compare image's labels, the ``/usage`` chart).

:func:`label_font` finds a font for a one-line label: Pillow's built-in font
(``ImageFont.load_default(size=...)``, which covers Latin scripts only), else the first
system font that covers every character (each glyph is compared with the font's "missing
glyph" box): DejaVu Sans (Greek, Cyrillic, ...), then CJK fonts found by ``fc-match`` or
at common Noto/Droid/WenQuanYi/macOS/Windows paths, or the file named by the environment
variable ``COMPARE_LABEL_FONT``. When no font covers the label, a fallback text (English)
is drawn instead, never tofu boxes. The text shrinks to fit, then is cut with an ellipsis.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from typing import TypeAlias

from PIL import Image, ImageDraw, ImageFont

Font: TypeAlias = ImageFont.FreeTypeFont | ImageFont.ImageFont

MIN_FONT_SIZE = 10  # px: a label shrinks down to this before it is cut

# System fonts tried, in order, for labels the built-in font cannot draw; the variable
# names one more, tried first (its name is from when only the Compare image drew labels).
FONT_ENV = "COMPARE_LABEL_FONT"
FONT_PATHS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJKjp-Regular.otf",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/System/Library/Fonts/Hiragino Sans GB.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:\\Windows\\Fonts\\msgothic.ttc",
    "C:\\Windows\\Fonts\\YuGothM.ttc",
    "C:\\Windows\\Fonts\\msyh.ttc",
)
FC_MATCH_PATTERNS = (":lang=ja", ":lang=zh-cn", ":lang=ko")
FC_MATCH_TIMEOUT = 2.0  # s
_MISSING_PROBE = "\uffff"  # a noncharacter: every font draws its "missing glyph" for it


def label_font(label: str, fallback: str, size: int, max_width: int) -> tuple[Font, str]:
    """The font and text to draw: the label in a font that covers it, else the fallback.

    The text shrinks down to ``MIN_FONT_SIZE`` and is then cut with an ellipsis to fit.
    """
    label = " ".join(label.split())  # no newlines or tabs in a one-line band
    chosen = None
    for text in (label, fallback):
        if not text:
            continue
        for font in candidate_fonts(size):
            if covers(font, text):
                chosen = (text, font)
                break
        if chosen:
            break
    if chosen is None:  # cannot happen with Pillow's built-in font and an English label
        return ImageFont.load_default(), ""
    text, font = chosen
    current = size
    while text_width(font, text) > max_width and current > MIN_FONT_SIZE:
        current -= 1
        font = _sized(font, current)
    if text_width(font, text) > max_width:
        ellipsis = "…" if covers(font, "…") else "..."
        while text and text_width(font, text + ellipsis) > max_width:
            text = text[:-1]
        text = text.rstrip() + ellipsis if text else ""
    return font, text


def text_width(font: Font, text: str) -> float:
    """The width ``text`` takes in ``font``, in px."""
    left, _, right, _ = font.getbbox(text)
    return float(right - left)


def _sized(font: Font, size: int) -> Font:
    if isinstance(font, ImageFont.FreeTypeFont):
        return font.font_variant(size=size)
    return font


def candidate_fonts(size: int) -> list[Font]:
    """Pillow's built-in font, then the system fonts that load, at ``size``."""
    fonts: list[Font] = [default_font(size)]
    for path in system_font_paths():
        font = _load_font(path, size)
        if font is not None:
            fonts.append(font)
    return fonts


@functools.cache
def default_font(size: int) -> Font:
    """Pillow's built-in font at ``size`` (Latin scripts only)."""
    return ImageFont.load_default(size=size)


@functools.cache
def _load_font(path: str, size: int) -> ImageFont.FreeTypeFont | None:
    try:
        return ImageFont.truetype(path, size)
    except OSError:
        return None


@functools.cache
def system_font_paths() -> tuple[str, ...]:
    """Existing font files worth trying, in order (looked up once per process)."""
    paths: list[str] = []
    override = os.environ.get(FONT_ENV)
    if override:
        paths.append(override)
    paths.extend(FONT_PATHS)
    fc_match = shutil.which("fc-match")
    if fc_match:
        for pattern in FC_MATCH_PATTERNS:
            try:
                found = subprocess.run(
                    [fc_match, "-f", "%{file}", pattern],
                    capture_output=True,
                    text=True,
                    timeout=FC_MATCH_TIMEOUT,
                    check=False,
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                continue
            if found:
                paths.append(found)
    unique: list[str] = []
    for path in paths:
        if path not in unique and os.path.isfile(path):
            unique.append(path)
    return tuple(unique)


def covers(font: Font, text: str) -> bool:
    """Whether ``font`` has a real glyph for every visible character of ``text``.

    A FreeType font draws its "missing glyph" (a box, or nothing) for characters it lacks,
    so each character's rendering is compared with the rendering of a noncharacter. A
    bitmap font (Pillow built without FreeType) is trusted with printable Latin-1 only.
    """
    if not isinstance(font, ImageFont.FreeTypeFont):
        return all(c.isprintable() and ord(c) < 256 for c in text)
    missing = _glyph(font, _MISSING_PROBE)
    for char in set(text):
        if char.isspace():
            continue
        if not char.isprintable():
            return False
        glyph = _glyph(font, char)
        if glyph == missing or glyph[1] is None:
            return False
    return True


@functools.lru_cache(maxsize=4096)
def _glyph(font: ImageFont.FreeTypeFont, char: str) -> tuple[tuple[int, int, int], bytes | None]:
    """A character's advance and ink box, and its ink (None when it draws nothing)."""
    left, top, right, bottom = (int(v) for v in font.getbbox(char))
    width, height = max(1, right - left), max(1, bottom - top)
    image = Image.new("L", (width, height))
    ImageDraw.Draw(image).text((-left, -top), char, font=font, fill=255)
    ink = image.tobytes() if image.getbbox() else None
    return (round(font.getlength(char)), width, height), ink
