"""Reports by email (issue 21): the periods, the report's numbers against the stats API and a
brute-force count, each (site, period, recipient) once through real `worker.py` processes
and a real SMTP server (aiosmtpd, tests/smtp_server.py), the preview page, the clock and the
Message-ID. Failures and the killed worker are in tests/test_reports_delivery.py."""

from __future__ import annotations

import datetime
import random
import re
import time
import zoneinfo

import psycopg

from tally import reports
from tally.config import from_env
from tally.dimensions import value_label
from tally.search_engines import referrer_name
from tests.conftest import defer_by_sql, statuses, wait_until
from tests.smtp_server import SmtpServer
from tests.test_processes import cli_defer
from tests.test_web import TOKEN, make_client, roll_up
from tests.test_web_exact import brute_force, insert_raw

TZ = "America/New_York"
SITE = "example.com"


def report_env(database_url: str, smtp: SmtpServer, recipients: str, **more: str) -> dict[str, str]:
    """Every variable the report processes read, whatever the caller's shell holds."""
    return {
        "DATABASE_URL": database_url,
        "SMTP_URL": smtp.url,
        "REPORT_RECIPIENTS": recipients,
        "REPORT_FROM": "tally@reports.example.com",
        "REPORT_SCHEDULE": "weekly",
        "TIMEZONE": TZ,
        "TALLY_URL": "https://tally.example.com",
        "PUBLIC_DASHBOARD": "false",
        "WORKER_CONCURRENCY": "2",
        "WORKER_SESSION_LIVENESS": "true",
        "LISTEN_NOTIFY": "true",
        "POLL_INTERVAL_SECONDS": "1",
        **more,
    }


def views_over_weeks(conn: psycopg.Connection, seed: int = 1, count: int = 1200) -> None:
    """Views of two sites over the last 25 days, some rolled up, the rest left in the tail."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        site = rng.choice([SITE, SITE, "shop.example.org"])
        visitor = rng.getrandbits(63) - 2**62 if rng.random() < 0.8 else None
        referrer = rng.choice([None, "https://www.google.com/x", "https://news.ycombinator.com/", ""])
        source = rng.choice([None, None, "newsletter", "hn"])
        age = datetime.timedelta(minutes=rng.randrange(0, 25 * 24 * 60))
        country = rng.choice([None, "DE", "US", "FR"])
        audience = (None, None, country, None, None, None)  # medium, campaign, country, browser, os, device
        rows.append((site, f"/p{rng.randrange(0, 14)}", source, referrer or None, visitor, *audience, age))
    insert_raw(conn, rows[: count // 2])
    roll_up(conn)
    insert_raw(conn, rows[count // 2 :])


def numbers(message) -> dict:
    """The figures a reader sees in the plain-text part."""
    text = message.get_body(("plain",)).get_content()
    found = {"totals": {}, "daily": {}, "tops": {}}
    section = None
    for line in text.splitlines():
        if match := re.fullmatch(r"(Views|Visitors): ([\d,]+) \(.*\)", line):
            found["totals"][match[1]] = int(match[2].replace(",", ""))
        elif line.endswith(":") and not line.startswith(" "):
            section = line[:-1]
            found["tops"].setdefault(section, [])
        elif match := re.fullmatch(r"  (\d{4}-\d\d-\d\d) +([\d,]+) views +([\d,]+) visitors", line):
            found["daily"][match[1]] = (int(match[2].replace(",", "")), int(match[3].replace(",", "")))
        elif section and (match := re.fullmatch(r" +([\d,]+)  (.+)  \(.*\)", line)):
            found["tops"][section].append((match[2], int(match[1].replace(",", ""))))
    return found


def local_today(conn: psycopg.Connection) -> datetime.date:
    return conn.execute("SELECT (now() AT TIME ZONE %s)::date", (TZ,)).fetchone()[0]


def deliveries(conn: psycopg.Connection) -> dict[str, tuple]:
    return {
        recipient: (status, message_id, attempts, error)
        for recipient, status, message_id, attempts, error in conn.execute(
            "SELECT recipient, status, message_id, attempts, error FROM tally_report_deliveries"
        )
    }


# --- periods ------------------------------------------------------------------------------------


def test_the_last_full_week_and_month():
    thursday = datetime.date(2026, 12, 3)
    week = reports.last_full_period("weekly", thursday)
    assert (week.first_day, week.last_day, week.name) == (
        datetime.date(2026, 11, 23),
        datetime.date(2026, 11, 29),
        "2026-W48",
    )
    assert reports.last_full_period("weekly", datetime.date(2026, 11, 30)) == week  # a Monday
    assert week.before().last_day == datetime.date(2026, 11, 22)
    month = reports.last_full_period("monthly", datetime.date(2026, 1, 1))
    assert (month.first_day, month.last_day, month.name, month.days) == (
        datetime.date(2025, 12, 1),
        datetime.date(2025, 12, 31),
        "2025-12",
        31,
    )
    assert reports.last_full_period("monthly", datetime.date(2024, 3, 15)).days == 29  # Feb 2024
    assert reports.last_full_period("monthly", datetime.date(2024, 3, 15)).before().days == 31


# --- the report's numbers, once, through real worker processes ----------------------------------


def test_a_run_sends_the_periods_since_the_last_one_claimed_four_at_most():
    def names(kind: str, today: datetime.date, last_claimed: str | None) -> list[str]:
        return [period.name for period in reports.periods_to_send(kind, today, last_claimed, 4)]

    monday = datetime.date(2027, 1, 4)  # ISO week 2027-W01; the last full week is 2026-W53
    assert names("weekly", monday, None) == ["2026-W53"]  # nothing claimed: no back catalogue
    assert names("weekly", monday, "2026-W53") == ["2026-W53"]  # its rows say what is left
    assert names("weekly", monday, "2026-W51") == ["2026-W52", "2026-W53"]  # across the year
    assert names("weekly", monday, "2025-W10") == ["2026-W50", "2026-W51", "2026-W52", "2026-W53"]
    assert names("monthly", datetime.date(2027, 2, 10), "2026-11") == ["2026-12", "2027-01"]


def test_two_recipients_get_last_weeks_numbers_once(database_url, pool, conn, start_process):
    views_over_weeks(conn)
    with SmtpServer() as smtp:
        # a@ gets every site's report (sites with views last week); b@ the one of example.com.
        env = report_env(database_url, smtp, f"a@example.com,{SITE}=b@example.com")
        # shop.example.org has views last week too: a@ gets its report as well.
        worker = start_process(["worker.py"], env)
        worker.wait_for_line("Starting worker")
        defer_by_sql(conn, "send_reports")
        wait_until(lambda: statuses(conn, "send_reports") == ["succeeded"], 60, message="send_reports")
        messages = smtp.received()
        assert sorted((m["To"], m["Subject"].split(",")[0]) for m in messages) == [
            ("a@example.com", "Tally: example.com"),
            ("a@example.com", "Tally: shop.example.org"),
            ("b@example.com", "Tally: example.com"),
        ]
        today = local_today(conn)
        week = reports.last_full_period("weekly", today)
        client = make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN, TIMEZONE=TZ)
        days_to_today = (today - week.first_day).days + 1
        for message in messages:
            site = message["Subject"].split(",")[0].removeprefix("Tally: ")
            found = numbers(message)
            # The stats API's own answer for the days of the week (a window from its Monday to today).
            api = client.get("/api/stats", {"days": days_to_today, "site": site}).json
            api_days = {day["day"]: (day["views"], day["visitors"]) for day in api["daily"][:7]}
            assert found["daily"] == api_days
            assert found["totals"] == {
                "Views": sum(v for v, _ in api_days.values()),
                "Visitors": sum(v for _, v in api_days.values()),
            }
            expected = brute_force(conn, 7, site, TZ, last_day=week.last_day)
            assert {day: figures for day, figures in found["daily"].items() if figures[0]} == expected[
                "daily"
            ]
            for title, key, field in (
                ("Top pages", "top_paths", "path"),
                ("Referrers", "top_referrers", "referrer"),
                ("Sources", "top_sources", "source"),
                ("Countries", "top_countries", "country"),
            ):
                # A search engine by its name, as people read it (the count names its domain).
                named = referrer_name if field == "referrer" else (lambda value: value)
                expected_rows = [
                    (value_label(field, named(row[field])), row["views"]) for row in expected[key]
                ]
                assert found["tops"][title] == expected_rows, title
            # Mail clients: both parts, no scripts or images, a chart of seven days, the link.
            assert message.get_content_type() == "multipart/alternative"
            html = message.get_body(("html",)).get_content()
            assert "<script" not in html and "<img" not in html and "src=" not in html
            assert html.count('class="bar"') == sum(1 for v, _ in found["daily"].values() if v)
            assert f"https://tally.example.com/?days={days_to_today}&amp;site={site}" in html
        rows = conn.execute(
            "SELECT site, recipient, status, message_id FROM tally_report_deliveries"
        ).fetchall()
        sent = {
            (m["Subject"].split(",")[0].removeprefix("Tally: "), m["To"]): m["Message-ID"] for m in messages
        }
        assert {(site, recipient): message_id for site, recipient, _, message_id in rows} == sent
        assert {status for _, _, status, _ in rows} == {"sent"} and len(set(sent.values())) == 3

        # A second run (a manual defer from the command line, a second clock's tick) sends nothing.
        cli_defer("send_reports", database_url)
        wait_until(lambda: statuses(conn, "send_reports") == ["succeeded"] * 2, 60, message="the rerun")
        assert len(smtp.received()) == 3
        assert "'sent': 0, 'failed': 0, 'retrying': 0, 'already_done': 3" in worker.output()


def test_a_clock_back_after_weeks_away_sends_the_weeks_it_missed(database_url, pool, conn, start_process):
    """procrastinate's deferrer skips a tick older than 10 minutes, and each run sent the last
    full week only: a clock stopped from before a Monday until after the next one never sent the
    week in between. The restarted clock defers the tick it missed at once, and the run sends
    each week since the last one claimed."""
    from croniter import croniter

    from jobs.schedule import REPORT_CHECK_SCHEDULE

    views_over_weeks(conn)
    if croniter(REPORT_CHECK_SCHEDULE, time.time()).get_next(float) - time.time() < 30:
        time.sleep(31)  # the tick the clock will defer is the one computed here
    tick = int(croniter(REPORT_CHECK_SCHEDULE, time.time()).get_prev(float))
    day_of_tick = datetime.datetime.fromtimestamp(tick, zoneinfo.ZoneInfo(TZ)).date()
    last = reports.last_full_period("weekly", day_of_tick)
    missed = last.before()
    claimed_before = missed.before()  # sent by the clock before it stopped, 15 days ago
    conn.execute(
        "INSERT INTO tally_report_deliveries (site, period, recipient, message_id, status, sent_at)"
        " VALUES (%s, %s, 'a@example.com', '<old@tally>', 'sent', now() - interval '15 days')",
        (SITE, claimed_before.name),
    )
    conn.execute(
        "INSERT INTO procrastinate_periodic_defers (task_name, periodic_id, defer_timestamp)"
        " VALUES ('send_reports', 'clock', %s)",
        (tick - 15 * 86400,),
    )
    with SmtpServer() as smtp:
        env = report_env(database_url, smtp, "a@example.com")
        worker = start_process(["worker.py"], env)
        worker.wait_for_line("Starting worker")
        clock = start_process(["clock.py"], env)
        if time.time() - tick > 600:  # a tick procrastinate alone skips (else it defers it itself)
            clock.wait_for_line("send_reports: its tick of")
        wait_until(lambda: statuses(conn, "send_reports") == ["succeeded"], 60, message="send_reports")
        (args,) = conn.execute(
            "SELECT args FROM procrastinate_jobs WHERE task_name = 'send_reports'"
        ).fetchone()
        assert args == {"timestamp": tick}
        sent = conn.execute(
            "SELECT site, period FROM tally_report_deliveries WHERE status = 'sent' ORDER BY 1, 2"
        ).fetchall()
        assert sent == sorted(
            [(site, period.name) for site in (SITE, "shop.example.org") for period in (missed, last)]
            + [(SITE, claimed_before.name)]
        )
        assert len(smtp.received()) == 4


# --- the preview page ------------------------------------------------------------------------------


def test_the_preview_is_the_owners_and_checks_its_parameters(database_url, pool, conn):
    views_over_weeks(conn)
    owner = make_client(database_url, pool, owner=True, ADMIN_TOKEN=TOKEN, TIMEZONE=TZ)
    anyone = make_client(database_url, pool, ADMIN_TOKEN=TOKEN, TIMEZONE=TZ, PUBLIC_DASHBOARD="true")
    refused = anyone.get(f"/reports/preview?site={SITE}", status=401).text
    # The login form, leading back to the preview asked for; nothing of the report.
    assert 'id="login-form"' in refused and f'name="next" value="/reports/preview?site={SITE}"' in refused
    assert SITE not in refused.replace(f'value="/reports/preview?site={SITE}"', "")
    for query in (
        "",
        "?site=",
        "?site=a:b",
        f"?site={SITE}&period=daily",
        f"?site={SITE}&period=weekly&period=x",
    ):
        assert owner.get("/reports/preview" + query, status=400).json["error"]
    today = local_today(conn)
    for kind in ("weekly", "monthly"):
        page = owner.get(f"/reports/preview?site={SITE}&period={kind}", status=200)
        assert (
            page.content_type == "text/html"
            and "default-src 'none'" in page.headers["Content-Security-Policy"]
        )
        period = reports.last_full_period(kind, today)
        expected = brute_force(conn, period.days, SITE, TZ, last_day=period.last_day)
        views = sum(v for v, _ in expected["daily"].values())
        assert f'data-total="views">{views:,}<' in page.text
        assert page.text.count("<td valign") == period.days


# --- the clock and the Message-ID ------------------------------------------------------------------


def test_the_clock_defers_send_reports_only_when_reports_are_on(database_url):
    import procrastinate

    import jobs
    from jobs import schedule

    def schedules(env: dict[str, str]) -> dict[str, str]:
        app = procrastinate.App(connector=jobs.app.connector)  # not jobs.app: test workers would tick
        schedule.register_schedule(app, from_env(env, process_type="clock"))
        return {task.task.name: task.cron for task in app.periodic_registry.periodic_tasks.values()}

    on = {"SMTP_URL": "smtp://mail.example.com", "REPORT_RECIPIENTS": "a@example.com"}
    assert schedules(on)["send_reports"] == schedule.REPORT_CHECK_SCHEDULE
    assert "send_reports" not in schedules({**on, "REPORT_SCHEDULE": "off"})
    assert "send_reports" not in schedules({"SMTP_URL": "smtp://mail.example.com"})


def test_a_message_id_is_fixed_by_site_period_and_recipient():
    from tally.mail import message_id

    one = message_id(SITE, "2026-W48", "a@example.com", "tally@reports.example.com")
    assert one == message_id(SITE, "2026-W48", "A@Example.com", "tally@reports.example.com")
    assert re.fullmatch(r"<report-[0-9a-f]{32}@reports\.example\.com>", one)
    others = {
        message_id("shop.example.org", "2026-W48", "a@example.com", "tally@x.org"),
        message_id(SITE, "2026-W49", "a@example.com", "tally@x.org"),
        message_id(SITE, "2026-W48", "b@example.com", "tally@x.org"),
    }
    assert len(others) == 3 and one.split("@")[0] not in {other.split("@")[0] for other in others}


def test_the_subject_counts_one_view_as_one():
    week = reports.Period("weekly", datetime.date(2026, 11, 23), datetime.date(2026, 11, 29))
    for views, said in ((1, "1 view"), (0, "0 views"), (1200, "1,200 views")):
        report = reports.Report("example.com", week, {"total_views": views}, {}, "https://tally/")
        assert report.subject.endswith(f": {said}"), report.subject
