"""Recognising what a file is from its first bytes (never from its name)."""

from __future__ import annotations

HEAD_BYTES = 64  # enough of a file's start to recognise every format we sniff

# Formats we decode (Pillow format ids) and formats the upscaler takes as they are.
DECODABLE_FORMATS = frozenset({"PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"})
UPLOAD_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BMFF_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1"})
_BMFF_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_BMP_DIB_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})


def sniff(head: bytes) -> str | None:
    """Recognise an image format from a file's first bytes (never from its name).

    Returns a Pillow-style format id ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "AVIF",
    "HEIF", "ICO", "JPEG2000", "JXL", "PSD") or None when the bytes are not an image we
    know. Only some of these can be prepared (:data:`DECODABLE_FORMATS`).
    """
    head = bytes(head[:HEAD_BYTES])
    if head.startswith(PNG_SIGNATURE):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and len(head) >= 18:
        if int.from_bytes(head[14:18], "little") in _BMP_DIB_HEADER_SIZES:
            return "BMP"
        return None
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        box_end = min(int.from_bytes(head[:4], "big"), len(head))
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, box_end - 3, 4)}
        if brands & _BMFF_AVIF_BRANDS:
            return "AVIF"
        if brands & _BMFF_HEIF_BRANDS:
            return "HEIF"
        return None
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xffO\xffQ")):
        return "JPEG2000"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "JXL"
    if head.startswith(b"8BPS"):
        return "PSD"
    if head.startswith(b"\x00\x00\x01\x00") and len(head) >= 6 and head[4:6] != b"\x00\x00":
        return "ICO"
    return None


def looks_like(head: bytes) -> str | None:
    """What a common non-image is (``pdf``, ``svg``, ``html``, ``xml``, ``zip``, ``text``).

    The answer names a catalogue key ``image.looks.<answer>``, for the refusal message.
    """
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"%pdf"):
        return "pdf"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "svg"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "html"
    if text.startswith(b"<?xml"):
        return "xml"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if decoded and all(c.isprintable() or c in "\t\r\n" for c in decoded):
        return "text"
    return None


def webp_canvas(head: bytes) -> tuple[int, int] | None:
    """The canvas size a WebP header declares (VP8X, VP8L or VP8), if it is readable."""
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        return (
            int.from_bytes(head[26:28], "little") & 0x3FFF,
            int.from_bytes(head[28:30], "little") & 0x3FFF,
        )
    return None
