"""International domain names: shown in Unicode where that is safe, filtered in their ASCII form.

Browsers send an international domain in its ASCII form (`xn--bcher-kva.de`), and Tally stores,
filters and links by it; the dashboard shows it as its owner reads it (`bücher.de`). As
Chromium's address bar does (its IDN display policy, docs/idn.md in Chromium's source), each
label is decided alone, and a label stays as sent when it fails IDNA 2008 decoding (the `idna`
package: validity, bidi and contextual rules, a canonical A-label) or could pass for another
name: a label mixing scripts (Latin with Cyrillic or Greek), in a script no identifier uses,
of Cyrillic letters that all look Latin (`xn--80ak6aa92e.com`, "apple", not under .ru), and
the rest of `_could_deceive`. Chromium's last check, a skeleton compared with the top sites'
(`googlé.com`), needs its list of domains and is not made here. Decoding never raises: a host
no rule reads stays as stored.

>>> shown_host("xn--bcher-kva.de"), shown_host("xn--80ak6aa92e.com"), shown_host("xn--zz.de")
('bücher.de', 'xn--80ak6aa92e.com', 'xn--zz.de')
>>> ascii_host("Bücher.de"), ascii_host("日本。jp")
('xn--bcher-kva.de', 'xn--wgv71a.jp')
"""

from __future__ import annotations

import functools
import re
import unicodedata

import idna
import regex

from tally.sites import MAX_HOST_NAME

ACE_PREFIX = "xn--"
# A domain written in Unicode, as the referrer filter takes one (tally/web/filters.py): labels
# of ASCII letters and digits or any character past ASCII that is no control character or space
# (a pattern cannot say more; IDNA decides the rest), inner hyphens, one dot between labels, a
# final dot allowed. The OpenAPI document gives this same pattern. Each label is runs of such
# characters joined by hyphens, so a long value that fails cannot make the match backtrack.
_LABEL_CHARACTER = (
    r"[^\x00-\x2f\x3a-\x40\x5b-\x60\x7b-\x9f\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
)
_LABEL = f"{_LABEL_CHARACTER}+(?:-+{_LABEL_CHARACTER}+)*"
UNICODE_DOMAIN = re.compile(f"{_LABEL}(?:\\.{_LABEL})*\\.?")

# The characters of no script that a name may hold: European digits and the hyphen.
ASCII_COMMON = frozenset("0123456789-")
# UAX 31's recommended scripts (its table 5), those UTS 39's identifier profile allows: a label
# with a letter of any other script (Cherokee, Runic, Linear B...) stays in punycode. Common
# (digits, the hyphen) and Inherited (combining marks) go with any script.
RECOMMENDED_SCRIPTS = (
    "Common",
    "Inherited",
    "Arabic",
    "Armenian",
    "Bengali",
    "Bopomofo",
    "Cyrillic",
    "Devanagari",
    "Ethiopic",
    "Georgian",
    "Greek",
    "Gujarati",
    "Gurmukhi",
    "Han",
    "Hangul",
    "Hebrew",
    "Hiragana",
    "Kannada",
    "Katakana",
    "Khmer",
    "Lao",
    "Latin",
    "Malayalam",
    "Myanmar",
    "Oriya",
    "Sinhala",
    "Tamil",
    "Telugu",
    "Thaana",
    "Thai",
    "Tibetan",
)
# Script_Extensions (the `regex` module knows them; the standard library knows no scripts): a
# character used in several scripts (U+30FC, the kana length mark) belongs to each.
_IN_SCRIPT = {script: regex.compile(rf"\p{{scx={script}}}") for script in RECOMMENDED_SCRIPTS}
# UTS 39's "Highly Restrictive" level: Han with kana is one writing (Japanese), Han with Bopomofo
# another (Chinese), Han with Hangul a third (Korean); each may take ASCII Latin letters besides.
_WRITINGS = {
    "Han": ("Japanese", "Chinese", "Korean"),
    "Hiragana": ("Japanese",),
    "Katakana": ("Japanese",),
    "Bopomofo": ("Chinese",),
    "Hangul": ("Korean",),
}
_LATIN_WITH = tuple(frozenset({"Latin", writing}) for writing in ("Japanese", "Chinese", "Korean"))
# Chromium's disallowed list: letters and signs that pass the rules above and still deceive
# (Pinyin's caron vowels, Greek Extended, Cyrillic Extended-B and -C, modifier apostrophes, a
# combining long solidus, hyphens and quotes that look like ASCII ones).
_DISALLOWED = re.compile(
    "[\u01cd-\u01dc\u1c80-\u1c8f\u1e90-\u1e9b\u1f00-\u1fff\ua640-\ua69f\ua720-\ua72f"
    "\u0338\u058a\u2010\u2019\u2027\u30a0\u02bb\u02bc]"
)
# IDNA 2003 and 2008 read these four differently (`fuß.de` was `fuss.de`): a label with one is
# shown as sent, as Chromium does, for it may name another host than its reader thinks.
_DEVIATIONS = frozenset("\u00df\u03c2\u200c\u200d")
# Letters that look like Latin ones, per script, and the top-level domains where a label of
# nothing else is the script's own word rather than a disguise (Chromium's whole-script
# confusables): xn--80ak6aa92e.com is Cyrillic throughout and reads as apple.com. Written
# escaped: in a listing they are the Latin letters they stand for.
_LATIN_LOOKALIKES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "Cyrillic": (
        frozenset(
            "\u0430\u044b\u0441\u0501\u0435\u050d\u04bb\u0456\u044e\u0458\u04cf\u043e\u0440\u0517"
            "\u051b\u0455\u051d\u0445\u0443\u044a\u044c\u04bd\u043f\u0433\u0475\u0461"
        ),
        frozenset({"bg", "by", "kz", "pyc", "ru", "su", "ua", "uz"}),
    ),
    "Greek": (frozenset("\u03b1\u03b9\u03ba\u03bd\u03c1\u03c5\u03c9\u03b7\u03bf\u03c4"), frozenset({"gr"})),
    "Armenian": (
        frozenset("\u0561\u0563\u0566\u0567\u056c\u0570\u0575\u0578\u057d\u0582\u0585\u0559"),
        frozenset({"am"}),
    ),
    "Georgian": (frozenset("\u10d8\u10dd\u10e7\u10eb\u10ee\u10fd\u10ff"), frozenset({"ge"})),
    "Hebrew": (frozenset("\u05d3\u05d5\u05d7\u05d9\u05df\u05e1\u05f0\u05f2\u05f3\ufb26"), frozenset({"il"})),
}
# Letters that look like digits: a label of nothing else reads as a number (Cyrillic ze and 2 as 32).
_DIGIT_LOOKALIKES = frozenset(
    "\u03b8\u0968\u09e8\u0a68\u0ae8\u0ce9\u0ced\u0577\u0437\u0499\u04e1\u0909\u0993\u0a24"
    "\u0a69\u0ae9\u0c69\u1012\u10d5\u10de\u0a5c\u0a6b\u4e29\u3110\u0573\u09ea\u0a6a\u0b6b"
    "\u0aed\u0b68\u0c68"
)
# Letters of one language that spoof common ones elsewhere (þ for b or p, ð for o, ə for e),
# with the only top-level domain they are shown under.
_LOCAL_LETTERS = {"\u00fe": "is", "\u00f0": "is", "\u0259": "az"}


def shown_host(host: str) -> str:
    """`host` (a stored referring domain) as its owner reads it: each `xn--` label in Unicode
    when it decodes under IDNA 2008 and could not pass for another name, else as sent.
    Anything else (a search engine's name, an address, a filter's text) is returned as it is.

    >>> shown_host("www.xn--mnchen-3ya.de"), shown_host("xn--pple-43d.com"), shown_host("Google")
    ('www.münchen.de', 'xn--pple-43d.com', 'Google')
    """
    if ACE_PREFIX not in host or len(host) > MAX_HOST_NAME + 1:  # no name is longer: none cached
        return host
    return _shown_domain(host)


@functools.lru_cache(maxsize=4096)  # the panel's ten, on every page of every reader
def _shown_domain(host: str) -> str:
    labels = host.split(".")
    top = labels[-1] or (labels[-2] if len(labels) > 1 else "")
    top_shown = _decoded(top) or top
    return ".".join(_shown_label(label, top, top_shown) for label in labels)


def ascii_host(name: str) -> str:
    """The ASCII form of a domain written in Unicode, mapped as a browser maps what is typed into
    its address bar (UTS 46: case folded, full-width forms and `。` read as what they stand
    for), without a final dot, as stored domains have none. ValueError unless it is a domain
    name under IDNA 2008.

    >>> ascii_host("ＢÜＣＨＥＲ.de.")
    'xn--bcher-kva.de'
    """
    try:
        encoded = idna.encode(name, uts46=True, std3_rules=True)
    except idna.IDNAError as error:  # a UnicodeError: the name's own fault, said in a sentence
        raise ValueError(f"not a domain name: {error}") from None
    return encoded.decode("ascii").rstrip(".")


def international_hint(name: str) -> str:
    """For a host written in Unicode, how to write it: hosts are named as browsers send them, an
    international name in its xn-- form (the dashboard shows it in Unicode); else ""."""
    if name.isascii() or not UNICODE_DOMAIN.fullmatch(name):
        return ""
    try:
        return f" An international name in its xn-- form: {name} is {ascii_host(name)}."
    except ValueError:
        return " An international name in its xn-- form, as browsers send it."


def _shown_label(label: str, top: str, top_shown: str) -> str:
    decoded = _decoded(label)
    if decoded is None or _could_deceive(decoded, top, top_shown):
        return label
    return decoded


def _decoded(label: str) -> str | None:
    """An `xn--` label in Unicode; None for any other label and one that does not decode."""
    if not label.startswith(ACE_PREFIX):
        return None
    try:
        return idna.decode(label)
    except ValueError:  # IDNAError and every UnicodeError of the Punycode codec are ValueErrors
        return None


@functools.lru_cache(maxsize=4096)
def _scripts(character: str) -> frozenset[str]:
    """The recommended scripts `character` is written in; empty for any other."""
    return frozenset(script for script, pattern in _IN_SCRIPT.items() if pattern.match(character))


def _could_deceive(label: str, top: str, top_shown: str) -> bool:
    """Whether a decoded label could pass for another name (or hide part of itself), so that it
    is shown as sent: Chromium's display rules that need no list of domains."""
    if _DEVIATIONS.intersection(label) or _DISALLOWED.search(label):
        return True
    if len(label) > 1 and any(top != only for letter, only in _LOCAL_LETTERS.items() if letter in label):
        return True
    if "\u00b7" in label and (top != "cat" or re.search("(?<!l)\u00b7|\u00b7(?!l)", label)):
        return True  # a middle dot is Catalan's l·l, under .cat only
    scripts: list[frozenset[str]] = []  # each letter's and mark's
    for index, character in enumerate(label):
        found = _scripts(character)
        if not found or (found == {"Common"} and character not in ASCII_COMMON):
            return True  # no identifier's character: a symbol, a letter of a script no name is written in
        if unicodedata.combining(character) and index and label[index - 1] == character:
            return True  # a mark doubled looks like one
        if found not in ({"Common"}, {"Inherited"}):
            scripts.append(found)
    if len(_numbering_systems(label)) > 1 or not _one_writing(scripts, label):
        return True
    if set(label) <= _DIGIT_LOOKALIKES | ASCII_COMMON and _DIGIT_LOOKALIKES.intersection(label):
        return True
    for script, (lookalikes, own_tops) in _LATIN_LOOKALIKES.items():
        letters = {c for c in label if unicodedata.category(c).startswith("L") and script in _scripts(c)}
        if (
            letters
            and letters <= lookalikes
            and top not in own_tops
            and not _is_written_in(top_shown, script)
        ):
            return True
    return False


def _numbering_systems(label: str) -> set[int]:
    """The digits' systems, each named by its zero's code point: European 0-9 with Bengali's
    (`১` reads as 9) is two."""
    return {ord(character) - unicodedata.decimal(character) for character in label if character.isdecimal()}


def _one_writing(scripts: list[frozenset[str]], label: str) -> bool:
    """Whether characters of these scripts (each a character's) make one writing under UTS 39's
    Highly Restrictive level, with Chromium's rule that only ASCII Latin mixes with CJK: `ü` is
    Latin, and `über東京` mixes two."""
    if not scripts:
        return True
    writings = [found.union(*(_WRITINGS.get(script, ()) for script in found)) for found in scripts]
    if functools.reduce(frozenset.intersection, writings):
        return True
    if any(
        not c.isascii() and unicodedata.category(c).startswith("L") and "Latin" in _scripts(c) for c in label
    ):
        return False
    return any(all(found & pair for found in writings) for pair in _LATIN_WITH)


def _is_written_in(name: str, script: str) -> bool:
    return any(script in _scripts(character) for character in name if not character.isascii())
