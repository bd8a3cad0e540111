"""Adding a dimension is one line in tally/dimensions.py (issue 17, item 7), proved end to end.

A copy of the tree gets one line more in its table, `language` (the first tag of the
Accept-Language header, lower-cased), and nothing else. The copy's release runs on a database
that already holds views of a release without it; then the copy's web.py and worker.py run as
processes, views come in through /api/collect, and the copy answers with the new panel, filter,
export filter, dashboard panel and API parameter, every number against a count over page_views.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg

from migrations import apply_pending
from tally.dimensions import DIMENSIONS
from tests.conftest import free_port, process_environment

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "a-token-for-the-copy"
LANGUAGE_LINE = (
    '    Dimension("language", "top_languages", "Languages", collect=lambda seen: '
    '(seen.header("Accept-Language") or "").split(",")[0].split(";")[0].strip()[:35].lower() or None),\n'
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    " Version/17.0 Mobile/15E148 Safari/604.1"
)
# (address, agent, Accept-Language or None, path, referrer, width): a visitor is an address and an agent.
BEACONS = [
    ("81.2.69.142", FIREFOX, "de-DE,de;q=0.9,en;q=0.8", "/a", "https://news.example.org/x", 1280),
    ("81.2.69.142", FIREFOX, "de-DE,de;q=0.9,en;q=0.8", "/b", "", 1280),
    ("8.8.8.8", SAFARI, "de-DE", "/a", "", 390),
    ("8.8.8.8", SAFARI, "de-DE", "/a?utm_source=mail&utm_campaign=spring", "", 390),
    ("1.1.1.1", FIREFOX, "fr-FR;q=0.9, en", "/a", "https://blog.example.net/", 1600),
    ("9.9.9.9", SAFARI, "EN-us", "/c", "", 800),
    ("203.0.113.9", FIREFOX, None, "/b", "", 1000),  # no header: no language
    ("81.2.69.143", SAFARI, "  ", "/a", "", 390),  # an empty one: none either
]
# Each panel and how its value is read from a page_views row (the copy's table: the nine and language).
PANELS = {d.panel: (d.name, d.value_sql()) for d in DIMENSIONS} | {"top_languages": ("language", "language")}


def copy_of_the_tree(destination: Path) -> Path:
    """The repository's files (tracked, and new ones not ignored), copied; no .venv, no .git.
    Outside a git checkout (an unpacked archive), every file but the local state's."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
    )
    if listed.returncode != 0:
        ignored = shutil.ignore_patterns(".git", ".venv", ".tally", "__pycache__", ".*_cache", ".hypothesis")
        return Path(shutil.copytree(ROOT, destination, ignore=ignored))
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def add_one_line(tree: Path) -> None:
    """The language line, last in the copy's DIMENSIONS: one line added, no other changed."""
    table = tree / "tally" / "dimensions.py"
    lines = table.read_text().splitlines(keepends=True)
    start = lines.index("DIMENSIONS: tuple[Dimension, ...] = (\n")
    end = lines.index(")\n", start)
    table.write_text("".join([*lines[:end], LANGUAGE_LINE, *lines[end:]]))
    diff = subprocess.run(
        ["git", "diff", "--no-index", "--numstat", str(ROOT / "tally" / "dimensions.py"), str(table)],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert diff[:2] == ["1", "0"], diff


def request(
    port: int, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
    call = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(call, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def send(port: int, address: str, agent: str, language: str | None, path: str, referrer: str, width: int):
    headers = {"Content-Type": "text/plain", "User-Agent": agent, "X-Forwarded-For": address}
    if language is not None:
        headers["Accept-Language"] = language
    body = json.dumps({"url": f"https://example.com{path}", "referrer": referrer, "width": width})
    status, answer = request(port, "/api/collect", body.encode(), headers)
    assert status == 201, answer


def brute_force(conn: psycopg.Connection, where: str, value: object) -> dict:
    """The stats of the last 7 UTC days, counted over page_views: totals, days, every panel."""
    window = "viewed_at >= (now() AT TIME ZONE 'UTC')::date - 6 AND " + where
    total, visitors = conn.execute(
        "SELECT count(*), count(DISTINCT (site, visitor, (viewed_at AT TIME ZONE 'UTC')::date))"
        f" FILTER (WHERE visitor IS NOT NULL) FROM page_views WHERE {window}",
        {"value": value},
    ).fetchone()
    panels = {}
    for panel, (key, sql) in PANELS.items():
        rows = conn.execute(
            f"SELECT {sql} AS value, count(*),"
            " count(DISTINCT (site, visitor, (viewed_at AT TIME ZONE 'UTC')::date))"
            " FILTER (WHERE visitor IS NOT NULL)"
            f" FROM page_views WHERE {window} AND {sql} IS NOT NULL"
            " GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10",
            {"value": value},
        ).fetchall()
        panels[panel] = [{key: name, "views": views, "visitors": who} for name, views, who in rows]
    return {"total_views": total, "visitors": visitors, "panels": panels}


def answered(stats: dict) -> dict:
    return {
        "total_views": stats["total_views"],
        "visitors": stats["visitors"],
        "panels": {panel: stats[panel] for panel in PANELS},
    }


def test_a_dimension_added_by_one_line_is_collected_ranked_filtered_exported_shown_and_described(
    tmp_path, fresh_database, start_process
):
    tree = copy_of_the_tree(tmp_path / "tree")
    add_one_line(tree)
    # A database of the release without it, holding views: rolled up, and in the tail.
    apply_pending(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO page_views (site, path, country, visitor, viewed_at)"
            " SELECT 'example.com', '/old', 'NL', n % 3, now() - interval '1 hour'"
            "   FROM generate_series(1, 12) AS n"
        )
        conn.execute("SELECT tally_rollup_page_views()")
        conn.execute("INSERT INTO page_views (site, path) VALUES ('example.com', '/old-tail')")

    env = process_environment({"DATABASE_URL": fresh_database, "PYTHONPATH": str(tree), "ADMIN_TOKEN": TOKEN})
    release = subprocess.run(
        [sys.executable, "-m", "migrations"], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )
    assert release.returncode == 0, release.stdout + release.stderr
    assert "add column page_views.language" in release.stdout + release.stderr
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM page_views WHERE language IS NULL").fetchone()[0] == 13

    port = free_port()
    web = start_process([sys.executable, str(tree / "web.py")], {**env, "PORT": str(port)})
    worker = start_process([sys.executable, str(tree / "worker.py")], env)
    web.wait_for_line("Serving on")
    worker.wait_for_line("Starting worker")
    for beacon in BEACONS[:5]:
        send(port, *beacon)
    # The worker's rollup folds the first views with the new column; the rest stay in the tail.
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        before = conn.execute("SELECT rolled_up_at FROM page_view_rollup_state").fetchone()[0]
        assert (
            request(port, "/api/jobs/rollup_page_views", b"{}", {"Content-Type": "application/json"})[0]
            == 202
        )
        for _ in range(200):
            if conn.execute("SELECT rolled_up_at FROM page_view_rollup_state").fetchone()[0] != before:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"no rollup; worker said:\n{worker.output()[-3000:]}")
        for beacon in BEACONS[5:]:
            send(port, *beacon)
        languages = dict(conn.execute("SELECT path, language FROM page_views WHERE language IS NOT NULL"))
        assert set(languages.values()) == {"de-de", "fr-fr", "en-us"}, languages

        status, body = request(port, "/api/stats?days=7")
        assert status == 200, body
        stats = json.loads(body)
        assert answered(stats) == brute_force(conn, "true", None)
        assert [row["language"] for row in stats["top_languages"]] == ["de-de", "en-us", "fr-fr"]
        assert stats["top_languages"][0] == {"language": "de-de", "views": 4, "visitors": 2}

        for language in ("de-de", "fr-fr", "en-us", "xx"):
            status, body = request(port, f"/api/stats?days=7&language={language}")
            assert status == 200, body
            assert answered(json.loads(body)) == brute_force(conn, "language = %(value)s", language), language
        status, body = request(port, "/api/stats?days=7&language=de-de&device=desktop")
        assert answered(json.loads(body)) == brute_force(
            conn, "language = %(value)s AND device = 'desktop'", "de-de"
        )

        status, body = request(port, "/api/export?days=7&language=de-de")
        assert status == 200, body
        exported = sorted(
            (row["path"], int(row["views"])) for row in csv.DictReader(io.StringIO(body.decode()))
        )
        assert exported == [("/a", 3), ("/b", 1)], exported
        assert request(port, "/api/export?days=7&langauge=de-de")[0] == 400  # a typo is not a filter

        status, page = request(port, "/")
        assert status == 200 and "Languages" in page.decode() and "de-de" in page.decode()
        status, page = request(port, "/?language=fr-fr")
        assert status == 200 and "fr-fr" in page.decode()

        description = json.loads(request(port, "/api/openapi.json")[1])
        for route in ("/api/stats", "/api/export", "/"):
            names = [parameter["name"] for parameter in description["paths"][route]["get"]["parameters"]]
            assert "language" in names, (route, names)
        today = datetime.datetime.now(datetime.UTC).date().isoformat()
        assert any(day["day"] == today for day in stats["daily"])
