"""Typed settings, validated once at start-up, every problem reported at once.

Sources, lowest precedence first: built-in defaults, the TOML file given to `load_settings`
(the CLI takes it from --config or MONITOR_CONFIG), then the environment. Every key
`[section] key` can be set by `MONITOR_<SECTION>_<KEY>` or read from the file named by
`MONITOR_<SECTION>_<KEY>_FILE` (Docker secrets); the names are derived from the models below.
List-valued keys take a JSON array or comma-separated values from the environment.

Time values: keys ending in `_seconds` are float seconds; `[poll] interval/tick/lease` are
`datetime.timedelta` (see monitor.config_types). `[charts]` keys left unset are taken from
seeds/charts.toml; `chart_keys()` and `watched_apps()` expand them with the seed files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from pydantic.fields import FieldInfo

from monitor import config_seeds
from monitor.config_alerts import AlertsSettings
from monitor.config_sections import (
    DEFAULT_HTTP_PORT,
    AppleRssSettings,
    ChartsSettings,
    DatabaseSettings,
    FetchSettings,
    HttpSettings,
    ItunesSettings,
    LogSettings,
    PollSettings,
    RetentionSettings,
    SeedsSettings,
    SmtpSettings,
    WatchlistSettings,
    Where,
    relations,
    smtp_relations,
)
from monitor.config_sources import (
    DEFAULT,
    Loc,
    Origin,
    TomlDocument,
    env_name,
    format_key,
    plain,
    read_env,
    suggest,
    validation_problems,
)
from monitor.config_types import Secret, format_duration, parse_duration
from monitor.errors import ConfigError
from monitor.model import ChartKey, WatchedApp

__all__ = [
    "DEFAULT_HTTP_PORT",
    "AppleRssSettings",
    "ChartsSettings",
    "DatabaseSettings",
    "FetchSettings",
    "HttpSettings",
    "ItunesSettings",
    "LogSettings",
    "PollSettings",
    "SeedsSettings",
    "Settings",
    "SmtpSettings",
    "WatchlistSettings",
    "env_names",
    "load_settings",
    "parse_duration",
]


@dataclasses.dataclass(frozen=True)
class _Resolved:
    charts: tuple[ChartKey, ...]
    apps: tuple[WatchedApp, ...]
    selection: config_seeds.ChartSelection
    watchlist_file: Path


class Settings(BaseModel):
    """All settings; sections are frozen models. Build with `load_settings`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    itunes: ItunesSettings = Field(default_factory=ItunesSettings)
    apple_rss: AppleRssSettings = Field(default_factory=AppleRssSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    poll: PollSettings = Field(default_factory=PollSettings)
    charts: ChartsSettings = Field(default_factory=ChartsSettings)
    watchlist: WatchlistSettings = Field(default_factory=WatchlistSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    seeds: SeedsSettings = Field(default_factory=SeedsSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    alerts: AlertsSettings = Field(default_factory=AlertsSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    _resolved: _Resolved | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_relations(self) -> Settings:
        problems = relations(self.fetch, self.poll, _where_in_code)
        problems += smtp_relations(self.smtp, _where_in_code)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def chart_keys(self) -> list[ChartKey]:
        """Every chart to poll: resolved with the seed files, sorted, without duplicates."""
        return list(self._resolve().charts)

    def watched_apps(self) -> list[WatchedApp]:
        """The watchlist file's apps followed by `[watchlist] apps`, in the order written."""
        return list(self._resolve().apps)

    def redacted(self) -> dict[str, Any]:
        """Every key with its effective value, secrets redacted: what check-config prints."""
        resolved = self._resolve()
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            section = getattr(self, name)
            shown[name] = {
                key: _shown(getattr(section, key), field)
                for key, field in type(section).model_fields.items()
            }
        selection = resolved.selection
        storefronts = list(selection.storefronts)
        shown["charts"].update(
            storefronts=config_seeds.ALL_STOREFRONTS if storefronts == ["all"] else storefronts,
            collections=plain(list(selection.collections)),
            devices=plain(list(selection.devices)),
            genres=list(selection.genres),
        )
        shown["watchlist"]["file"] = str(resolved.watchlist_file)
        return shown

    def _resolve(self) -> _Resolved:
        if self._resolved is None:
            problems: list[str] = []
            resolved = _resolve(self.charts, self.watchlist, self.seeds, _where_in_code, problems)
            if resolved is None:
                raise ConfigError(problems)
            self._resolved = resolved
        return self._resolved


def _where_in_code(loc: Loc) -> str:
    return "settings"


def _secret(field: FieldInfo) -> Secret | None:
    return next((item for item in field.metadata if isinstance(item, Secret)), None)


def _shown(value: object, field: FieldInfo) -> object:
    secret = _secret(field)
    if secret is not None and isinstance(value, str):
        return secret.redact(value)
    if secret is not None and isinstance(value, list):
        return [secret.redact(str(item)) for item in value]
    if isinstance(value, dt.timedelta):
        return format_duration(value)
    return plain(value)


def _section_models() -> dict[str, type[BaseModel]]:
    models = {}
    for name, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        models[name] = model
    return models


def _resolve(
    charts: ChartsSettings,
    watchlist: WatchlistSettings,
    seeds: SeedsSettings,
    where: Where,
    problems: list[str],
) -> _Resolved | None:
    """Expand the charts and read the watchlist; None (with `problems` filled) if invalid."""
    found: list[str] = []
    known = config_seeds.load_storefronts(seeds.dir, found)
    selection, where_chart = _chart_selection(charts, seeds.dir, where, found)
    chart_keys: list[ChartKey] = []
    if selection is not None and known:
        chart_keys = config_seeds.expand_charts(selection, known, where_chart, found)
    file = watchlist.file.absolute() if watchlist.file else seeds.dir / config_seeds.WATCHLIST_FILE
    entries = config_seeds.load_watchlist_file(file, found)
    inline = [(app, where(("watchlist", "apps", i))) for i, app in enumerate(watchlist.apps)]
    apps = config_seeds.merge_watchlist([*entries, *inline], found)
    problems.extend(found)
    if found or selection is None:
        return None
    return _Resolved(tuple(chart_keys), tuple(apps), selection, file)


def _chart_selection(
    charts: ChartsSettings, seeds_dir: Path, where: Where, problems: list[str]
) -> tuple[config_seeds.ChartSelection | None, Where]:
    keys = ("storefronts", "collections", "devices", "genres")
    unset = {key for key in keys if getattr(charts, key) is None}
    seed: config_seeds.ChartSeed | None = None
    seed_document: TomlDocument | None = None
    if unset:
        loaded = config_seeds.load_chart_seed(seeds_dir, problems)
        if loaded is None:
            return None, where
        seed, seed_document = loaded

    def where_chart(loc: Loc) -> str:
        if loc[0] in unset and seed_document is not None:
            return seed_document.where(("charts", *loc))
        return where(("charts", *loc))

    def pick(key: str) -> Any:
        value = getattr(charts, key)
        return value if value is not None else getattr(seed, key)

    selection = config_seeds.ChartSelection(
        storefronts=pick("storefronts"),
        collections=pick("collections"),
        devices=pick("devices"),
        genres=pick("genres"),
        extra=charts.extra,
    )
    return selection, where_chart


def _not_a_setting(name: str) -> bool:
    return name == "MONITOR_CONFIG" or name.startswith("MONITOR_TEST_")


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read defaults, the TOML file at `path` and `environ` (default: os.environ).

    Raises ConfigError listing every problem found, each naming the key, where its value came
    from (file:line or variable) and what is expected.
    """
    environ = os.environ if environ is None else environ
    sections = _section_models()
    problems: list[str] = []
    raw: dict[str, dict[str, Any]] = {name: {} for name in sections}
    origins: dict[tuple[str, str], Origin] = {}
    if path is not None:
        document = TomlDocument.read(Path(path), problems)
        if document is not None:
            _take_file(document, sections, raw, origins, problems)
    for (section, key), (value, origin) in read_env(
        environ, sections, problems, allowed=_not_a_setting
    ).items():
        raw[section][key] = value
        origins[(section, key)] = origin

    def where(loc: Loc) -> str:
        key = (str(loc[0]), str(loc[1]) if len(loc) > 1 else "")
        return origins.get(key, DEFAULT).where(loc)

    def redact(loc: Loc, value: object) -> str:
        field = sections[str(loc[0])].model_fields.get(str(loc[1])) if len(loc) > 1 else None
        secret = _secret(field) if field is not None else None
        # Any type: a password mistyped as a TOML number is a secret all the same.
        return repr(secret.redact(str(value)) if secret else value)

    valid: dict[str, BaseModel] = {}
    for name, model in sections.items():
        try:
            valid[name] = model.model_validate(raw[name])
        except ValidationError as exc:
            origin_of = _origin_lookup(origins, name)
            problems.extend(validation_problems(name, exc, origin_of, redact))
    fetch, poll = valid.get("fetch"), valid.get("poll")
    if isinstance(fetch, FetchSettings) and isinstance(poll, PollSettings):
        problems.extend(relations(fetch, poll, where))
    smtp = valid.get("smtp")
    if isinstance(smtp, SmtpSettings):
        problems.extend(smtp_relations(smtp, where))
    charts, watchlist, seeds = valid.get("charts"), valid.get("watchlist"), valid.get("seeds")
    resolved = None
    if (
        isinstance(charts, ChartsSettings)
        and isinstance(watchlist, WatchlistSettings)
        and isinstance(seeds, SeedsSettings)
    ):
        resolved = _resolve(charts, watchlist, seeds, where, problems)
    if problems:
        raise ConfigError(problems)
    settings = Settings.model_validate(valid)
    settings._resolved = resolved
    return settings


def _origin_lookup(
    origins: Mapping[tuple[str, str], Origin], section: str
) -> Callable[[str], Origin]:
    return lambda key: origins.get((section, key), DEFAULT)


def _take_file(
    document: TomlDocument,
    sections: Mapping[str, type[BaseModel]],
    raw: dict[str, dict[str, Any]],
    origins: dict[tuple[str, str], Origin],
    problems: list[str],
) -> None:
    origin = Origin(document=document)
    for name, table in document.data.items():
        if name not in sections:
            hint = suggest(name, sections) or f" (sections: {', '.join(sections)})"
            problems.append(f"{document.where((name,))}: unknown section [{name}]{hint}")
            continue
        if not isinstance(table, dict):
            problems.append(f"{document.where((name,))}: {name} must be a table: [{name}]")
            continue
        fields = sections[name].model_fields
        for key, value in table.items():
            if key not in fields:
                hint = suggest(key, fields) or f" (keys: {', '.join(fields)})"
                problems.append(
                    f"{document.where((name, key))}: {format_key((name, key))}: unknown key{hint}"
                )
                continue
            raw[name][key] = value
            origins[(name, key)] = origin


def env_names() -> dict[str, tuple[str, str]]:
    """Every settings variable and its key: `MONITOR_HTTP_PORT` -> `("http", "port")`."""
    return {
        env_name(section, key): (section, key)
        for section, model in _section_models().items()
        for key in model.model_fields
    }
