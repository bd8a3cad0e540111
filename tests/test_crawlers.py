"""The crawler filter (tally/web/crawlers.py) on a fixed sample of public, labelled user agents.

The sample is drawn from the corpus of bench/crawlers.py (`python -m bench crawlers` gives
the figures on all of it, docs/BENCHMARKS.md has them): labels are those of matomo's
device-detector test fixtures (the `device-detector` 6.5.1 sdist on PyPI,
tests/fixtures/upstream/*.yml) and of crawler-user-agents' `instances` (1.67.0 on PyPI),
not those of either list Tally uses.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.web import crawlers
from tally.web.crawlers import MAX_AGENT, by_crawlerdetect, by_lists, is_crawler, may_be_crawler

# matomo bots.yml; the first eight are ones crawlerdetect alone let through.
MATOMO_CRAWLERS = [
    "workona-favicon-service/1.0.0",
    "b3astmode",
    "Mozilla/5.0 ArtelLeadRadar/4.0",
    "Simbiat Software",
    "Mozilla/5.0 (compatible;vu-server-health-scanner/1.0;https://130.37.198.75/index.html)",
    "Mozilla/5.0 (Windows NT 6.3; WOW64; Trident/7.0; rv:11.0; Catchpoint) like Gecko",
    "Mozilla/5.0 (compatible; Webzio-Extended/1.0)",
    "John Recon/1.0.0",
    "BotPoke",
    "Mozilla/5.0 (compatible; RedekenBot/0.1; +https://www.redeken.com/bot/)",
    "OmtrBot/1.0",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
]
# crawler-user-agents instances that crawlerdetect alone let through.
MONPERRUS_CRAWLERS = [
    "FediList Agent/3 (https://fedilist.com/)",
    "asnriskscorer/1.0",
    "TwinWaveScanner",
    "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT) NewsNow/1.0",
]
# matomo's fixtures with a client of type browser: old, exotic, TVs, feature phones.
MATOMO_BROWSERS = [
    "Mozilla/4.0 (compatible; MSIE 6.0; Windows 98; Win 9x 4.90; .NET CLR 1.1.4322)",
    "Opera/9.80 (BREW; Opera Mini/5.1/27.2338; U; xx) Presto/2.8.119 320X240 ZTE F-450",
    "Mozilla/5.0 (Mobile; ALCATEL4044C; rv:37.0) Gecko/37.0 Firefox/37.0 KaiOS/1.0",
    "Mozilla/5.0 (PlayStation 4 Pro 5.0)",
    "Dillo/0.8.5-i18n-misc",
    "Links (2.1pre23; Linux 3.5.0 i686; 237x63)",
    "Mozilla/5.0 (X11; U; Linux i686; en-US; rv:1.9.2.24) Gecko/20111101 SUSE/3.6.24-0.2.1 Firefox/3.6.24",
    "Mozilla/5.0 (SMART-TV; Linux; Tizen 2.3) AppleWebkit/538.1 (KHTML, like Gecko) SamsungBrowser/1.0 TV "
    "Safari/538.1",
    "Bunjalloo/0.7.6(Nintendo DS;U;en)",
    "UCWEB/2.0(BlackBerry; U; 9.105.0.16; en-us; 9720/9.105.0.16) U2/1.0.0 UCBrowser/8.1.0.216 "
    "U2/1.0.0 Mobile",
    "Opera/9.80 (Linux armv7l; InettvBrowser/2.2 (00014A;SonyDTV115;0002;0100) KDL32W603A; CC/RUS) "
    "Presto/2.12.362 Version/12.11",
    "Mozilla/5.0 (Linux; NetCast; U) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/94.0.4606.128 "
    "Safari/537.36 SmartTV/10.0 Colt/2.0",
    "Mozilla/5.0 (Linux; Android 9; Nokia C2 Build/PPR1.180610.011) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.6478.72 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; arm_64; Android 10; Nokia 8 V 5G UW) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/100.0.4896.160 YaApp_Android/22.52.1 YaSearchBrowser/22.52.1 BroPP/1.0 SA/3 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 5.1; HUAWEI CUN-L01 Build/HUAWEICUN-L01; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/50.0.2661.86 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; U; Android 2.3.5; fr-fr; TCL_W939 Build/GRJ90) AppleWebKit/533.1 "
    "(KHTML, like Gecko) Version/4.0 Mobile Safari/533.1",
    "Mozilla/5.0 (Linux; Android 14; ELI-NX9) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 "
    "Mobile Safari/537.36",
]


@pytest.mark.parametrize("agent", MATOMO_CRAWLERS + MONPERRUS_CRAWLERS)
def test_labelled_crawlers_are_crawlers(agent):
    assert is_crawler(agent)


@pytest.mark.parametrize("agent", MATOMO_BROWSERS)
def test_labelled_browsers_are_not(agent):
    assert not is_crawler(agent)


def test_the_second_list_is_what_catches_the_first_ones_misses():
    assert not any(by_crawlerdetect(agent) for agent in MATOMO_CRAWLERS[:8] + MONPERRUS_CRAWLERS)


@pytest.mark.parametrize("agent", ["", "   ", "\t"])
def test_an_empty_agent_is_a_crawler(agent):
    assert is_crawler(agent)


@pytest.mark.parametrize(
    "agent",
    [
        "a" * 200_000,  # crawlerdetect alone: 12 s at 10,000 characters, growing with the square
        "Mozilla/5.0 (X11; Linux x86_64) " + "a b/1.0 (" * 20_000,
        MATOMO_BROWSERS[-1] + " " * 100_000 + "Googlebot/2.1",
    ],
)
def test_a_huge_agent_is_judged_by_its_start_quickly(agent):
    began = time.monotonic()
    verdict = is_crawler(agent)
    assert time.monotonic() - began < 1.0
    assert verdict == is_crawler(agent[:MAX_AGENT])


# The automaton in front of the lists (RE2, look-arounds removed) must never change an answer:
# agents aimed at each look-around the lists hold, and at crawlerdetect's exclusions, which
# can join two parts of an agent into a crawler's name once cut out.
LOOKAROUND_AGENTS = [
    "Yandex",
    "YandexSearch/1.0",
    "Mozilla/5.0 YandexSearch",
    "YaBrowser Yandex/1.0",
    "Dalvik/2.1.0 java;",
    "java/1.8",
    "Java;",
    "JAVA",
    "google",
    "channel/google",
    "Mozilla/5.0 (Linux; wv) google/google",
    "googlewv",
    "google pixel",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) Chrome/126.0 Mobile Safari/537.36 GoogleApp/1",
    "camscan",
    "scan",
    "CamScanner/6.0",
    "libhttp",
    "http",
    "libcurl http/1.1",
    "gnews",
    "news",
    "newssapphire",
    "Xnewssapphire",
    "cu bots",
    "cu bot_",
    "robots",
    "Mozilla/5.0 cubot note",
    "Mozilla/5.0 (Linux; Android 10; CUBOT X30) Chrome/90.0 Mobile Safari/537.36",
    # crawlerdetect's name "Abonti" appears only once its exclusion "Ubuntu" is cut out
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 "
    "Safari/537.36 AboUbuntunti",
    "SafariBotPoke",
    "Mozilla/5.0 BotLinux",
    "crawlUbuntuer",
    "spiLinuxder",
    "GoogLinuxlebot",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Moziłła/5.0 bot",
    "Mozilla/5.0 (\uff27ooglebot)",
    "Mozilla/5.0\x0bbot",
    "\u017fpider",
]
TOKENS = [
    "Mozilla/5.0 ",
    "(compatible; ",
    "Linux",
    "Ubuntu",
    "Safari/537.36",
    " Chrome/126.0",
    "bot",
    "Bot",
    "spider",
    "crawl",
    "Google",
    "google",
    "http://",
    "lib",
    "Yandex",
    "Search",
    "java",
    ";",
    " cu",
    "cam",
    "scan",
    "news",
    "g",
    "sapphire",
    "wv",
    " pixel",
    "/1.0",
    ".com",
    "@",
    " ",
    "_",
    "KHTML,",
    "like Gecko",
    "cubot",
    "; M bot",
    "Build",
    "x86_64",
    "é",
]


def test_the_automaton_is_in_use_with_the_pinned_lists():
    assert crawlers.PREFILTER


@pytest.mark.parametrize("agent", LOOKAROUND_AGENTS + MATOMO_CRAWLERS + MONPERRUS_CRAWLERS + MATOMO_BROWSERS)
def test_the_automaton_never_changes_an_answer(agent):
    assert crawlers._detect.__wrapped__(agent) == by_lists(agent)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=12).map("".join))
def test_the_automaton_never_changes_an_answer_on_pieces_of_names(agent):
    assert crawlers._detect.__wrapped__(agent) == by_lists(agent)


def test_browsers_do_not_reach_the_lists_and_crawlers_do():
    # The point of the automaton: most browsers' agents end there (a few name Google).
    assert sum(not may_be_crawler(agent) for agent in MATOMO_BROWSERS) >= len(MATOMO_BROWSERS) - 2
    assert all(may_be_crawler(agent) for agent in MATOMO_CRAWLERS + MONPERRUS_CRAWLERS)


def test_agents_beyond_printable_ascii_go_to_the_lists():
    assert may_be_crawler("Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0 é")
    assert may_be_crawler("Mozilla/5.0\tFirefox/128.0")


def test_removing_lookarounds_keeps_the_rest():
    assert crawlers.without_lookarounds("(?<! cu)bots?(?:\\b|_)") == "bots?(?:\\b|_)"
    assert crawlers.without_lookarounds("(?<! channel/|google/)google(?!(?:wv|app))") == "google"
    assert crawlers.without_lookarounds("(?:^|[^g])news(?!sapphire)") == "(?:^|[^g])news"
