"""Running the exactness scenarios as if at another time of day, without faking the clock.

The scenarios place their views and events at `now() - age`, so what they explore depends on
when they run: where the newest data, the tail and the windows' ends fall against the zones'
midnights. A test that takes the `age_shift` fixture has every age lengthened by a shift (the
scenario as it would have been that long ago, its newest data that far back), chosen so that
each run explores the same times of day:

- "as-run": no shift, the time the suite happens to run at;
- "zone-HH:MM": the newest data at HH:MM in the test's zone (its `tz` parameter, else UTC),
  the last such time before now; "utc-HH:MM" the same in UTC.

`TALLY_AGE_SHIFTS` replaces them, for an exploration: `all` is every 15 minutes of a day and
the odd minutes 7 and 14 (the rollups' buckets are 15 minutes), or a comma-separated list of
minutes and names as above. For example, every time of day on the exact tests:

    TALLY_AGE_SHIFTS=all .venv/bin/python -m pytest -q -p no:cacheprovider -k 'exact or returning' \\
        tests/test_web_exact.py tests/test_visitor_days.py tests/test_events.py
"""

from __future__ import annotations

import datetime
import os
import zoneinfo

# The normal suite's, beside the time it runs at: the newest data just after the zone's
# midnight (today's first minutes hold the tail's newest views, and a window that ended
# yesterday ends just before them) and just before the UTC day's (its ids' and visits' day
# full to its end). Every time of day is an exploration's (TALLY_AGE_SHIFTS=all): each shift
# costs the suite about 20 s a build.
DEFAULT = ("as-run", "zone-00:07", "utc-23:52")
ALL = tuple(str(minutes) for minutes in (7, 14, *range(0, 24 * 60, 15)))

# The current test's shift (set by the fixture; 0 for a test that does not take it).
SHIFT = datetime.timedelta(0)


def names() -> tuple[str, ...]:
    chosen = os.environ.get("TALLY_AGE_SHIFTS", "").strip()
    if not chosen:
        return DEFAULT
    if chosen == "all":
        return ALL
    return tuple(name.strip() for name in chosen.split(",") if name.strip())


def resolve(name: str, now: datetime.datetime, tz: str) -> datetime.timedelta:
    """The shift a name stands for, at the database's `now`."""
    if name == "as-run":
        return datetime.timedelta(0)
    if name.isdigit():
        return datetime.timedelta(minutes=int(name))
    where, _, at = name.partition("-")
    zone = zoneinfo.ZoneInfo(tz if where == "zone" else "UTC")
    hours, minutes = map(int, at.split(":"))
    local = now.astimezone(zone)
    target = datetime.datetime.combine(local.date(), datetime.time(hours, minutes), zone)
    if target > local:
        target = datetime.datetime.combine(local.date() - datetime.timedelta(days=1), target.time(), zone)
    return now - target


def placed(age: datetime.timedelta) -> datetime.timedelta:
    """An age as a scenario gives it, with the current shift."""
    return age + SHIFT
