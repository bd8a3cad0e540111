"""Environment variables, one at a time, parsed into typed values by `EnvReader`.

Each parser names the variable in its error (`ConfigError`), and never prints a value that may
hold a password (a database or SMTP URL). tally/config.py says which variables Tally reads.

    >>> EnvReader({"PORT": "80"}).integer("PORT", 5000, low=1, high=65535)
    80
    >>> try:
    ...     EnvReader({"PORT": "eighty"}).integer("PORT", 5000, low=1, high=65535)
    ... except ConfigError as error:
    ...     print(error)
    PORT='eighty' is invalid: expected a whole number
"""

from __future__ import annotations

import dataclasses
import functools
import re
import urllib.parse
import zoneinfo
from collections.abc import Callable, Mapping
from typing import TypeVar

import psycopg
from croniter import CroniterBadDateError, croniter

from tally.sites import parse_site

T = TypeVar("T")
TIME_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}")
EMAIL_ADDRESS = re.compile(r"[^@\s,;<>=]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")

# A dyno's name as Heroku gives them (web.1, run.7823, worker.2): one word of the log's key=value.
DYNO_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The connection options whose values libpq checks only when it connects (PostgreSQL's docs,
# "Parameter Key Words"): a typo there left every process retrying a connection that could
# never start.
LIBPQ_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
    "load_balance_hosts": ("disable", "random"),
}


def _ascii_domain(name: str) -> str | None:
    """An international domain name in its ASCII form (`bücher.de` -> `xn--bcher-kva.de`), as
    browsers send a site's host and mail servers route; ASCII as it is; None if no domain name."""
    if name.isascii():
        return name
    from tally.hosts import ascii_host  # idna and regex: loaded only for such a name

    try:
        return ascii_host(name)
    except ValueError:
        return None


def site_name(value: str) -> str | None:
    """A site named in the configuration (SITES, REPORT_RECIPIENTS' pairs) as views carry it: a
    host name in lower case, an international one in its ASCII form; None unless it is one."""
    name = _ascii_domain(value)
    return parse_site(name) if name is not None else None


def email_address(value: str) -> str | None:
    """`value` as an address to send to, its domain in ASCII (`josé@bücher.de` ->
    `josé@xn--bcher-kva.de`); None unless it is one."""
    local, at, domain = value.rpartition("@")
    ascii_domain = _ascii_domain(domain)
    if not at or ascii_domain is None:
        return None
    value = f"{local}@{ascii_domain}"
    return value if EMAIL_ADDRESS.fullmatch(value) else None


class ConfigError(ValueError):
    """An environment variable holds a value Tally cannot use."""


@dataclasses.dataclass(frozen=True)
class SmtpServer:
    """Where reports are sent (SMTP_URL): smtp:// tries STARTTLS when offered, smtps:// is TLS."""

    host: str
    port: int
    tls: bool  # smtps://: TLS from the first byte
    user: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)


class EnvReader:
    """Parses one variable at a time and names it in every error."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def _parse(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:  # a byte that is not UTF-8 reaches Python as a lone surrogate, which nothing can send on
            raw.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{name} is invalid: it holds bytes that are not UTF-8 text") from None
        try:
            return parse(raw.strip())
        except ValueError as error:
            raise ConfigError(f"{name}={raw!r} is invalid: {error}") from None

    def text(self, name: str, default: str) -> str:
        return self._parse(name, default, str)

    def name(self, name: str, default: str) -> str:
        """A name that goes into every log line as `dyno=NAME` (DYNO): no spaces or `=`."""

        def parse(raw: str) -> str:
            if not DYNO_NAME.fullmatch(raw):
                raise ValueError("expected letters, digits, '.', '_' or '-' such as web.1")
            return raw

        return self._parse(name, default, parse)

    def optional_text(self, name: str) -> str | None:
        return self._parse(name, None, str)

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        def parse(raw: str) -> int:
            try:
                # int() reads any script's digits (a fullwidth 30 was 30) and underscores (8_080)
                if not raw.isascii() or "_" in raw:
                    raise ValueError
                value = int(raw)
            except ValueError:
                raise ValueError("expected a whole number") from None
            return _in_range(value, low, high)

        return self._parse(name, default, parse)

    def number(self, name: str, default: float, *, low: float, high: float) -> float:
        def parse(raw: str) -> float:
            try:
                if not raw.isascii() or "_" in raw:
                    raise ValueError
                value = float(raw)
            except ValueError:
                raise ValueError("expected a number of seconds") from None
            return _in_range(value, low, high)

        return self._parse(name, default, parse)

    def boolean(self, name: str, default: bool) -> bool:
        def parse(raw: str) -> bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false (or yes/no, on/off, 1/0)")

        return self._parse(name, default, parse)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """One of `choices`, in any case, returned as `choices` writes it (and the error too)."""

        def parse(raw: str) -> str:
            for choice in choices:
                if raw.lower() == choice.lower():
                    return choice
            raise ValueError(f"expected one of {', '.join(choices)}")

        return self._parse(name, default, parse)

    def host_names(self, name: str) -> frozenset[str] | None:
        def parse(raw: str) -> frozenset[str]:
            names = [part.strip() for part in raw.split(",") if part.strip()]
            if not names:  # set, naming nothing: every view refused (unset accepts any site)
                raise ValueError("names no host (e.g. example.com,www.example.com)")
            for part in names:
                if site_name(part) is None:
                    raise ValueError(f"{part!r} is not a host name (e.g. example.com,www.example.com)")
            return frozenset(site_name(part) for part in names)

        return self._parse(name, None, parse)

    def time_zone(self, name: str, default: str) -> str:
        def parse(raw: str) -> str:
            if not is_time_zone(raw):
                spelt = zone_spelt_as(raw)
                hint = f" ({spelt}?)" if spelt else ""
                raise ValueError(f"expected an IANA time zone such as Europe/Paris or America/New_York{hint}")
            return raw

        return self._parse(name, default, parse)

    def smtp_url(self, name: str) -> SmtpServer | None:
        def parse(raw: str) -> SmtpServer:
            parts = urllib.parse.urlsplit(raw)
            if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
                raise ValueError("expected smtp://user:password@host:587 or smtps://user:password@host:465")
            port = parts.port  # .port raises on a bad one
            if port == 0:
                raise ValueError("port 0")
            port = port or (465 if parts.scheme == "smtps" else 587)
            unquote = urllib.parse.unquote
            user = unquote(parts.username) if parts.username else None
            password = unquote(parts.password) if parts.password else None
            return SmtpServer(parts.hostname, port, parts.scheme == "smtps", user, password)

        try:
            return self._parse(name, None, parse)
        except ConfigError:  # never print the password
            raise ConfigError(
                f"{name} is invalid: expected smtp://user:password@host:587 or smtps://user:password@host:465"
            ) from None

    def database_url(self, name: str) -> str | None:
        def parse(raw: str) -> str:
            # What libpq takes: a URL, as Heroku sets it (without a host, postgresql:///tally,
            # libpq's default socket), or a key=value string (host=/tmp dbname=tally).
            try:
                params = psycopg.conninfo.conninfo_to_dict(raw)
            except psycopg.ProgrammingError:
                raise ValueError("expected postgres://user:password@host:5432/dbname") from None
            # libpq checks a port only when it connects; one per host (h1:5432,h2:5433), or none.
            for port in str(params.get("port", "")).split(","):
                if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
                    raise ValueError("expected postgres://user:password@host:5432/dbname")
            return raw

        try:
            url = self._parse(name, None, parse)
        except ConfigError:  # never print the password
            raise ConfigError(
                f"{name} is invalid: expected postgres://user:password@host:5432/dbname"
            ) from None
        if url is not None:  # libpq checks these only when it connects: a web would wait forever
            for option, value in psycopg.conninfo.conninfo_to_dict(url).items():
                choices = LIBPQ_CHOICES.get(option)
                if choices is not None and value not in choices:
                    raise ConfigError(f"{name} is invalid: its {option} must be one of {', '.join(choices)}")
        return url

    def recipients(self, name: str) -> tuple[tuple[str | None, str], ...]:
        def parse(raw: str) -> tuple[tuple[str | None, str], ...]:
            pairs: list[tuple[str | None, str]] = []
            for entry in (part.strip() for part in raw.split(",")):
                if not entry:
                    continue
                site, _, address = entry.rpartition("=")
                if site and site_name(site.strip()) is None:
                    raise ValueError(f"{site.strip()!r} is not a host name (site=address pairs)")
                to = email_address(address.strip())
                if to is None:
                    raise ValueError(f"{address.strip()!r} is not an email address")
                pair = (site_name(site.strip()) if site else None, to)
                if pair not in pairs:
                    pairs.append(pair)
            if not pairs:  # ",,": a list that was meant to name someone, and names nobody
                raise ValueError("it names no address (unset it to send no reports)")
            return tuple(pairs)

        return self._parse(name, (), parse)

    def cron(self, name: str, default: str) -> str:
        def parse(raw: str) -> str:
            # Five fields, or six where the sixth counts seconds (procrastinate's periodic tasks);
            # croniter also takes a seventh (a year, read by procrastinate as something else).
            if len(raw.split()) not in (5, 6) or not croniter.is_valid(raw):
                raise ValueError(
                    "expected a cron expression of 5 fields (a 6th for seconds) such as '0 * * * *'"
                )
            try:  # a date no year has (February 30th) is valid cron, but the clock fails each tick on it
                croniter(raw).get_next()
                croniter(raw).get_prev()
            except CroniterBadDateError:
                raise ValueError("it never runs: that date never comes") from None
            return raw

        return self._parse(name, default, parse)


@functools.cache
def time_zone_names() -> frozenset[str]:
    """The IANA zones (Europe/Paris, UTC) of the zone database Python reads: what TIMEZONE and
    ?tz= accept, and what the OpenAPI document lists. Not paths, POSIX rules, nor `localtime`
    (a system's file of that name, not a zone PostgreSQL knows)."""
    return frozenset(
        name
        for name in zoneinfo.available_timezones()
        if TIME_ZONE_NAME.fullmatch(name) and name != "localtime"
    )


def is_time_zone(name: str) -> bool:
    """Whether `name` is one of time_zone_names()."""
    return name in time_zone_names()


def zone_spelt_as(name: str) -> str | None:
    """The zone `name` names in another case ('europe/paris': 'Europe/Paris'), if one.

    >>> zone_spelt_as("europe/paris"), zone_spelt_as("utc"), zone_spelt_as("Mars/Olympus")
    ('Europe/Paris', 'UTC', None)
    """
    folded = {zone.casefold(): zone for zone in time_zone_names()}
    return folded.get(name.casefold())


def _in_range(value: T, low: T, high: T) -> T:
    if not low <= value <= high:  # type: ignore[operator]
        raise ValueError(f"expected a value from {low} to {high}")
    return value
