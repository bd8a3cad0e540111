"""International domain names as the dashboard shows them and as filters take them
(tally/hosts.py): Chromium's display rules, and no input that makes either raise.

Lookalike letters are written escaped: in a listing they are the Latin letters they stand for."""

from __future__ import annotations

import contextlib
import string

import idna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.hosts import ascii_host, shown_host

# Shown in Unicode: one script (or Han with kana, Bopomofo or Hangul, and ASCII Latin beside),
# letters of the recommended scripts, under any top-level domain.
SHOWN = [
    "b\u00fccher.de",
    "www.m\u00fcnchen.de",
    "ma\u00f1ana.com",
    "\u0442\u043e\u043b\u0441\u0442\u043e\u0301\u0439.ru",  # Cyrillic with a combining accent
    "\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444",
    "\u03c0\u03bb\u03ac\u03c4\u03c9\u03bd.gr",
    "\u0645\u062b\u0627\u0644.\u0625\u062e\u062a\u0628\u0627\u0631",  # Arabic, right to left
    "\u5317\u4eac\u5927\u5b78.cn",
    "www.hello\u4e2d\u56fd.com",  # ASCII Latin with Han
    "\u671d\u65e5\u3042\u3055\u3072.jp",  # Han with Hiragana
    "\u4e7e\u71e5\u808c\u30fb\u77f3\u3051\u3093.jp",
    "\uc804\uc790\uc815\ubd80.kr",
    "\u00feorri.is",  # thorn, at home in Iceland
    "l\u00b7l.cat",  # Catalan's ela geminada
    # Cyrillic letters that all look Latin are the script's own word under a Cyrillic domain
    "\u0430\u0440\u0440\u04cf\u0435.ru",
    "\u0430\u0440\u0440\u04cf\u0435.\u0440\u0444",
]
# Kept as sent: each could pass for another name, or is outside what names are written in.
KEPT = {
    "war-and-\u043c\u0438\u0440\u044a.com": "Latin with Cyrillic",
    "\u0430pple.com": "a Cyrillic a among Latin letters",
    "\u03c0\u03bb\u03ac\u03c4\u03c9\u03bdicrelationship.com": "Greek with Latin",
    "\u0430\u0440\u0440\u04cf\u0435.com": "Cyrillic lookalikes of Latin letters only, under .com",
    "\u03bf\u03ba.com": "Greek lookalikes of Latin letters only, under .com",
    "\u00fchello\u4e2d\u56fd.com": "Latin past ASCII with Han",
    "\u13e3\u13b3\u13a9.com": "Cherokee, no recommended script",
    "\ua188\ua320\ua071\ua0b7.com": "Yi, no recommended script",
    "fu\u00df.de": "a deviation: IDNA 2003 made it fuss.de",
    "\u03b2\u03cc\u03bb\u03bf\u03c2.com": "final sigma, a deviation",
    "\u00feorri.com": "thorn, outside Iceland",
    "\u0259li.com": "schwa, outside Azerbaijan",
    "l\u00b7l.com": "a middle dot outside .cat",
    "\u0437\u0968.com": "digits' lookalikes only",
    "e1\u09e7.com": "European and Bengali digits",
    "gruz\u0300\u0300ere.com": "a mark doubled",
    "\u1f00\u03bb\u03c6\u03b1.com": "Greek Extended",
    "ha\u02bbaha.com": "a modifier letter that looks like an apostrophe",
}


@pytest.mark.parametrize("name", SHOWN)
def test_a_name_that_could_pass_for_no_other_is_shown_in_unicode(name):
    sent = idna.encode(name).decode("ascii")
    assert sent != name and shown_host(sent) == name


@pytest.mark.parametrize("name", KEPT)
def test_a_name_that_could_deceive_is_shown_as_sent(name):
    sent = idna.encode(name, uts46=True).decode("ascii")  # a valid name: only the display rules keep it
    assert shown_host(sent) == sent, KEPT[name]


@pytest.mark.parametrize(
    "stored",
    ["xn--zz.de", "xn--", "xn---bbk.com", "xn--ls8h.la", "xn--9999999999999999999.com", "xn--a-.com"],
)
def test_a_label_that_does_not_decode_under_idna_2008_is_shown_as_sent(stored):
    """Bad Punycode, a non-canonical A-label, an emoji (valid in IDNA 2003), a hyphen at the end."""
    assert shown_host(stored) == stored


def test_each_label_is_decided_alone_and_other_values_are_left_as_they_are():
    assert shown_host("xn--bcher-kva.xn--zz") == "b\u00fccher.xn--zz"
    assert shown_host("xn--pple-43d.xn--bcher-kva.de") == "xn--pple-43d.b\u00fccher.de"
    for other in ("Google", "[2001:db8::5]", "127.0.0.1", "example.com", "", "."):
        assert shown_host(other) == other


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.text(string.ascii_lowercase + string.digits + "-", max_size=70), min_size=1, max_size=4))
def test_no_stored_name_makes_the_display_raise(labels):
    shown_host(".".join(f"xn--{label}" for label in labels))


@settings(max_examples=3000, deadline=None)
@given(st.text(min_size=1, max_size=20), st.sampled_from(["com", "ru", "cat", "xn--p1ai", "xn--zz"]))
def test_no_decoded_label_makes_the_display_raise(text, top):
    """Any text at all as an xn-- label, which the display rules then read."""
    try:
        label = "xn--" + text.encode("punycode").decode("ascii")
    except UnicodeError:
        return
    shown_host(f"{label}.{top}")


@settings(max_examples=3000, deadline=None)
@given(st.text(max_size=60))
def test_a_filter_is_a_domain_or_a_value_error_never_another_exception(text):
    with contextlib.suppress(ValueError):
        assert ascii_host(text).isascii()


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("b\u00fccher.de", "xn--bcher-kva.de"),
        ("B\u00dcCHER.DE.", "xn--bcher-kva.de"),  # as an address bar folds case, without the final dot
        ("\uff42\u00fc\uff43\uff48\uff45\uff52.de", "xn--bcher-kva.de"),  # full-width letters
        ("\u65e5\u672c\u3002jp", "xn--wgv71a.jp"),  # the ideographic full stop
    ],
)
def test_a_domain_written_in_unicode_is_filtered_in_its_ascii_form(written, stored):
    assert ascii_host(written) == stored
