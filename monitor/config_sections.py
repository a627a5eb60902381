"""The sections of the settings, one frozen model each, and the checks that span keys.

Field names are the TOML keys and, upper-cased behind `MONITOR_<SECTION>_`, the environment
variables: renaming a field renames both. See monitor.config for how values are loaded.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

import monitor
from monitor import config_seeds
from monitor.config_sources import Loc
from monitor.config_types import (
    DNS_LABEL,
    DatabaseUrl,
    Duration,
    HeaderValue,
    HttpUrl,
    MailAddress,
    NonEmptyStr,
    NonNegativeSeconds,
    PositiveSeconds,
    Secret,
    at_least,
    format_duration,
    is_mail_address,
    redact_url_password,
)
from monitor.model import lease_margin_seconds
from monitor.sources.catalog import MAX_DEPTH

Where = Callable[[Loc], str]

# Not taken in Prometheus' "Default port allocations" list, so a host running exporters
# next to this service can keep every port in its scrape config unique.
DEFAULT_HTTP_PORT = 10127
PROJECT_URL = "https://github.com/app-rank-monitor/app-rank-monitor"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatabaseSettings(_Section):
    # Relative SQLite paths are relative to the working directory of the process.
    url: DatabaseUrl = "sqlite:///app-rank-monitor.sqlite3"

    def __repr_args__(self) -> Iterator[tuple[str, object]]:
        yield "url", redact_url_password(self.url)


def _hide(value: str) -> str:
    return "***"


class HttpSettings(_Section):
    host: NonEmptyStr = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = DEFAULT_HTTP_PORT
    grafana_url: HttpUrl | None = None  # linked from the status page
    # Required by the read API (/api/v1) when set; the API is off without it off loopback.
    api_token: Annotated[NonEmptyStr | None, Secret(_hide)] = None

    @property
    def on_loopback(self) -> bool:
        """Whether only this machine can reach the listener (127.0.0.0/8, ::1, localhost)."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: it may resolve to anything
            return False

    def __repr_args__(self) -> Iterator[tuple[str, object]]:
        for key in type(self).model_fields:
            value = getattr(self, key)
            yield key, (_hide(value) if key == "api_token" and value is not None else value)


class ItunesSettings(_Section):
    base_url: HttpUrl = "https://itunes.apple.com"


class AppleRssSettings(_Section):
    base_url: HttpUrl = "https://rss.marketingtools.apple.com"


def _default_user_agent() -> str:
    return f"app-rank-monitor/{monitor.__version__} (+{PROJECT_URL})"


class FetchSettings(_Section):
    user_agent: HeaderValue = Field(default_factory=_default_user_agent)
    connect_timeout_seconds: PositiveSeconds = 10.0
    read_timeout_seconds: PositiveSeconds = 30.0
    deadline_seconds: PositiveSeconds = 60.0
    max_body_bytes: Annotated[int, Field(ge=1)] = 8 * 1024 * 1024
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 4
    backoff_base_seconds: NonNegativeSeconds = 1.0
    backoff_max_seconds: NonNegativeSeconds = 30.0
    retry_after_max_seconds: NonNegativeSeconds = 900.0
    max_host_wait_seconds: NonNegativeSeconds = 120.0
    # Per feed host; 0 disables the budget.
    requests_per_minute: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 20.0
    concurrency: Annotated[int, Field(ge=1, le=64)] = 4

    def worst_case_fetch_seconds(self) -> float:
        """Longest one chart's fetch can take: every attempt to its deadline, plus the longest
        full-jitter backoff sleeps between attempts (min(max, base * 2**n) each)."""
        sleeps = sum(
            min(self.backoff_max_seconds, self.backoff_base_seconds * 2.0**n)
            for n in range(self.max_attempts - 1)
        )
        return self.max_attempts * self.deadline_seconds + sleeps


class PollSettings(_Section):
    # Apple's charts change about hourly; short intervals are for mirrors and tests, and the
    # per-host request budget still caps what reaches the store.
    interval: Annotated[Duration, at_least(dt.timedelta(seconds=1))] = dt.timedelta(hours=1)
    tick: Annotated[Duration, at_least(dt.timedelta(seconds=1))] = dt.timedelta(seconds=5)
    lease: Annotated[Duration, at_least(dt.timedelta(seconds=1))] = dt.timedelta(minutes=5)
    depth: Annotated[int, Field(ge=1, le=MAX_DEPTH)] = MAX_DEPTH
    prefer_v2: bool = True


def _all_storefronts(value: Any) -> Any:
    return [value] if value == config_seeds.ALL_STOREFRONTS else value


def _all_alone(value: list[str] | None) -> list[str] | None:
    if value and config_seeds.ALL_STOREFRONTS in value and len(value) > 1:
        raise ValueError('"all" cannot be combined with country codes')
    return value


class ChartsSettings(_Section):
    """Unset keys (None) come from seeds/charts.toml; storefronts ["all"] means every one."""

    storefronts: Annotated[
        list[config_seeds.StorefrontCode] | None,
        BeforeValidator(_all_storefronts),
        AfterValidator(_all_alone),
    ] = None
    collections: list[config_seeds.CollectionName] | None = None
    devices: list[config_seeds.DeviceName] | None = None
    genres: list[config_seeds.GenreId] | None = None
    extra: list[NonEmptyStr] = []  # chart slugs, checked when the charts are expanded


class WatchlistSettings(_Section):
    file: Path | None = None  # None: <seeds dir>/watchlist.toml
    apps: list[config_seeds.WatchlistEntry] = []


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


class RetentionSettings(_Section):
    # A year and a month of every poll: a year-over-year comparison still has them all.
    snapshot_days: Annotated[int, Field(ge=1, le=36_500)] = 400
    fetch_log_days: Annotated[int, Field(ge=1, le=36_500)] = 30
    enabled: bool = True
    # The UTC hour from which the day's run may start (a quiet hour for the database).
    hour: Annotated[int, Field(ge=0, le=23)] = 3


class LogSettings(_Section):
    format: Annotated[Literal["text", "json"], BeforeValidator(_lower)] = "text"
    level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)] = "INFO"


def _source_tree_seeds() -> Path:
    return Path(monitor.__file__).resolve().parent.parent / "seeds"


def _existing_dir(value: Path) -> Path:
    if not value.is_dir():
        raise ValueError("expected an existing directory holding the seed files")
    return value.absolute()


class SeedsSettings(_Section):
    # Checked even when defaulted: an installed wheel has no source tree next to the package.
    dir: Annotated[Path, AfterValidator(_existing_dir)] = Field(
        default_factory=_source_tree_seeds, validate_default=True
    )


_DOMAIN = re.compile(rf"^{DNS_LABEL}(?:\.{DNS_LABEL})*$")
DEFAULT_FROM_ADDRESS = "app-rank-monitor@localhost"


def _domain(value: str) -> str:
    if _DOMAIN.match(value) is None:
        raise ValueError("expected an ASCII domain name such as example.com")
    return value.lower()


Domain = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(_domain)]


class SmtpSettings(_Section):
    """The mail server alert emails go through (see monitor.alerts.email)."""

    host: NonEmptyStr = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 25
    # "tls" is implicit TLS from the first byte (port 465); "starttls" upgrades a plain
    # connection (port 587) and refuses a server that does not offer it.
    security: Annotated[Literal["none", "starttls", "tls"], BeforeValidator(_lower)] = "none"
    username: NonEmptyStr | None = None
    password: Annotated[str | None, Secret(_hide)] = None
    from_address: MailAddress = DEFAULT_FROM_ADDRESS
    # Applies to the connection and to each command, not to a whole delivery.
    timeout_seconds: PositiveSeconds = 30.0
    # Replaced by from_address's domain when not set: see _derive_message_id_domain.
    message_id_domain: Domain = "localhost"

    @model_validator(mode="before")
    @classmethod
    def _derive_message_id_domain(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("message_id_domain") is not None:
            return data
        address = data.get("from_address", DEFAULT_FROM_ADDRESS)
        if not isinstance(address, str) or not is_mail_address(address.strip()):
            return data  # from_address is reported; its domain cannot be taken
        return {**data, "message_id_domain": address.strip().rpartition("@")[2]}

    def __repr_args__(self) -> Iterator[tuple[str, object]]:
        for key in type(self).model_fields:
            value = getattr(self, key)
            yield key, (_hide(value) if key == "password" and value is not None else value)


def smtp_relations(smtp: SmtpSettings, where: Where) -> list[str]:
    """Checks between the [smtp] keys: login needs both a username and a password."""
    if (smtp.username is None) == (smtp.password is None):
        return []
    given, missing = ("username", "password") if smtp.password is None else ("password", "username")
    return [
        f"{where(('smtp', given))}: [smtp] {given} is set without {missing}: SMTP login needs "
        f"both username and password (set [smtp] {missing}, or unset {given})"
    ]


def relations(fetch: FetchSettings, poll: PollSettings, where: Where) -> list[str]:
    """Checks that span keys: each problem names every key involved and where it was set."""
    problems = []
    if fetch.backoff_base_seconds > fetch.backoff_max_seconds:
        problems.append(
            f"{where(('fetch', 'backoff_base_seconds'))}: [fetch] backoff_base_seconds = "
            f"{fetch.backoff_base_seconds:g}: must not exceed backoff_max_seconds = "
            f"{fetch.backoff_max_seconds:g} ({where(('fetch', 'backoff_max_seconds'))})"
        )
    for key in ("connect_timeout_seconds", "read_timeout_seconds"):
        if getattr(fetch, key) > fetch.deadline_seconds:
            problems.append(
                f"{where(('fetch', key))}: [fetch] {key} = {getattr(fetch, key):g}: must not "
                f"exceed deadline_seconds = {fetch.deadline_seconds:g} "
                f"({where(('fetch', 'deadline_seconds'))}), or it could never fire"
            )
    if poll.tick >= poll.interval:
        problems.append(
            f"{where(('poll', 'tick'))}: [poll] tick = {format_duration(poll.tick)}: must be "
            f"shorter than interval = {format_duration(poll.interval)} "
            f"({where(('poll', 'interval'))})"
        )
    worst = fetch.worst_case_fetch_seconds()
    margin = lease_margin_seconds(poll.lease)
    if poll.lease.total_seconds() - margin <= worst:
        # A lease that runs out mid-fetch hands the chart to another worker: the fetch is
        # done twice and the first result is thrown away by the fencing token. (Fetching
        # stops `margin` before the lease ends, so it would be cut short even earlier.)
        problems.append(
            f"{where(('poll', 'lease'))}: [poll] lease = {format_duration(poll.lease)}: must "
            f"exceed the longest fetch of one chart, {worst:g}s = max_attempts "
            f"({where(('fetch', 'max_attempts'))}) x deadline_seconds "
            f"({where(('fetch', 'deadline_seconds'))}) + the backoff sleeps between attempts, "
            f"by the {margin:g}s kept to record the outcome"
        )
    return problems
