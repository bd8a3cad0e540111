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
referrer or a campaign, at one of four window widths. Measured in the same run, on the
same machine:

- the HTTP ceiling (bench/ceiling.py): constant JSON served as web.py serves Tally, no
  database, the same requests;
- web.py's /api/collect with one visitor only: every lookup answered by the caches, so
  the gap to the mix is what uncached lookups cost;
- web.py's /api/collect with the mix (Tally);
- the same with every agent equally likely (harsher than real traffic), for context.

$ python -m bench collect            # needs wrk (apt-get install -y wrk)
"""

from __future__ import annotations

import json
import random
import time

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
RUNS = 3
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


def runs(entry: list[str], url: str, path: str, lua: str) -> list[Load]:
    port = free_port()
    env = {"DATABASE_URL": url, "PORT": str(port)}
    with process(entry, env, ready="Serving on"):
        wrk_load(port, path, lua, CONNECTIONS, WARM_UP_SECONDS)
        loads = [wrk_load(port, path, lua, CONNECTIONS, RUN_SECONDS) for _ in range(RUNS)]
    failures = sum(load.failures for load in loads)
    if failures:
        raise RuntimeError(f"{entry} {path}: {failures} requests failed")
    return sorted(loads, key=lambda load: load.requests_per_second)


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
        say(f"collect: the HTTP ceiling, then /api/collect with one visitor and with {VISITORS:,}")
        ceiling = runs(CEILING, url, "/api/pageviews", mix)
        one = runs(WEB, url, "/api/collect", alone)
        tally = runs(WEB, url, "/api/collect", mix)
        harsh = runs(WEB, url, "/api/collect", uniform)
        with psycopg.connect(url) as conn:
            stored, countries, browsers = conn.execute(
                "SELECT count(*), count(DISTINCT country), count(DISTINCT browser) FROM page_views"
            ).fetchone()
    median = {
        name: loads[len(loads) // 2]
        for name, loads in (("c", ceiling), ("o", one), ("t", tally), ("u", harsh))
    }
    rate = median["t"].requests_per_second
    result.rows.append(
        Row(
            f"POST /api/collect req/s at {CONNECTIONS} connections, {VISITORS:,} visitors, skewed agents",
            f"{rate:,.0f}",
            f"HTTP ceiling {median['c'].requests_per_second:,.0f}",
            times(rate / median["c"].requests_per_second, GOAL),
            f">= {GOAL}x",
            rate >= GOAL * median["c"].requests_per_second,
        )
    )
    result.rows.append(
        Row(
            f"  the same, every one of {len(agents):,} agents equally likely",
            f"{median['u'].requests_per_second:,.0f}",
            f"HTTP ceiling {median['c'].requests_per_second:,.0f}",
            times(median["u"].requests_per_second / median["c"].requests_per_second),
            "-",
            None,
        )
    )
    result.rows.append(
        Row(
            "  the same, the lookups cached (one visitor)",
            f"{median['o'].requests_per_second:,.0f}",
            f"the mix {rate:,.0f}",
            times(median["o"].requests_per_second / rate),
            "-",
            None,
        )
    )

    def spread(loads: list[Load]) -> str:
        return " / ".join(f"{load.requests_per_second:,.0f}" for load in loads)

    result.notes.append(
        f"{RUNS} runs of {RUN_SECONDS} s each after {WARM_UP_SECONDS} s of warm-up, the median shown;"
        f" every run (req/s): ceiling {spread(ceiling)}; one visitor {spread(one)}; the mix {spread(tally)};"
        f" agents equally likely {spread(harsh)}."
        f" p50/p99 of the mix: {median['t'].p50 * 1000:.1f} / {median['t'].p99 * 1000:.1f} ms."
        f" {stored:,} views stored from {countries} countries and {browsers} browser families;"
        f" {len(agents):,} distinct agents; {time.perf_counter() - started:.0f} s."
    )
    return result
