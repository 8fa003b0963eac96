"""Hostile attachment file names, with the clean stem each must be sent and posted under.

Importable by tests and benchmarks::

    from tests.hostilenames import CORPUS
    for case in CORPUS:                  # NameCase(raw, stem)
        ...                              # uploaded as f"{case.stem}.png" for a PNG

:data:`CORPUS` is the issue's list: the names that, recorded raw, reached 1min.ai's asset
upload (or made it fail). :data:`MORE` adds the other kinds the cleaning rules name; the
unit tests run both, the end-to-end tests :data:`CORPUS` only (each name costs a job).
"""

from __future__ import annotations

from typing import NamedTuple


class NameCase(NamedTuple):
    raw: str  # the attachment's file name as Discord gives it
    stem: str  # the clean stem (bot.images.clean_stem); the extension is the format's


LONG_NAME = "holiday_" + "n" * 232 + ".png"  # 244 characters

CORPUS: tuple[NameCase, ...] = (
    NameCase("../../etc/passwd.png", "passwd"),
    NameCase("~/.bashrc.png", "bashrc"),
    NameCase(LONG_NAME, ("holiday_" + "n" * 232)[:64]),
    NameCase("night\x00shift.png", "night_shift"),
    NameCase("line\r\nbreak.png", "line_break"),
    NameCase("photo\u202egnp.exe", "photo_gnp_exe"),  # shown as "photoexe.png"
    NameCase("..\\..\\Windows\\win.ini.png", "win_ini"),
    NameCase("%2e%2e%2f%2e%2e%2fetc%2fshadow.png", "shadow"),
    NameCase("CON.png", "CON_file"),
    NameCase("....", "image"),
    NameCase("holiday", "holiday"),
    NameCase("Ünïcödé café.png", "Unicode_cafe"),
)

MORE: tuple[NameCase, ...] = (
    NameCase("/etc/passwd", "passwd"),
    NameCase("C:\\Users\\me\\Pictures\\cat.jpg", "cat"),
    NameCase("photo.png/..", "photo"),
    NameCase("..", "image"),
    NameCase(".", "image"),
    NameCase("", "image"),
    NameCase(".png", "image"),
    NameCase("~", "image"),
    NameCase("~root.png", "root"),
    NameCase("a\rb\nc.png", "a_b_c"),
    NameCase("photo.png\x00.exe", "photo_png_exe"),
    NameCase("photo.png\x00", "photo"),
    NameCase("photo.png ", "photo"),
    NameCase("photo.png.", "photo"),
    NameCase("\u202eevil\u202c.png", "evil"),
    NameCase("left\u2066to\u2069right\u200f.png", "left_to_right"),
    NameCase("zero\u200bwidth.png", "zero_width"),
    NameCase("%2E%2E%5C%2E%2E%5Cboot.ini", "boot_ini"),
    NameCase("..%2f..%2fetc%2fpasswd.png", "passwd"),
    NameCase("%252e%252e%252fx.png", "2e_2e_2fx"),  # decoded once only
    NameCase("100%.png", "100"),
    NameCase("\uff0e\uff0e\uff0fetc\uff0fpasswd.png", "passwd"),  # full-width ../
    NameCase("con", "con_file"),
    NameCase("NUL.jpg", "NUL_file"),
    NameCase("nul.tar.gz", "nul_tar_gz"),
    NameCase("COM1", "COM1_file"),
    NameCase("com1.png", "com1_file"),
    NameCase("LPT1.webp", "LPT1_file"),
    NameCase("lpt9", "lpt9_file"),
    NameCase("PRN.gif", "PRN_file"),
    NameCase("AUX", "AUX_file"),
    NameCase("COM\u00b9.png", "COM1_file"),  # superscript one
    NameCase("\uff23\uff2f\uff2e.png", "CON_file"),  # full-width CON
    NameCase("CONSOLE.png", "CONSOLE"),
    NameCase("photo", "photo"),
    NameCase("my.photo.v2", "my_photo_v2"),
    NameCase("Mr. Smith", "Mr_Smith"),
    NameCase("my holiday?.PNG", "my_holiday"),
    NameCase("-rf .png", "rf"),
    NameCase("crème brûlée.jpeg", "creme_brulee"),
    NameCase("Ελληνικά.png", "image"),
    NameCase("写真.JPG", "image"),
    NameCase("猫 cat 猫.webp", "cat"),
    NameCase("x" * 300, "x" * 64),
    NameCase("a" * 63 + "." + "b" * 10 + ".png", "a" * 63),  # the cut leaves no "_" at the end
)
