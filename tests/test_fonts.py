"""Tests for bot.images.fonts: labels drawn in a font that covers them, or their fallback."""

from __future__ import annotations

import pytest

from bot.images import fonts


def test_the_built_in_font_reports_its_missing_glyphs() -> None:
    """Pillow's built-in font covers "Before" but not "前" (its missing-glyph box is seen)."""
    font = fonts.default_font(20)
    assert fonts.covers(font, "Before")
    assert not fonts.covers(font, "前")


def test_a_label_no_font_covers_falls_back_to_english() -> None:
    """With only the built-in font available, a Japanese label is drawn as "Before"."""
    fonts.system_font_paths.cache_clear()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(fonts, "FONT_PATHS", ())
            patch.setattr(fonts, "FC_MATCH_PATTERNS", ())
            patch.delenv(fonts.FONT_ENV, raising=False)
            font, text = fonts.label_font("前", "Before", 20, 300)
    finally:
        fonts.system_font_paths.cache_clear()
    assert text == "Before"
    assert font is fonts.default_font(20)


def test_a_label_is_drawn_in_a_system_font_that_covers_it() -> None:
    """A label the built-in font lacks is drawn with a covering system font when present."""
    candidates = fonts.candidate_fonts(20)
    if not any(fonts.covers(font, "Après") for font in candidates):
        pytest.skip("no installed font covers é")
    font, text = fonts.label_font("Après", "After", 20, 300)
    assert text == "Après"
    assert fonts.covers(font, text)


def test_a_long_label_is_shortened_to_fit_its_half() -> None:
    """A label wider than its half shrinks and ends with an ellipsis."""
    font, text = fonts.label_font("Before " * 20, "Before", 20, 150)
    assert text.endswith(("…", "..."))
    left, _, right, _ = font.getbbox(text)
    assert right - left <= 150
