"""POST /api/collect at 16 connections, with the addresses and user agents of many visitors.

Each view through /api/collect costs what /api/pageviews costs plus the crawler filter, the
visitor hash, the country of the address (iptocc), the browser and system of the user
agent (ua-parser) and the device of the width (tally/web/audience.py). The issue's goal is
that these lookups do not halve ingest: Tally's rate at least half the HTTP ceiling's.

The load, the same for every server (a wrk Lua script): VISITORS visitors, each an address
drawn from public IPv4 space (sent as the router's X-Forwarded-For) and a user agent
drawn from AGENTS browsers' agents of matomo's device-detector fixtures (bench/crawlers.py's
corpus, those Tally does not filter), skewed as browsers' shares are (agent index
floor(AGENTS * u^3): the busiest agent is 7% of the visitors, and a long tail of exotic
ones each has a handful; about one request in 17 of the measured runs brings an agent the
web has not met before);
each request is a random visitor's view of one of 200 pages, a quarter of them from a
referrer or a campaign, at one of four window widths. Four servers, all running at once,
each loaded in turn in every one of RUNS rounds (`alternating_runs`: this machine's speed
drifts by a third within minutes), each ratio the median of the rounds' ratios:

- the HTTP ceiling (bench/ceiling.py): constant JSON served as web.py serves Tally, no
  database, the same requests;
- web.py's /api/collect with one visitor only: every lookup answered by the caches, so
  the gap to the mix is what uncached lookups cost;
- web.py's /api/collect with the mix (Tally);
- the same with every agent equally likely (harsher than real traffic), for context.

$ python -m bench collect            # needs wrk (apt-get install -y wrk)
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import time
from typing import NamedTuple

import psycopg

from bench import crawlers as corpus_source
from bench.harness import (
    Build,
    Load,
    free_port,
    process,
    say,
    throwaway_database,
    wrk_available,
    wrk_load,
)
from bench.report import Result, Row, times
from tally.web.crawlers import is_crawler

CONNECTIONS = 16
RUNS = 5
RUN_SECONDS = 5
WARM_UP_SECONDS = 10  # long enough for the mix to meet most agents once (the caches of a running web)
VISITORS = 20_000
AGENTS = 3_000
PAGES = 200
GOAL = 0.5  # of the HTTP ceiling's req/s
WIDTHS = (390, 820, 1280, 1920)
CEILING = ["-m", "bench.ceiling"]
WEB = ["web.py"]


def lua_string(text: str) -> str:
    """`text` as a Lua long string (the agents hold quotes and backslashes)."""
    return f"[==[{text}]==]"


def browsers_agents(rng: random.Random) -> list[str]:
    agents = [
        agent
        for source in corpus_source.corpus().values()
        for agent in source.get("browsers", [])
        if agent.isascii() and agent.isprintable() and "]==]" not in agent and not is_crawler(agent)
    ]
    return rng.sample(agents, min(AGENTS, len(agents)))


def bodies(rng: random.Random) -> list[str]:
    found = []
    for index in range(PAGES):
        url = f"https://example.com/page/{index}"
        referrer = ""
        chance = rng.random()
        if chance < 0.15:
            referrer = f"https://ref{rng.randrange(50)}.example.net/a"
        elif chance < 0.25:
            url += f"?utm_source=news&utm_medium=email&utm_campaign=c{rng.randrange(5)}"
        found.append(json.dumps({"url": url, "referrer": referrer, "width": rng.choice(WIDTHS)}))
    return found


def script(visitors: list[tuple[str, str]], pages: list[str]) -> str:
    """A wrk script: each request a random visitor's view of a random page."""
    addresses = ",\n".join(lua_string(address) for address, _ in visitors)
    agents = ",\n".join(lua_string(agent) for _, agent in visitors)
    page_bodies = ",\n".join(lua_string(body) for body in pages)
    return (
        f"local addresses = {{{addresses}}}\n"
        f"local agents = {{{agents}}}\n"
        f"local bodies = {{{page_bodies}}}\n"
        "math.randomseed(os.time())\n"
        "request = function()\n"
        "  local visitor = math.random(#addresses)\n"
        "  local headers = {['Content-Type'] = 'text/plain', ['User-Agent'] = agents[visitor],\n"
        "                   ['X-Forwarded-For'] = addresses[visitor]}\n"
        "  return wrk.format('POST', nil, headers, bodies[math.random(#bodies)])\n"
        "end\n"
    )


def public_address(rng: random.Random) -> str:
    while True:
        first = rng.randrange(1, 224)
        if first not in (10, 100, 127, 169, 172, 192, 198, 203):  # clear of private and test ranges
            return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


class Server(NamedTuple):
    """A server to load: its entry file, the path the load posts to, and the load's wrk script."""

    entry: list[str]
    path: str
    lua: str


def alternating_runs(url: str, servers: dict[str, Server]) -> dict[str, list[Load]]:
    """Every server started at once and warmed up, then RUNS rounds in each of which every one
    is loaded in turn, RUN_SECONDS each: loads of a round met the same machine. Run one after
    the other, a minute apart, the ceiling moved by a third between runs of one day, and each
    ratio with it. A server waits idle while another is loaded (waitress's loop sleeps in poll)."""
    with contextlib.ExitStack() as stack:
        ports = {}
        for name, server in servers.items():
            ports[name] = free_port()
            env = {"DATABASE_URL": url, "PORT": str(ports[name])}
            stack.enter_context(process(server.entry, env, ready="Serving on"))
        for name, server in servers.items():
            wrk_load(ports[name], server.path, server.lua, CONNECTIONS, WARM_UP_SECONDS)
        loads: dict[str, list[Load]] = {name: [] for name in servers}
        for _round in range(RUNS):
            for name, server in servers.items():
                loads[name].append(wrk_load(ports[name], server.path, server.lua, CONNECTIONS, RUN_SECONDS))
    for name, server_loads in loads.items():
        failures = sum(load.failures for load in server_loads)
        if failures:
            raise RuntimeError(f"{servers[name].entry} {servers[name].path}: {failures} requests failed")
    return loads


def median_ratio(loads: list[Load], baselines: list[Load]) -> float:
    """The median of the rounds' ratios, each a load over the baseline of its own round."""
    rounds = zip(loads, baselines, strict=True)
    return statistics.median(load.requests_per_second / base.requests_per_second for load, base in rounds)


def median_load(loads: list[Load]) -> Load:
    return sorted(loads, key=lambda load: load.requests_per_second)[len(loads) // 2]


def measure(build: Build) -> Result:
    result = Result("collect")
    if not wrk_available():
        result.notes.append("skipped: wrk is not installed (apt-get install -y wrk)")
        return result
    rng = random.Random(17)
    agents = browsers_agents(rng)
    visitors = [(public_address(rng), agents[int(len(agents) * rng.random() ** 3)]) for _ in range(VISITORS)]
    pages = bodies(rng)
    mix, alone = script(visitors, pages), script(visitors[:1], pages)
    uniform = script([(address, rng.choice(agents)) for address, _ in visitors], pages)
    with throwaway_database(build) as url:
        started = time.perf_counter()
        say(
            f"collect: the HTTP ceiling and /api/collect with one visitor, with {VISITORS:,},"
            " and with every agent alike, in turn"
        )
        loads = alternating_runs(
            url,
            {
                "ceiling": Server(CEILING, "/api/pageviews", mix),
                "mix": Server(WEB, "/api/collect", mix),
                "one": Server(WEB, "/api/collect", alone),
                "uniform": Server(WEB, "/api/collect", uniform),
            },
        )
        with psycopg.connect(url) as conn:
            stored, countries, browsers = conn.execute(
                "SELECT count(*), count(DISTINCT country), count(DISTINCT browser) FROM page_views"
            ).fetchone()
    ceiling, tally = loads["ceiling"], loads["mix"]
    median = {name: median_load(server_loads) for name, server_loads in loads.items()}
    rate, top = median["mix"].requests_per_second, median["ceiling"].requests_per_second
    ratio = median_ratio(tally, ceiling)
    result.rows.append(
        Row(
            f"POST /api/collect req/s at {CONNECTIONS} connections, {VISITORS:,} visitors, skewed agents",
            f"{rate:,.0f}",
            f"HTTP ceiling {top:,.0f}",
            times(ratio, GOAL),
            f">= {GOAL}x",
            ratio >= GOAL,
        )
    )
    result.rows.append(
        Row(
            f"  the same, every one of {len(agents):,} agents equally likely",
            f"{median['uniform'].requests_per_second:,.0f}",
            f"HTTP ceiling {top:,.0f}",
            times(median_ratio(loads["uniform"], ceiling)),
            "-",
            None,
        )
    )
    result.rows.append(
        Row(
            "  the same, the lookups cached (one visitor)",
            f"{median['one'].requests_per_second:,.0f}",
            f"the mix {rate:,.0f}",
            times(median_ratio(loads["one"], tally)),
            "-",
            None,
        )
    )

    def spread(server_loads: list[Load]) -> str:
        return " / ".join(f"{load.requests_per_second:,.0f}" for load in server_loads)

    result.notes.append(
        f"{RUNS} rounds of {RUN_SECONDS} s on each server in turn after {WARM_UP_SECONDS} s of warm-up"
        " each; req/s the median, each ratio the median of the rounds' ratios;"
        f" every round (req/s): ceiling {spread(ceiling)}; one visitor {spread(loads['one'])};"
        f" the mix {spread(tally)}; agents equally likely {spread(loads['uniform'])}."
        f" p50/p99 of the mix: {median['mix'].p50 * 1000:.1f} / {median['mix'].p99 * 1000:.1f} ms."
        f" {stored:,} views stored from {countries} countries and {browsers} browser families;"
        f" {len(agents):,} distinct agents; {time.perf_counter() - started:.0f} s."
    )
    return result
