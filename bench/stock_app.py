"""procrastinate as it ships, on Tally's tasks: the baseline of the jobs/s benchmark.

`jobs.app` carries Tally's `worker_defaults` (concurrency, intervals, middleware), which
`procrastinate --app=jobs.app worker` applies too. This app holds the same tasks with no
worker defaults and procrastinate's default connector (psycopg_pool's default size), so

$ DATABASE_URL=... procrastinate --app=bench.stock_app.app worker

runs procrastinate's stock worker: concurrency 1, 5 s polling, LISTEN/NOTIFY on.
"""

from __future__ import annotations

import os

import procrastinate

import jobs

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ["DATABASE_URL"]))
# The same task objects as jobs.app (what App.with_connector does, without its worker defaults).
app.tasks.update(jobs.app.tasks)
