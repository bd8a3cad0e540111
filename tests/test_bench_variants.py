"""bench/web_variant.py: each of web.py's variants that `python -m bench ingest` measures
starts and stores what it is sent. The benchmarks never run in `make test`, and a variant left
behind by a change to the writer's interface failed the whole `make bench` run, an hour in."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import free_port
from tests.test_dashboard_browser import post_views


@pytest.mark.parametrize("variant", ["--no-group-commit", "--plain-waitress", "--no-commit-delay"])
def test_each_web_variant_of_the_ingest_benchmark_stores_views(
    start_process, conn: psycopg.Connection, variant
):
    port = free_port()
    web = start_process(["-m", "bench.web_variant", variant], {"PORT": str(port)})
    web.wait_for_line("Serving on")
    post_views(f"http://127.0.0.1:{port}", [{"path": "/one"}])
    post_views(f"http://127.0.0.1:{port}", [{"path": "/two"}, {"path": "/three"}])
    paths = [row[0] for row in conn.execute("SELECT path FROM page_views ORDER BY id")]
    assert paths == ["/one", "/two", "/three"]
