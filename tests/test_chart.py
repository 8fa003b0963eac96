"""The /usage chart (bot.images.chart): a PNG of credits per day and the top members, with alt text.

Reports are built here directly (the ledger fills ``days`` from its rollups); the chart
as the /usage reply carries it is tested end to end in tests/e2e/test_usage_chart.py.
"""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta

import pytest
from PIL import Image

from bot.i18n import SUPPORTED, english, t
from bot.images import chart
from bot.images.chart import DELIVERED, HEIGHT, MAX_BARS, REFUNDED, WIDTH, chart_days, usage_chart
from bot.ledger import DayUsage, MemberUsage, Period, UsageReport

NOW = datetime(2026, 5, 20, 15, 30, tzinfo=UTC)
MAY = datetime(2026, 5, 1, tzinfo=UTC)
ALICE, BOB = 1001, 1002
# The daily plot's area: from under the caption to the date labels.
PLOT_BOX = (
    chart.MARGIN + chart.AXIS_LABEL_WIDTH,
    chart.PLOT_TOP,
    WIDTH - chart.MARGIN,
    chart.PLOT_BOTTOM,
)


def report(
    days: list[DayUsage] | None = None,
    members: list[MemberUsage] | None = None,
    period: Period = "monthly",
    since: datetime = MAY,
) -> UsageReport:
    members = members or []
    totals = MemberUsage(
        0,
        sum(m.upscales for m in members),
        sum(m.credits for m in members),
        sum(m.failures for m in members),
        sum(m.refunds for m in members),
    )
    return UsageReport(period, since, members, totals, days or [])


def used() -> UsageReport:
    return report(
        days=[DayUsage(date(2026, 5, 3), 4, 1), DayUsage(date(2026, 5, 19), 2, 0)],
        members=[MemberUsage(ALICE, 4, 4, 1, 1), MemberUsage(BOB, 2, 2, 0, 0)],
    )


def decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def colours(image: Image.Image, box: tuple[int, int, int, int]) -> set[tuple[int, ...] | float]:
    return {colour for _, colour in image.crop(box).convert("RGB").getcolors(1 << 20) or []}


def test_the_chart_is_a_png_of_the_stated_size() -> None:
    """It decodes as a PNG of WIDTH x HEIGHT."""
    image = decode(usage_chart(used(), "en-US", {}, NOW).png)
    assert (image.format, image.size) == ("PNG", (WIDTH, HEIGHT))


def test_a_period_with_use_shows_delivered_and_refunded_bars_apart() -> None:
    """The daily plot holds bars in both the delivered and the refunded colour."""
    image = decode(usage_chart(used(), "en-US", {}, NOW).png)
    assert {DELIVERED, REFUNDED} <= colours(image, PLOT_BOX)


def test_the_top_members_are_drawn_as_bars() -> None:
    """Below the daily plot, the members' bars are drawn in the delivered colour."""
    image = decode(usage_chart(used(), "en-US", {ALICE: "Alice"}, NOW).png)
    assert DELIVERED in colours(image, (0, chart.MEMBERS_TOP, WIDTH, HEIGHT))


def test_a_period_without_use_draws_an_empty_chart_that_says_so() -> None:
    """No use: the same size, no bars, words in the plot, and an alt text that says so."""
    drawn = usage_chart(report(), "en-US", {}, NOW)
    image = decode(drawn.png)
    plot = colours(image, PLOT_BOX)
    assert image.size == (WIDTH, HEIGHT)
    assert DELIVERED not in plot and REFUNDED not in plot
    assert len(plot) > 1  # the words saying it is empty
    assert drawn.description == t(
        "en-US", "usage.chart.description_empty", first="2026-05-01", last="2026-05-31"
    )


@pytest.mark.parametrize("language", SUPPORTED)
def test_labels_in_each_language_render_with_alt_text_in_that_language(language: str) -> None:
    """Every catalogue language draws (a script no font covers falls back to English) and
    writes the alt text in the moderator's language."""
    drawn = usage_chart(used(), language, {ALICE: "Zoë", BOB: "山田"}, NOW)
    assert decode(drawn.png).size == (WIDTH, HEIGHT)
    assert drawn.description == t(
        language,
        "usage.chart.description",
        first="2026-05-01",
        last="2026-05-31",
        delivered=6,
        refunded=1,
        members="Zoë 4, 山田 2",
    )


def test_the_alt_text_gives_the_totals_and_names_the_top_members() -> None:
    """Delivered and refunded credits of the period, and the members by their labels."""
    drawn = usage_chart(used(), "en-US", {ALICE: "Alice"}, NOW)
    assert drawn.description == english(
        "usage.chart.description",
        first="2026-05-01",
        last="2026-05-31",
        delivered=6,
        refunded=1,
        members=f"Alice 4, {BOB} 2",
    )


def test_a_long_name_is_shortened_and_the_alt_text_stays_within_discords_limit() -> None:
    """400-character names: each cut to MAX_NAME_CHARS, the description under 1024."""
    members = [MemberUsage(i, 1, 1, 0, 0) for i in range(10)]
    drawn = usage_chart(report(members=members), "en-US", {i: "N" * 400 for i in range(10)}, NOW)
    assert len(drawn.description) <= chart.MAX_DESCRIPTION_CHARS
    assert "N" * (chart.MAX_NAME_CHARS - 1) + "…" in drawn.description
    assert "N" * chart.MAX_NAME_CHARS not in drawn.description


def test_a_monthly_axis_spans_every_day_of_the_month() -> None:
    """Monthly: from the 1st to the last day, the days still to come included."""
    assert chart_days(report(), NOW) == (date(2026, 5, 1), date(2026, 5, 31))


def test_a_lifetime_axis_runs_from_the_first_use_to_today() -> None:
    """Lifetime: the first day with use, up to today."""
    days = [DayUsage(date(2025, 11, 2), 1, 0), DayUsage(date(2026, 1, 5), 1, 0)]
    lifetime = report(days, period="lifetime", since=datetime(1970, 1, 1, tzinfo=UTC))
    assert chart_days(lifetime, NOW) == (date(2025, 11, 2), date(2026, 5, 20))


def test_a_long_period_groups_days_into_bars_keeping_every_credit() -> None:
    """Three years of days: at most MAX_BARS bars, the credits summed, none lost."""
    first = date(2023, 5, 21)
    days = [DayUsage(first + timedelta(days=i), 2, 1) for i in range(0, 1096, 3)]
    bars = chart.day_bars(days, first, NOW.date())
    assert len(bars) <= MAX_BARS
    assert sum(b.delivered for b in bars) == sum(d.delivered for d in days)
    assert sum(b.refunded for b in bars) == sum(d.refunded for d in days)
