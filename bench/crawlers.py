"""The crawler filter (tally/web/crawlers.py) on public user agents labelled by other projects.

No database: the figures are the same on every build (measured once a run). Sources, from
PyPI, unpacked into .tally/bench-corpus/ on first use (pip download, pinned versions):

- matomo's device-detector test fixtures, as the `device-detector` sdist ships them
  (device_detector/tests/fixtures/upstream/*.yml): entries with a `bot` are crawlers;
  entries whose client type is `browser` are browsers (242 families, from Amiga Voyager
  and Mosaic to today's phones, TVs and consoles). Apps, libraries, feed readers and media
  players are neither and are left out. Matomo's lists are neither detector's source.
- the `instances` of crawler-user-agents (monperrus), as its wheel ships them: crawlers
  only (some, such as Facebook's in-app browser, are people reading a link: counted here
  as crawlers all the same, so this source's misses are an upper bound).

For each source and each detector alone and combined: browsers dropped and crawlers
counted (count, %), and the time a user agent takes, uncached and through the LRU; the
time of the lists without the RE2 automaton in front of them, and how many answers the
automaton changed (it must change none).
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import yaml

from bench import report
from bench.harness import Build, say
from tally.web import crawlers

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".tally" / "bench-corpus"
MATOMO = "device-detector==6.5.1"
MONPERRUS = "crawler-user-agents==1.67.0"
BROWSERS_DROPPED_GOAL = 0.02
CRAWLERS_COUNTED_GOAL = 0.10
Detector = Callable[[str], bool]
DETECTORS: dict[str, Detector] = {
    "crawlerdetect": crawlers.by_crawlerdetect,
    "is-bot": crawlers.by_isbot,
    "the lists": crawlers.by_lists,  # either list, without RE2 in front
    "combined": crawlers._detect.__wrapped__,  # tally's (RE2, then the lists), without its cache
}


def _download(requirement: str, *options: str) -> Path:
    folder = CACHE / requirement.replace("==", "-")
    if not folder.exists() or not any(folder.iterdir()):
        say(f"crawlers: pip download {requirement}")
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(folder)]
        subprocess.run([*pip, *options, requirement], check=True)
    return next(folder.iterdir())


def _matomo() -> dict[str, list[str]]:
    crawlers_, browsers = set(), set()
    with tarfile.open(_download(MATOMO, "--no-binary", ":all:")) as sdist:
        for member in sdist.getmembers():
            if "/tests/fixtures/upstream/" not in member.name or not member.name.endswith(".yml"):
                continue
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            for entry in yaml.load(sdist.extractfile(member), Loader=loader) or []:
                agent = entry.get("user_agent")
                if not isinstance(agent, str) or not agent:
                    continue
                if "bot" in entry:
                    crawlers_.add(agent)
                elif (entry.get("client") or {}).get("type") == "browser":
                    browsers.add(agent)
    return {"crawlers": sorted(crawlers_), "browsers": sorted(browsers - crawlers_)}


def _monperrus() -> dict[str, list[str]]:
    with zipfile.ZipFile(_download(MONPERRUS, "--only-binary", ":all:")) as wheel:
        name = next(name for name in wheel.namelist() if name.endswith("crawler-user-agents.json"))
        patterns = json.loads(wheel.read(name))
    return {"crawlers": sorted({agent for item in patterns for agent in item.get("instances", [])})}


@functools.cache
def corpus() -> dict[str, dict[str, list[str]]]:
    """{source: {"crawlers": [...], "browsers": [...]}}, parsed once and kept as JSON."""
    parsed = CACHE / "corpus.json"
    if not parsed.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        sources = {
            f"matomo device-detector fixtures ({MATOMO})": _matomo(),
            f"crawler-user-agents instances ({MONPERRUS})": _monperrus(),
        }
        parsed.write_text(json.dumps(sources))
    return json.loads(parsed.read_text())


def _share(misses: int, total: int) -> str:
    return f"{100 * misses / total:.2f}% ({misses:,} of {total:,})"


def _timed(detector: Detector, agents: list[str]) -> tuple[list[str], float]:
    """The agents `detector` calls crawlers, and its microseconds a call."""
    began = time.perf_counter()
    found = [agent for agent in agents if detector(agent)]
    return found, (time.perf_counter() - began) / max(len(agents), 1) * 1e6


def _cached_microseconds(agents: list[str], repeats: int = 20) -> float:
    """is_crawler on the same agents again and again (a site's visitors come back): the LRU's cost."""
    sample = agents[:1000]
    for agent in sample:
        crawlers.is_crawler(agent)
    began = time.perf_counter()
    for _ in range(repeats):
        for agent in sample:
            crawlers.is_crawler(agent)
    return (time.perf_counter() - began) / (repeats * len(sample)) * 1e6


@functools.cache
def _measure() -> report.Result:
    result = report.Result("Crawler filter (no database: the same figures on every build)")
    result.notes.append(
        "Corpus, from PyPI (pip download, cached in .tally/bench-corpus): matomo's device-detector "
        f"test fixtures ({MATOMO} sdist): entries with a bot are crawlers, entries whose client is a "
        "browser are browsers (242 families: Amiga Voyager, Mosaic, Lynx, Opera Mini, TVs, consoles, "
        "feature phones, today's phones); apps, libraries, feed readers and media players are left "
        f"out. And crawler-user-agents' instances ({MONPERRUS} wheel), crawlers only. Neither is the "
        "source of crawlerdetect or is-bot (isbot's patterns). Tally's filter is crawlerdetect OR "
        "is-bot (tally/web/crawlers.py); the baseline is crawlerdetect alone, Tally's filter before."
    )
    figures: dict[tuple[str, str, str], tuple[int, int]] = {}
    timings: dict[tuple[str, str], list[float]] = {}
    changed = checked = 0  # answers of Tally's filter that differ from the lists' own
    for source, kinds in corpus().items():
        for kind, agents in kinds.items():
            found_by: dict[str, set[str]] = {}
            for name, detector in DETECTORS.items():
                found, microseconds = _timed(detector, agents)
                found_by[name] = set(found)
                missed = len(agents) - len(found) if kind == "crawlers" else len(found)
                figures[source, kind, name] = (missed, len(agents))
                timings.setdefault((name, kind), []).append(microseconds)
                verb = "counted" if kind == "crawlers" else "dropped"
                result.notes.append(f"{source}: {kind} {verb} by {name}: {_share(missed, len(agents))}")
            changed += len(found_by["combined"] ^ found_by["the lists"])
            checked += len(set(agents))
    for (source, kind, name), (missed, total) in figures.items():
        if name != "combined":
            continue
        before = figures[source, kind, "crawlerdetect"]
        goal = BROWSERS_DROPPED_GOAL if kind == "browsers" else CRAWLERS_COUNTED_GOAL
        verb = "dropped" if kind == "browsers" else "counted"
        result.rows.append(
            report.Row(
                f"{kind} {verb}, {source.split(' (')[0]}",
                _share(missed, total),
                f"crawlerdetect alone {_share(*before)}",
                goal=f"<= {goal:.0%}",
                met=missed <= goal * total,
            )
        )
    browsers = [agent for kinds in corpus().values() for agent in kinds.get("browsers", [])]
    uncached = {key: sum(values) / len(values) for key, values in timings.items()}
    browser_us = {name: uncached[name, "browsers"] for name in DETECTORS}
    result.rows.append(
        report.Row(
            "  crawler check per browser's user agent, uncached / through the LRU",
            f"{browser_us['combined']:,.0f} µs / {_cached_microseconds(browsers):.2f} µs",
            f"the lists without RE2 {browser_us['the lists']:,.0f} µs uncached",
            f"{browser_us['the lists'] / browser_us['combined']:,.1f}x faster uncached",
        )
    )
    result.rows.append(
        report.Row(
            "  answers the RE2 automaton changed",
            f"{changed:,} of {checked:,}",
            "the lists without it",
            goal="none",
            met=changed == 0,
        )
    )
    result.notes.append(
        "Uncached: each detector once over every agent of every source; the row is the mean over "
        f"the browsers' agents (is-bot alone {browser_us['is-bot']:,.0f} µs, crawlerdetect alone "
        f"{browser_us['crawlerdetect']:,.0f} µs); a crawler's agent, which the automaton flags "
        f"and the lists then judge, {uncached['combined', 'crawlers']:,.0f} µs (the lists without "
        f"it {uncached['the lists', 'crawlers']:,.0f} µs). Through the LRU: is_crawler on 1,000 "
        "browsers' agents, 20 times over (a site's visitors come back)."
    )
    return result


def measure(build: Build) -> report.Result:
    """The same on every build: measured on the first, repeated for the others."""
    return copy.copy(_measure())  # its own `seconds`
