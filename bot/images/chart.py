"""The ``/usage`` chart: credits per day over the period, and the top members, as a PNG.

:func:`usage_chart` draws a :class:`bot.ledger.UsageReport` with Pillow alone (no
plotting library: two bar charts do not justify one) and returns the PNG with its
description (the attachment's alt text). It is CPU work: callers run it in a thread.

Layout (:data:`WIDTH` x :data:`HEIGHT` px, Discord-dark): the title; a legend; the
period's days on the x axis (daily, weekly and monthly: every day of the period, the
days still to come included, so the chart keeps its shape through the period;
lifetime: from the first day of use to today) with one bar per day, delivered credits
below and refunded credits stacked above (a long period puts several days in one bar,
at most :data:`MAX_BARS` bars); below it the top members (up to :data:`TOP_MEMBERS`) as
horizontal bars, delivered and refunded likewise. A period with no use draws the frame
and says so instead of the bars.

Words come from the catalogue in the moderator's language (``usage.chart.*``); member
names are plain labels from the caller (the cog knows display names; a member without
one is shown by id). Labels are drawn with :func:`bot.images.fonts.label_font`, the font
finder the Compare image uses too: a label no available font covers falls back to English
(for a member name: the member id). Dates are written ``YYYY-MM-DD`` in every language.
This module imports nothing from Discord.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from PIL import Image, ImageDraw

from bot.i18n import english, number, t
from bot.images.fonts import label_font, text_width
from bot.ledger import DayUsage, MemberUsage, UsageReport, period_end

__all__ = [
    "HEIGHT",
    "MAX_DESCRIPTION_CHARS",
    "NAMED_MEMBERS",
    "WIDTH",
    "UsageChart",
    "chart_days",
    "usage_chart",
]

WIDTH, HEIGHT = 960, 620  # px
MARGIN = 24  # px around everything
AXIS_LABEL_WIDTH = 64  # px left of the plot for the credit ticks
TITLE_SIZE = 24  # px font sizes
CAPTION_SIZE = 17
LABEL_SIZE = 14
PLOT_TOP, PLOT_BOTTOM = 124, 344  # px: the daily plot's area
MEMBERS_TOP = 400  # px: the members' caption
MEMBER_ROW = 22  # px per member
MEMBER_BAR = 14  # px bar thickness
NAME_WIDTH = 220  # px column for the members' names
VALUE_WIDTH = 110  # px right of the longest member bar for its figures
MAX_BARS = 92  # bars in the daily plot at most (three months of days)
MIN_BAR_GAP = 1  # px between bars
MAX_TICKS = 5  # gridlines on the credit axis, at most
MAX_DATE_LABELS = 7  # dates under the daily plot, at most
TOP_MEMBERS = 8
DESCRIBED_MEMBERS = 5  # members named in the description
NAMED_MEMBERS = max(TOP_MEMBERS, DESCRIBED_MEMBERS)  # the most credits first: all it names
MAX_NAME_CHARS = 40  # characters of a member's label (Discord's display names: 32 at most)
MAX_DESCRIPTION_CHARS = 1024  # Discord's limit for an attachment's description

BACKGROUND = (32, 34, 37)
TEXT = (235, 235, 235)
MUTED = (160, 163, 168)
GRID = (64, 68, 75)
DELIVERED = (88, 101, 242)
REFUNDED = (250, 166, 26)


@dataclass(frozen=True, slots=True)
class UsageChart:
    png: bytes
    description: str  # alt text, at most MAX_DESCRIPTION_CHARS


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar of the daily chart: the credits of the days from ``first`` on (one day, or
    a group of days in a long period)."""

    first: date
    delivered: int
    refunded: int

    @property
    def total(self) -> int:
        return self.delivered + self.refunded


def chart_days(report: UsageReport, now: datetime) -> tuple[date, date]:
    """The first and last day (inclusive) on the x axis, for a report made at ``now``."""
    today = now.date()
    end = period_end(now, report.period)
    if end is None:  # lifetime: since the first use
        first = min((d.day for d in report.days), default=today)
        return min(first, today), today
    return report.since.date(), (end - timedelta(days=1)).date()


def usage_chart(
    report: UsageReport, language: str, names: Mapping[int, str], now: datetime
) -> UsageChart:
    """The chart of ``report`` with words in ``language``; ``names`` labels members."""
    first, last = chart_days(report, now)
    members = sorted(report.members, key=lambda m: (-m.credits, m.member_id))[:TOP_MEMBERS]
    canvas = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    period = t(language, f"period.{report.period}")
    _text(
        draw,
        (MARGIN, MARGIN),
        t(language, "usage.title", period=period),
        english("usage.title", period=english(f"period.{report.period}")),
        TITLE_SIZE,
        WIDTH - 2 * MARGIN,
        TEXT,
    )
    _legend(draw, language)
    if not report.days and not report.members:
        _empty(draw, language, first, last)
    else:
        _daily(draw, language, day_bars(report.days, first, last))
        _members(draw, language, members, names)
    out = io.BytesIO()
    canvas.save(out, "PNG", optimize=False, compress_level=6)
    return UsageChart(out.getvalue(), _description(report, language, names, first, last))


# -- the daily plot ------------------------------------------------------------------------


def day_bars(days: Sequence[DayUsage], first: date, last: date) -> list[Bar]:
    """One bar per day from ``first`` to ``last``, or per group of days for long periods
    (at most ``MAX_BARS``); every credit of ``days`` in that span is in one bar."""
    span = (last - first).days + 1
    per_bar = math.ceil(span / MAX_BARS)
    count = math.ceil(span / per_bar)
    delivered = [0] * count
    refunded = [0] * count
    for day in days:
        index = (day.day - first).days // per_bar
        if 0 <= index < count:
            delivered[index] += day.delivered
            refunded[index] += day.refunded
    return [
        Bar(first + timedelta(days=i * per_bar), delivered[i], refunded[i]) for i in range(count)
    ]


def _daily(draw: ImageDraw.ImageDraw, language: str, bars: list[Bar]) -> None:
    per_bar = (bars[1].first - bars[0].first).days if len(bars) > 1 else 1
    key, params = (
        ("usage.chart.per_day", {})
        if per_bar == 1
        else ("usage.chart.per_days", {"count": per_bar})
    )
    _text(
        draw,
        (MARGIN, PLOT_TOP - 34),
        t(language, key, **params),
        english(key, **params),
        CAPTION_SIZE,
        WIDTH - 2 * MARGIN,
        TEXT,
    )
    left, right = MARGIN + AXIS_LABEL_WIDTH, WIDTH - MARGIN
    top_value, step = _scale(max((b.total for b in bars), default=0))
    height = PLOT_BOTTOM - PLOT_TOP
    for tick in range(0, top_value + 1, step):
        y = PLOT_BOTTOM - round(tick / top_value * height)
        draw.line((left, y, right, y), fill=GRID)
        label = number(language, tick)
        _text(draw, (left - 8, y), label, label, LABEL_SIZE, AXIS_LABEL_WIDTH, MUTED, "rm")
    slot = (right - left) / len(bars)
    gap = MIN_BAR_GAP if slot < 6 else slot * 0.2
    for index, bar in enumerate(bars):
        x0 = left + index * slot + gap / 2
        x1 = max(x0, left + (index + 1) * slot - gap / 2 - 1)
        base = PLOT_BOTTOM
        for amount, colour in ((bar.delivered, DELIVERED), (bar.refunded, REFUNDED)):
            if amount:
                top = base - max(1, round(amount / top_value * height))
                draw.rectangle((x0, top, x1, base - 1), fill=colour)
                base = top
    for index in _date_positions(len(bars)):
        _date(draw, left + (index + 0.5) * slot, bars[index].first)


def _date(draw: ImageDraw.ImageDraw, x: float, day: date) -> None:
    """A date centred under ``x``, moved inwards as needed to stay inside the plot."""
    label = day.isoformat()
    font, text = label_font(label, label, LABEL_SIZE, WIDTH)
    half = text_width(font, text) / 2
    x = min(max(x, MARGIN + AXIS_LABEL_WIDTH + half), WIDTH - MARGIN - half)
    draw.text((x, PLOT_BOTTOM + 6), text, font=font, fill=MUTED, anchor="ma")


def _scale(largest: int) -> tuple[int, int]:
    """The axis's top value and tick step: steps of 1, 2 or 5 x 10^n, at most MAX_TICKS."""
    largest = max(1, largest)
    magnitude = 10 ** max(0, math.floor(math.log10(largest)) - 1)
    while True:
        for factor in (1, 2, 5):
            step = factor * magnitude
            if math.ceil(largest / step) <= MAX_TICKS:
                return math.ceil(largest / step) * step, step
        magnitude *= 10


def _date_positions(count: int) -> list[int]:
    """Which bars get a date under them: the first, the last and evenly between."""
    if count <= MAX_DATE_LABELS:
        return list(range(count))
    step = (count - 1) / (MAX_DATE_LABELS - 1)
    return sorted({round(i * step) for i in range(MAX_DATE_LABELS)})


# -- the members ---------------------------------------------------------------------------


def _members(
    draw: ImageDraw.ImageDraw,
    language: str,
    members: Sequence[MemberUsage],
    names: Mapping[int, str],
) -> None:
    key = "usage.chart.members"
    _text(
        draw,
        (MARGIN, MEMBERS_TOP),
        t(language, key),
        english(key),
        CAPTION_SIZE,
        WIDTH - 2 * MARGIN,
        TEXT,
    )
    largest = max((m.credits + m.refunds for m in members), default=0) or 1
    left = MARGIN + NAME_WIDTH
    width = WIDTH - MARGIN - VALUE_WIDTH - left
    for row, member in enumerate(members):
        y = MEMBERS_TOP + 32 + row * MEMBER_ROW
        middle = y + MEMBER_BAR / 2
        name = _name(member.member_id, names)
        _text(
            draw,
            (left - 10, middle),
            name,
            str(member.member_id),
            LABEL_SIZE,
            NAME_WIDTH - 10,
            TEXT,
            "rm",
        )
        x = float(left)
        for amount, colour in ((member.credits, DELIVERED), (member.refunds, REFUNDED)):
            if amount:
                end = x + max(1.0, amount / largest * width)
                draw.rectangle((x, y, end - 1, y + MEMBER_BAR), fill=colour)
                x = end
        figures = number(language, member.credits)
        if member.refunds:
            figures += f" + {number(language, member.refunds)}"
        _text(draw, (x + 8, middle), figures, figures, LABEL_SIZE, VALUE_WIDTH, MUTED, "lm")


def _name(member_id: int, names: Mapping[int, str]) -> str:
    """The member's label, at most MAX_NAME_CHARS long; the id without one."""
    name = " ".join((names.get(member_id) or "").split())
    if len(name) > MAX_NAME_CHARS:
        name = name[: MAX_NAME_CHARS - 1] + "…"
    return name or str(member_id)


# -- frame, legend, the empty chart, alt text ------------------------------------------------


def _legend(draw: ImageDraw.ImageDraw, language: str) -> None:
    x = float(MARGIN)
    y = MARGIN + TITLE_SIZE + 18
    for key, colour in (("usage.chart.delivered", DELIVERED), ("usage.chart.refunded", REFUNDED)):
        draw.rectangle((x, y, x + 14, y + 14), fill=colour)
        width = _text(
            draw, (x + 22, y + 7), t(language, key), english(key), LABEL_SIZE, 260, TEXT, "lm"
        )
        x += 22 + width + 28


def _empty(draw: ImageDraw.ImageDraw, language: str, first: date, last: date) -> None:
    """The plot's frame with the period's first and last day, and words saying it is empty."""
    left, right = MARGIN + AXIS_LABEL_WIDTH, WIDTH - MARGIN
    draw.line((left, PLOT_BOTTOM, right, PLOT_BOTTOM), fill=GRID)
    _date(draw, left, first)
    if last != first:
        _date(draw, right, last)
    words = t(language, "usage.empty")
    _text(
        draw,
        (WIDTH / 2, (PLOT_TOP + PLOT_BOTTOM) / 2),
        words,
        english("usage.empty"),
        CAPTION_SIZE,
        WIDTH - 2 * MARGIN,
        MUTED,
        "mm",
    )


def _description(
    report: UsageReport, language: str, names: Mapping[int, str], first: date, last: date
) -> str:
    span = {"first": first.isoformat(), "last": last.isoformat()}
    if not report.days and not report.members:
        return t(language, "usage.chart.description_empty", **span)[:MAX_DESCRIPTION_CHARS]
    top = sorted(report.members, key=lambda m: (-m.credits, m.member_id))[:DESCRIBED_MEMBERS]
    listed = ", ".join(f"{_name(m.member_id, names)} {number(language, m.credits)}" for m in top)
    text = t(
        language,
        "usage.chart.description",
        delivered=report.totals.credits,
        refunded=report.totals.refunds,
        members=listed or "-",
        **span,
    )
    if len(text) > MAX_DESCRIPTION_CHARS:
        text = text[: MAX_DESCRIPTION_CHARS - 1] + "…"
    return text


def _text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    label: str,
    fallback: str,
    size: int,
    max_width: int,
    colour: tuple[int, int, int],
    anchor: str = "la",
) -> float:
    """Draw one line at ``xy`` (Pillow ``anchor``), in a font that covers it, shrunk or cut
    to ``max_width``; returns the width drawn."""
    font, text = label_font(label, fallback, size, max_width)
    if not text:
        return 0.0
    draw.text(xy, text, font=font, fill=colour, anchor=anchor)
    return text_width(font, text)
