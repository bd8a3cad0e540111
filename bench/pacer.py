"""A steady stream of page views in its own process, so that the client timing GETs beside it
does not share a GIL with the client posting.

It POSTs `--requests` requests of `--views` views each to /api/pageviews at `--rate`
requests per second in all, over `--connections` keep-alive connections, each request
sent on schedule (a late answer makes only itself late), then prints one JSON line:
requests, views stored (answered 201), failures, and the p50 and p99 latency in seconds.
With `--beacons`, each request is one beacon to /api/collect as tally.js sends it, from a
browser's address and user agent: the views have visitor ids, half of them returning.

$ python -m bench.pacer --port 8123 --rate 200 --requests 12000
$ python -m bench.pacer --port 8123 --rate 200 --requests 12000 --beacons
$ python -m bench.pacer --port 8123 --rate 50 --requests 3000 --views 100
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
import subprocess
import sys
from collections.abc import Iterator

from bench.harness import ROOT, paced_load, percentile


def body(views: int) -> bytes:
    if views == 1:
        return json.dumps({"path": "/pricing", "referrer": "https://example.com/"}).encode()
    return json.dumps([{"path": f"/page/{index % 50}"} for index in range(views)]).encode()


BROWSER = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)


def beacon(n: int) -> tuple[bytes, dict[str, str]]:
    """The n-th beacon of a run: the even ones from visitors new to it, each odd one from one of
    those come back to another page (its id's visit and moves change, as a browsing visitor's)."""
    visitor = n if n % 2 == 0 or n < 2 else random.Random(n).randrange(0, n - 1, 2)
    # RFC 2544's benchmarking addresses, 198.18.0.0/15: distinct for the first 131,072 visitors.
    address = f"198.{18 + (visitor >> 16) % 2}.{visitor >> 8 & 255}.{visitor & 255}"
    body = {"url": f"https://example.com/page/{n % 50}", "referrer": "https://news.example.org/"}
    return json.dumps(body).encode(), {"User-Agent": BROWSER, "X-Forwarded-For": address}


def pace(
    port: int, payload: bytes, rate: float, requests: int, connections: int, beacons: bool = False
) -> list[tuple[float, int]]:
    """(seconds, status) of each of `requests` POSTs, paced to `rate` a second over `connections`."""
    return paced_load(
        port,
        "/api/collect" if beacons else "/api/pageviews",
        payload,
        connections,
        seconds=float("inf"),
        rate=rate,
        requests=requests,
        request_for=beacon if beacons else None,
    )


@dataclasses.dataclass(frozen=True)
class Paced:
    requests: int
    stored: int  # views answered 201
    failures: int
    p50: float
    p99: float


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pacer")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second, all connections")
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--views", type=int, default=1, help="views per request")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--beacons", action="store_true", help="one beacon a request, with visitor ids")
    args = parser.parse_args(argv)
    if args.beacons and args.views != 1:
        parser.error("--beacons sends one view a request: leave out --views")
    samples = pace(args.port, body(args.views), args.rate, args.requests, args.connections, args.beacons)
    ok = [took for took, status in samples if status == 201]
    summary = Paced(
        len(samples),
        len(ok) * args.views,
        len(samples) - len(ok),
        percentile(ok, 0.5) if ok else float("nan"),
        percentile(ok, 0.99) if ok else float("nan"),
    )
    print(json.dumps(dataclasses.asdict(summary)), flush=True)


class Pacer:
    """A running `python -m bench.pacer`: whether it still runs, and its summary once done."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen

    def running(self) -> bool:
        return self.popen.poll() is None

    def summary(self) -> Paced:
        out, err = self.popen.communicate()
        if self.popen.returncode != 0:
            raise RuntimeError(f"bench.pacer failed:\n{err[-3000:]}")
        return Paced(**json.loads(out))


@contextlib.contextmanager
def paced_views(
    port: int, rate: float, requests: int, views: int = 1, connections: int = 8, beacons: bool = False
) -> Iterator[Pacer]:
    """Post views in the background from another process; stopped if still running at the end."""
    options = [f"--port={port}", f"--rate={rate:g}", f"--requests={requests}", f"--views={views}"]
    options += ["--beacons"] if beacons else []
    popen = subprocess.Popen(
        [sys.executable, "-m", "bench.pacer", *options, f"--connections={connections}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield Pacer(popen)
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.communicate()


if __name__ == "__main__":
    main(sys.argv[1:])
