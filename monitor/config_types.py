"""Value types of the settings: durations, URLs, secrets, and their human-readable forms.

Naming rule for time values: keys ending in `_seconds` are plain float seconds (what httpx and
sleep take); keys without a unit (`interval`, `tick`, `lease`) are durations, exposed as
`datetime.timedelta` and written as "90s", "15m", "1h", "1d", "1h30m" or whole seconds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_UNITS = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))
_DURATION_HELP = 'expected a duration such as "90s", "15m", "1h", "1d" or a whole number of seconds'


# Far beyond any sensible setting, and far inside what datetime arithmetic takes.
MAX_DURATION = dt.timedelta(days=365 * 1000)


def _seconds(amount: int) -> dt.timedelta:
    if amount > MAX_DURATION.total_seconds():
        raise ValueError(f"a duration must be at most {MAX_DURATION.days}d")
    return dt.timedelta(seconds=amount)


def parse_duration(value: object) -> dt.timedelta:
    if isinstance(value, dt.timedelta):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return _seconds(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text.isascii() and text.isdigit():
            return _seconds(int(text))
        match = _DURATION.match(text)
        if text and match:
            amounts = (int(group or 0) for group in match.groups())
            return _seconds(sum(n * size for n, (_, size) in zip(amounts, _UNITS, strict=True)))
    raise ValueError(_DURATION_HELP)


def format_duration(value: dt.timedelta) -> str:
    """The shortest "1h30m"-style spelling; whole seconds, as the settings are."""
    remaining = int(value.total_seconds())
    parts = []
    for unit, size in _UNITS:
        amount, remaining = divmod(remaining, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"


def at_least(minimum: dt.timedelta) -> AfterValidator:
    def check(value: dt.timedelta) -> dt.timedelta:
        if value < minimum:
            raise ValueError(f"must be at least {format_duration(minimum)}")
        return value

    return AfterValidator(check)


Duration = Annotated[dt.timedelta, BeforeValidator(parse_duration)]
NonEmptyStr = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeSeconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


@dataclasses.dataclass(frozen=True)
class Secret:
    """Field metadata: the value is shown only through `redact`, in output and in errors."""

    redact: Callable[[str], str]


def redact_url_password(url: str) -> str:
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return "***"
    userinfo, at, _ = netloc.rpartition("@")
    if at and ":" in userinfo:
        url = url.replace(f"{userinfo}@", f"{userinfo.split(':', 1)[0]}:***@", 1)
    # libpq also takes the password as a query parameter.
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)


_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
_DATABASE_HELP = (
    "expected sqlite:///relative/path.sqlite3, sqlite:////absolute/path.sqlite3 "
    "or postgresql://user:password@host:5432/dbname"
)


def _database_url(value: str) -> str:
    scheme, separator, rest = value.strip().partition("://")
    scheme = scheme.lower()
    if separator and scheme == "sqlite":
        if rest.removeprefix("/") in ("", ":memory:"):
            raise ValueError(
                f"an in-memory SQLite database would lose the history; {_DATABASE_HELP}"
            )
        if not rest.startswith("/"):
            raise ValueError(_DATABASE_HELP)
        return value.strip()
    if separator and scheme in _POSTGRES_SCHEMES:
        # One driver for the whole service: psycopg 3 (SQLAlchemy's default would be psycopg2).
        return f"postgresql+psycopg://{rest}"
    raise ValueError(_DATABASE_HELP)


def _checked_http_url(value: str) -> str:
    text = value.strip()
    parts = urlsplit(text)
    _ = parts.port  # raises ValueError for a malformed port
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    if any(char.isspace() or not char.isprintable() for char in text):
        raise ValueError("expected an http:// or https:// URL without spaces or control characters")
    return text


def _http_url(value: str) -> str:
    return _checked_http_url(value).rstrip("/")


def _header_safe(value: str) -> str:
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError("must not contain control characters (it is sent as an HTTP header)")
    return value


DatabaseUrl = Annotated[str, AfterValidator(_database_url), Secret(redact_url_password)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
# Posted to exactly as written (a trailing slash may matter); its password is a secret.
WebhookUrl = Annotated[str, AfterValidator(_checked_http_url)]
HeaderValue = Annotated[NonEmptyStr, AfterValidator(_header_safe)]


# An ASCII addr-spec: dot-atom local part, dot-separated host labels. Stricter than RFC 5322
# (no quoted local parts, no address literals) and so safe in an SMTP envelope and a header.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_MAIL_ADDRESS = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*@({DNS_LABEL}(?:\.{DNS_LABEL})*)$")


def is_mail_address(text: str) -> bool:
    """Whether `text` is a plain ASCII address such as ops@example.com (RFC 5321's length cap)."""
    return len(text) <= 254 and _MAIL_ADDRESS.match(text) is not None


def _mail_address(value: str) -> str:
    if not is_mail_address(value):
        raise ValueError("expected a plain ASCII e-mail address such as ops@example.com")
    return value


MailAddress = Annotated[
    str, StringConstraints(strip_whitespace=True), AfterValidator(_mail_address)
]
