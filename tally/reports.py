"""The emailed report of one site for its last full week or month: the stats API's own
answers for that window and the one before it, as an HTML part (tables and inline styles
only, so mail clients draw the bar chart: no scripts, no images) and a plain-text part.

    >>> period = last_full_period("weekly", datetime.date(2026, 12, 3))
    >>> period.name, period.first_day.isoformat(), period.last_day.isoformat()
    ('2026-W48', '2026-11-23', '2026-11-29')
"""

from __future__ import annotations

import dataclasses
import datetime
import urllib.parse
import zoneinfo
from pathlib import Path
from typing import Any

import bottle

from tally.dimensions import value_label
from tally.hosts import shown_host
from tally.web.stats import StatsReader

TEMPLATE = bottle.SimpleTemplate(Path(__file__).with_name("report.tpl").read_text(encoding="utf-8"))
PERIODS = ("weekly", "monthly")
CHART_HEIGHT_PX = 80
WEEKDAYS = ("Mo", "Tu", "We", "Th", "Fr", "Sa", "Su")
ONE_DAY = datetime.timedelta(days=1)


@dataclasses.dataclass(frozen=True)
class Period:
    """A whole week (Monday to Sunday) or calendar month of local days."""

    kind: str  # "weekly" or "monthly"
    first_day: datetime.date
    last_day: datetime.date

    @property
    def name(self) -> str:
        """'2026-W48' for a week (ISO numbering), '2026-11' for a month: the deliveries' key."""
        if self.kind == "weekly":
            year, week, _ = self.first_day.isocalendar()
            return f"{year}-W{week:02d}"
        return self.first_day.strftime("%Y-%m")

    @property
    def days(self) -> int:
        return (self.last_day - self.first_day).days + 1

    @property
    def title(self) -> str:
        if self.kind == "weekly":
            return f"week of {self.first_day:%-d %b} to {self.last_day:%-d %b %Y}"
        return f"{self.first_day:%B %Y}"

    def before(self) -> Period:
        """The period of the same kind just before this one."""
        return last_full_period(self.kind, self.first_day)


def last_full_period(kind: str, today: datetime.date) -> Period:
    """The last week (Monday to Sunday) or month that ended before `today` began."""
    if kind == "weekly":
        monday = today - datetime.timedelta(days=today.weekday())
        return Period(kind, monday - 7 * ONE_DAY, monday - ONE_DAY)
    if kind == "monthly":
        last = today.replace(day=1) - ONE_DAY
        return Period(kind, last.replace(day=1), last)
    raise ValueError(f"period must be one of {', '.join(PERIODS)}")


def periods_to_send(
    kind: str, today: datetime.date, last_claimed: str | None, limit: int, unfinished: str | None = None
) -> list[Period]:
    """The last full period before `today`, and before it those after `last_claimed` (the name of
    the latest period a report was claimed for) or from `unfinished` on (the earliest with a
    report left unsent), `limit` in all at most, oldest first.

    A clock stopped for longer than a period (a week from before a Monday to after the next)
    made no run while that period was the last full one, and the next run's last full period
    is the one after: it is sent too. A report of such a week that met a temporary failure was
    left `retrying` for good, as its retry sent only the last week. With nothing claimed yet,
    only the last one (a new installation mails no back catalogue).

    >>> [p.name for p in periods_to_send("weekly", datetime.date(2026, 12, 7), "2026-W47", 4)]
    ['2026-W48', '2026-W49']
    >>> [p.name for p in periods_to_send("weekly", datetime.date(2026, 12, 7), None, 4)]
    ['2026-W49']
    >>> [p.name for p in periods_to_send("weekly", datetime.date(2026, 12, 7), "2026-W49", 4, "2026-W48")]
    ['2026-W48', '2026-W49']
    """
    period = last_full_period(kind, today)
    found = [period]
    while len(found) < limit:
        period = period.before()
        # Names sort as their periods: 2026-W09 < 2026-W48, 2026-11.
        newer = last_claimed is not None and period.name > last_claimed
        if not newer and (unfinished is None or period.name < unfinished):
            break
        found.append(period)
    return found[::-1]


def local_today(tz: str, now: datetime.datetime | None = None) -> datetime.date:
    """Today in the zone `tz` at `now` (default: this moment)."""
    return (now or datetime.datetime.now(datetime.UTC)).astimezone(zoneinfo.ZoneInfo(tz)).date()


@dataclasses.dataclass(frozen=True)
class Report:
    site: str
    period: Period
    current: dict[str, Any]  # the stats API's answer for the period
    previous: dict[str, Any]  # ... and for the period before
    link: str  # the dashboard from the period's first day to today

    @property
    def site_label(self) -> str:
        """The site as its reader writes it: an international name in Unicode where it cannot
        deceive (tally/hosts.py), on one line."""
        return one_line(shown_host(self.site))

    @property
    def subject(self) -> str:
        """One line: a site recorded by plain SQL may hold a line break or another control
        character, which a header cannot (email refuses it, and the run stopped there)."""
        views = self.current["total_views"]
        return f"Tally: {self.site_label}, {self.period.title}: {views:,} view{'' if views == 1 else 's'}"

    def html(self) -> str:
        return TEMPLATE.render(report=self, totals=self.totals(), tops=self.tops(), chart=self.chart())

    def text(self) -> str:
        lines = [
            f"Tally report for {self.site_label}",
            f"{self.period.title} (days in {self.current['tz']})",
            "",
        ]
        for row in self.totals():
            lines.append(f"{row['name']}: {row['value']:,} ({row['change']} against {row['before']:,})")
        for title, rows in self.tops():
            lines += ["", f"{title}:"]
            lines += [
                f"  {row['views']:>8,}  {one_line(row['name'])}  ({row['change']})" for row in rows
            ] or ["  none"]
        lines += ["", "Views per day:"]
        lines += [
            f"  {day['day']}  {day['views']:>8,} views  {day['visitors']:>8,} visitors"
            for day in self.current["daily"]
        ]
        lines += ["", f"Dashboard: {self.link}", ""]
        return "\n".join(lines)

    def totals(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "value": self.current[key],
                "before": self.previous[key],
                "change": change(self.current[key], self.previous[key]),
            }
            for name, key in (("Views", "total_views"), ("Visitors", "visitors"))
        ]

    def tops(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Each top list with each name's change against its count in the period before
        (when it was in that period's top list too)."""
        lists = []
        for title, key, field in (
            ("Top pages", "top_paths", "path"),
            ("Referrers", "top_referrers", "referrer"),
            ("Sources", "top_sources", "source"),
            ("Countries", "top_countries", "country"),
        ):
            before = {row[field]: row["views"] for row in self.previous[key]}
            rows = []
            for row in self.current[key]:
                earlier = before.get(row[field])
                rows.append(
                    {
                        "name": value_label(field, row[field]),
                        "views": row["views"],
                        "change": "not in the top list before"
                        if earlier is None
                        else change(row["views"], earlier),
                    }
                )
            lists.append((title, rows))
        return lists

    def chart(self) -> list[dict[str, Any]]:
        """One bar a day, its height in pixels scaled to the busiest day, and its label."""
        daily = self.current["daily"]
        peak = max((day["views"] for day in daily), default=0) or 1
        bars = []
        for day in daily:
            date = datetime.date.fromisoformat(day["day"])
            label = WEEKDAYS[date.weekday()] if self.period.kind == "weekly" else str(date.day)
            height = round(CHART_HEIGHT_PX * day["views"] / peak)
            bars.append({**day, "height": height, "rest": CHART_HEIGHT_PX - height, "label": label})
        return bars


def one_line(name: str) -> str:
    """`name` with each line break or other control character as U+FFFD: a site or path from
    plain SQL may hold one, which would start a line of its own in the text part."""
    return "".join(character if character.isprintable() else "\ufffd" for character in name)


def change(now: int, before: int) -> str:
    """'+12%', '-5%', 'no change', or 'new' when there was nothing before."""
    if now == before:
        return "no change"
    if before == 0:
        return "new"
    percent = round(100 * (now - before) / before)
    return f"{percent:+d}%" if percent else ("+<1%" if now > before else "-<1%")


def build(
    reader: StatsReader, site: str, period: Period, tz: str, tally_url: str, today: datetime.date
) -> Report:
    """The report of `site` for `period`: two stats answers, exactly as GET /api/stats computes them."""
    current = reader.stats_for_window(period.days, site, tz, last_day=period.last_day)
    earlier = period.before()
    previous = reader.stats_for_window(earlier.days, site, tz, last_day=earlier.last_day)
    days_to_today = (today - period.first_day).days + 1
    query = {"days": min(days_to_today, 366), "site": site, **({"tz": tz} if tz != "UTC" else {})}
    link = f"{tally_url}/?{urllib.parse.urlencode(query)}"
    return Report(site, period, current, previous, link)
