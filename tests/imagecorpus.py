"""A generated corpus of hostile and odd images, with what the bot should do with each.

Importable by tests and benchmarks::

    from tests.imagecorpus import all_cases, case, seeds
    for c in all_cases():            # Case(name, data, expect, filename)
        ...                          # c.expect.kind is the ImageRejected.kind, or None

Everything is built in memory from Pillow and hand-written chunks, so no fixture files are
needed; each case is built once per process and cached. The few expensive ones (a 50 MB
file, a 30000x30000 decompression bomb, a 4000x3000 photo) are marked ``big`` and can be
left out with ``all_cases(big=False)``. Expectations assume the default
:class:`bot.images.ImageLimits`.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from PIL import Image

SEED = 20260801  # fixed, so every run builds the same bytes


@dataclass(frozen=True)
class Expectation:
    """What prepare_input should do: refuse with ``kind``, or accept as described."""

    kind: str | None = None  # ImageRejected.kind when refused; None when accepted
    format: str | None = None  # uploaded format ("png", "jpeg", "webp") when accepted
    size: tuple[int, int] | None = None  # uploaded size when accepted
    note: str | None = None  # a fragment one of the notes must contain
    passthrough: bool = False  # the original bytes are uploaded unchanged

    @property
    def refused(self) -> bool:
        return self.kind is not None


class Case(NamedTuple):
    name: str
    data: bytes
    expect: Expectation
    filename: str = "image.png"


def refused(kind: str) -> Expectation:
    return Expectation(kind=kind)


def accepted(
    fmt: str, size: tuple[int, int], note: str | None = None, *, passthrough: bool = False
) -> Expectation:
    return Expectation(format=fmt, size=size, note=note, passthrough=passthrough)


# --------------------------------------------------------------------------- builders


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    """Encode a Pillow image into bytes."""
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = SEED) -> Image.Image:
    """Random pixels (incompressible; makes truncation land in the middle of real data)."""
    bands = len(Image.new(mode, (1, 1)).getbands())
    data = random.Random(seed).randbytes(size[0] * size[1] * bands)
    return Image.frombytes(mode, size, data)


def picture(size: tuple[int, int]) -> Image.Image:
    """A smooth photo-like RGB image (gradients and soft noise), cheap at any size."""
    small = noise((max(2, size[0] // 64), max(2, size[1] // 64)))
    return small.resize(size, Image.Resampling.BICUBIC)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with a correct CRC."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_ihdr(width: int, height: int, bit_depth: int = 8, color_type: int = 2) -> bytes:
    return png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = png_chunk(b"IEND", b"")


def zero_rows_idat(row_bytes: int, rows: int, rows_per_step: int = 2048) -> bytes:
    """An IDAT chunk holding ``rows`` all-zero scanlines, compressed in a stream."""
    compressor = zlib.compressobj(9)
    step = b"\x00" * ((row_bytes + 1) * min(rows, rows_per_step))  # +1: the filter byte
    parts = []
    remaining = rows
    while remaining > 0:
        count = min(remaining, rows_per_step)
        parts.append(compressor.compress(step[: (row_bytes + 1) * count]))
        remaining -= count
    parts.append(compressor.flush())
    return png_chunk(b"IDAT", b"".join(parts))


def bomb_png(side: int) -> bytes:
    """A valid 1-bit grey PNG of side x side pixels, all black: tiny file, huge image."""
    return (
        PNG_SIGNATURE
        + png_ihdr(side, side, 1, 0)
        + zero_rows_idat((side + 7) // 8, side)
        + PNG_IEND
    )


def build_png_16bit_rgb(size: tuple[int, int]) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write these, so build it by hand)."""
    width, height = size
    rows = []
    for y in range(height):
        row = bytearray(b"\x00")
        for x in range(width):
            row += struct.pack(">HHH", x * 65535 // width, y * 65535 // height, 30000)
        rows.append(bytes(row))
    idat = png_chunk(b"IDAT", zlib.compress(b"".join(rows)))
    return PNG_SIGNATURE + png_ihdr(width, height, 16, 2) + idat + PNG_IEND


def exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.html", "<script>alert('polyglot')</script>")
    return buffer.getvalue()


# Recognisable colours for pixel checks.
RED = (255, 0, 0)
BLUE = (0, 0, 255)


def exif_rotated_jpeg() -> bytes:
    """80x40 stored, orientation 6 (turn 90 degrees clockwise to show): displays 40x80.

    The stored left 20 columns are red; shown upright they become the top 20 rows.
    """
    im = Image.new("RGB", (80, 40), BLUE)
    im.paste(RED, (0, 0, 20, 40))
    return encode(im, "JPEG", quality=95, exif=exif_orientation(6))


# --------------------------------------------------------------------------- the cases

_FACTORIES: dict[str, tuple[Callable[[], Case], bool]] = {}


def _case(big: bool = False) -> Callable[[Callable[[], Case]], Callable[[], Case]]:
    def register(factory: Callable[[], Case]) -> Callable[[], Case]:
        cached = functools.cache(factory)
        _FACTORIES[factory.__name__] = (cached, big)
        return cached

    return register


@_case()
def zero_bytes() -> Case:
    return Case("zero_bytes", b"", refused("empty"))


@_case()
def truncated_png() -> Case:
    data = encode(noise((200, 150)), "PNG")
    return Case("truncated_png", data[: len(data) * 6 // 10], refused("corrupt"))


@_case()
def truncated_jpeg() -> Case:
    data = encode(noise((200, 150)), "JPEG", quality=90)
    return Case("truncated_jpeg", data[: len(data) // 2], refused("corrupt"), "photo.jpg")


@_case()
def png_signature_only() -> Case:
    return Case("png_signature_only", PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR", refused("corrupt"))


@_case()
def text_as_png() -> Case:
    return Case("text_as_png", b"just some text, not a picture\n" * 20, refused("not_image"))


@_case()
def html_as_png() -> Case:
    data = b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>"
    return Case("html_as_png", data, refused("not_image"))


@_case()
def pdf_as_png() -> Case:
    data = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    return Case("pdf_as_png", data, refused("not_image"))


@_case()
def svg_as_png() -> Case:
    data = (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="4000" '
        b'height="4000"><rect width="100%" height="100%" fill="red"/></svg>'
    )
    return Case("svg_as_png", data, refused("not_image"))


@_case()
def heic_as_jpg() -> Case:
    data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200)
    return Case("heic_as_jpg", data, refused("unsupported"), "IMG_0001.jpg")


@_case(big=True)
def bomb_png_30000() -> Case:
    return Case("bomb_png_30000", bomb_png(30_000), refused("bomb"))


@_case()
def bomb_png_9000() -> Case:
    # 81 Mpx: over our 64 Mpx cap but under Pillow's own warning level, so ours must act.
    return Case("bomb_png_9000", bomb_png(9_000), refused("bomb"))


@_case()
def bomb_gif_screen() -> Case:
    data = bytearray(encode(Image.new("P", (40, 40)), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen size
    return Case("bomb_gif_screen", bytes(data), refused("bomb"), "funny.gif")


@_case()
def bomb_jpeg_sof() -> Case:
    data = bytearray(encode(Image.new("RGB", (40, 40)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)  # height, width
    return Case("bomb_jpeg_sof", bytes(data), refused("bomb"), "photo.jpg")


@_case()
def bomb_webp_header() -> Case:
    # A lossless WebP whose header claims 16384x16384 (VP8L packs width-1, height-1).
    data = bytearray(encode(Image.new("RGB", (40, 40)), "WEBP", lossless=True))
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
    data[21:25] = (bits | 16383 | (16383 << 14)).to_bytes(4, "little")
    return Case("bomb_webp_header", bytes(data), refused("bomb"), "huge.webp")


def _frames(size: tuple[int, int], count: int = 3) -> list[Image.Image]:
    colours = [RED, (0, 255, 0), BLUE, (255, 255, 0)]
    return [Image.new("RGB", size, colours[i % len(colours)]) for i in range(count)]


@_case()
def animated_gif() -> Case:
    first, *rest = _frames((64, 48))
    data = encode(first, "GIF", save_all=True, append_images=rest, duration=100, loop=0)
    return Case("animated_gif", data, accepted("png", (64, 48), "Animated GIF"), "anim.gif")


@_case()
def animated_png() -> Case:
    first, *rest = _frames((64, 48))
    data = encode(first, "PNG", save_all=True, append_images=rest, duration=100, loop=0)
    return Case("animated_png", data, accepted("png", (64, 48), "Animated PNG"))


@_case()
def animated_webp() -> Case:
    first, *rest = _frames((64, 48))
    data = encode(first, "WEBP", save_all=True, append_images=rest, duration=100, lossless=True)
    return Case("animated_webp", data, accepted("png", (64, 48), "Animated WebP"), "anim.webp")


@_case()
def png_16bit_gray() -> Case:
    ramp = Image.linear_gradient("L").resize((64, 64)).convert("I")
    data = encode(ramp.point(lambda v: v * 257).convert("I;16"), "PNG")
    return Case("png_16bit_gray", data, accepted("png", (64, 64), "16 to 8 bits"))


@_case()
def png_16bit_rgb() -> Case:
    return Case(
        "png_16bit_rgb", build_png_16bit_rgb((48, 40)), accepted("png", (48, 40), "16 to 8 bits")
    )


@_case()
def cmyk_jpeg() -> Case:
    data = encode(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG", quality=95)
    return Case("cmyk_jpeg", data, accepted("png", (64, 48), "CMYK"), "print.jpg")


@_case()
def palette_transparency() -> Case:
    im = Image.new("P", (64, 64), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (16, 16, 48, 48))
    data = encode(im, "PNG", transparency=0)
    return Case("palette_transparency", data, accepted("png", (64, 64)))


@_case()
def gray_alpha_png() -> Case:
    data = encode(Image.new("LA", (50, 40), (128, 100)), "PNG")
    return Case("gray_alpha_png", data, accepted("png", (50, 40)))


@_case()
def one_bit_png() -> Case:
    data = encode(Image.new("1", (64, 64), 1), "PNG")
    return Case("one_bit_png", data, accepted("png", (64, 64)))


@_case()
def exif_rotated() -> Case:
    return Case("exif_rotated", exif_rotated_jpeg(), accepted("png", (40, 80)), "phone.jpg")


@_case()
def one_by_one() -> Case:
    return Case("one_by_one", encode(Image.new("RGB", (1, 1)), "PNG"), refused("too_small"))


@_case()
def thin_40000x10() -> Case:
    data = encode(Image.new("L", (40000, 10), 200), "PNG")
    return Case("thin_40000x10", data, refused("too_small"))


@_case()
def side_31() -> Case:
    return Case("side_31", encode(Image.new("RGB", (31, 100)), "PNG"), refused("too_small"))


@_case()
def exactly_32() -> Case:
    data = encode(picture((32, 32)), "PNG")
    return Case("exactly_32", data, accepted("png", (32, 32), passthrough=True))


@_case(big=True)
def over_50mb() -> Case:
    # A valid PNG padded with a 50 MB private ancillary chunk: refused on size alone.
    data = (
        PNG_SIGNATURE
        + png_ihdr(64, 64)
        + png_chunk(b"zzZz", bytes(50_000_000))
        + png_chunk(b"IDAT", zlib.compress(bytes(65 * 64 * 3)))
        + PNG_IEND
    )
    return Case("over_50mb", data, refused("too_large"))


@_case()
def corrupt_png_body() -> Case:
    garbage = random.Random(SEED).randbytes(4000)
    data = PNG_SIGNATURE + png_ihdr(64, 64) + png_chunk(b"IDAT", garbage) + PNG_IEND
    return Case("corrupt_png_body", data, refused("corrupt"))


@_case()
def polyglot_png_zip() -> Case:
    data = encode(picture((64, 48)), "PNG") + zip_archive()
    return Case("polyglot_png_zip", data, accepted("png", (64, 48)))


@_case()
def polyglot_jpeg_html() -> Case:
    data = encode(picture((64, 48)), "JPEG") + b"<html><script>alert(1)</script></html>"
    return Case("polyglot_jpeg_html", data, accepted("png", (64, 48)), "photo.jpg")


@_case()
def polyglot_html_png() -> Case:
    data = b"<html><body>hello</body></html>\n" + encode(picture((64, 48)), "PNG")
    return Case("polyglot_html_png", data, refused("not_image"))


@_case()
def bmp() -> Case:
    data = encode(picture((64, 48)), "BMP")
    return Case("bmp", data, accepted("png", (64, 48), "from BMP to PNG"), "old.bmp")


@_case()
def tiff() -> Case:
    data = encode(picture((64, 48)), "TIFF", compression="tiff_lzw")
    return Case("tiff", data, accepted("png", (64, 48), "from TIFF to PNG"), "scan.tif")


@_case()
def multipage_tiff() -> Case:
    first, *rest = _frames((64, 48))
    data = encode(first, "TIFF", save_all=True, append_images=rest)
    return Case("multipage_tiff", data, accepted("png", (64, 48), "first page"), "scan.tif")


@_case()
def gray_png() -> Case:
    data = encode(picture((64, 48)).convert("L"), "PNG")
    return Case("gray_png", data, accepted("png", (64, 48), passthrough=True))


@_case()
def gray_jpeg() -> Case:
    data = encode(picture((64, 48)).convert("L"), "JPEG")
    return Case("gray_jpeg", data, accepted("jpeg", (64, 48), passthrough=True), "gray.jpg")


@_case()
def plain_png() -> Case:
    data = encode(picture((300, 200)), "PNG")
    return Case("plain_png", data, accepted("png", (300, 200), passthrough=True))


@_case()
def plain_jpeg() -> Case:
    data = encode(picture((300, 200)), "JPEG", quality=90)
    return Case("plain_jpeg", data, accepted("jpeg", (300, 200), passthrough=True), "a.jpg")


@_case()
def plain_webp() -> Case:
    data = encode(picture((300, 200)), "WEBP", quality=90)
    return Case("plain_webp", data, accepted("webp", (300, 200), passthrough=True), "a.webp")


@_case()
def jpeg_named_png() -> Case:
    # The name lies; the content decides (a JPEG is uploaded as a JPEG).
    data = encode(picture((300, 200)), "JPEG", quality=90)
    return Case("jpeg_named_png", data, accepted("jpeg", (300, 200), passthrough=True))


@_case(big=True)
def big_jpeg_4000x3000() -> Case:
    data = encode(picture((4000, 3000)), "JPEG", quality=85)
    note = "Scaled down from 4000×3000 to 1182×886"
    return Case("big_jpeg_4000x3000", data, accepted("png", (1182, 886), note), "dslr.jpg")


@_case()
def wide_2_5_to_1() -> Case:
    data = encode(picture((1000, 400)), "PNG")
    return Case("wide_2_5_to_1", data, accepted("png", (1000, 400), passthrough=True))


@_case()
def tall_1_to_2_5() -> Case:
    data = encode(picture((400, 1000)), "PNG")
    return Case("tall_1_to_2_5", data, accepted("png", (400, 1000), passthrough=True))


@_case()
def wide_3_to_1() -> Case:
    return Case("wide_3_to_1", encode(picture((960, 320)), "PNG"), refused("aspect"))


@_case()
def wide_2_5_to_1_downscaled() -> Case:
    # Flooring 2500x1000 to 1536x614 would make it 2.502:1; the short side is rounded up.
    data = encode(picture((2500, 1000)), "PNG", compress_level=1)
    return Case("wide_2_5_to_1_downscaled", data, accepted("png", (1536, 615), "side limit"))


@_case()
def side_over_1536() -> Case:
    data = encode(picture((1600, 650)), "PNG", compress_level=1)
    return Case("side_over_1536", data, accepted("png", (1536, 624), "1536 pixel side limit"))


def all_cases(*, big: bool = True) -> list[Case]:
    """Every case (built on first use and cached); ``big=False`` skips the costly ones."""
    return [factory() for factory, is_big in _FACTORIES.values() if big or not is_big]


def case_names(*, big: bool = True) -> list[str]:
    """The names of the cases, without building them (for test parametrisation)."""
    return [name for name, (_, is_big) in _FACTORIES.items() if big or not is_big]


def case(name: str) -> Case:
    """One case by name."""
    return _FACTORIES[name][0]()


@functools.cache
def seeds() -> tuple[bytes, ...]:
    """Small valid images in every decodable format, as starting points for fuzzing."""
    im = picture((40, 36))
    return (
        encode(im, "PNG"),
        encode(im, "JPEG", quality=80),
        encode(im, "JPEG", quality=80, exif=exif_orientation(6)),
        encode(im.convert("P"), "GIF"),
        encode(im, "WEBP", quality=80),
        encode(im, "WEBP", lossless=True),
        encode(im, "BMP"),
        encode(im, "TIFF", compression="tiff_lzw"),
        animated_png().data,
    )
