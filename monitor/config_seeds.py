"""The shipped seed data and what the settings resolve to with it.

seeds/storefronts.toml  every App Store storefront: `[storefronts] us = "United States"`
seeds/charts.toml       the default chart set: the `[charts]` keys a config leaves out
seeds/watchlist.toml    the default watchlist: `[[apps]] store_id = "...", name = "..."`

Chart expansion and watchlist merging live here, outside the pydantic models, because their
problems (an unknown country, an unsupported collection/device pair, a duplicate app) name
values from several keys and files at once.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from monitor.config_sources import Loc, TomlDocument
from monitor.config_types import MailAddress, NonEmptyStr
from monitor.model import ChartKey, Collection, Device, Store, WatchedApp
from monitor.sources.catalog import is_supported

STOREFRONTS_FILE = "storefronts.toml"
CHARTS_FILE = "charts.toml"
WATCHLIST_FILE = "watchlist.toml"
ALL_STOREFRONTS = "all"

_COUNTRY = re.compile(r"^[a-z]{2}$")
_GENRE = re.compile(r"^(all|\d{1,6})$")
_DIGITS = re.compile(r"^\d+$")


def _normalised(value: Any) -> Any:
    return value.strip().lower().replace("-", "_") if isinstance(value, str) else value


def _check(pattern: re.Pattern[str], expected: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"expected {expected}")
        return value

    return AfterValidator(check)


CountryCode = Annotated[
    str, BeforeValidator(_normalised), _check(_COUNTRY, "a two-letter country code such as us")
]
StorefrontCode = Annotated[
    str,
    BeforeValidator(_normalised),
    _check(re.compile(r"^([a-z]{2}|all)$"), 'a two-letter country code such as us, or "all"'),
]
GenreId = Annotated[
    str, BeforeValidator(_normalised), _check(_GENRE, '"all" or a numeric genre id such as "6014"')
]
CollectionName = Annotated[Collection, BeforeValidator(_normalised)]
DeviceName = Annotated[Device, BeforeValidator(_normalised)]
StoreId = Annotated[str, _check(_DIGITS, 'a string of digits such as "6448311069"')]


class WatchlistEntry(BaseModel):
    """One app of the watchlist, as written in seeds/watchlist.toml or `[watchlist] apps`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    store: Store = Store.APPLE
    store_id: StoreId
    name: NonEmptyStr
    bundle_id: NonEmptyStr | None = None
    recipients: list[MailAddress] = []

    def watched_app(self) -> WatchedApp:
        return WatchedApp(
            self.store, self.store_id, self.name, self.bundle_id, tuple(self.recipients)
        )


class ChartSeed(BaseModel):
    """seeds/charts.toml: every key required, so the shipped default set is explicit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    storefronts: list[CountryCode]
    collections: list[CollectionName]
    devices: list[DeviceName]
    genres: list[GenreId]


def _model_problems(document: TomlDocument, prefix: Loc, error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors(include_url=False):
        loc = (*prefix, *item["loc"])
        key = ".".join(str(part) for part in loc)
        message = item["msg"].removeprefix("Value error, ")
        shown = "" if item["type"] == "missing" else f" = {item['input']!r}"
        problems.append(f"{document.where(loc)}: {key}{shown}: {message}")
    return problems


def _unknown_keys(document: TomlDocument, expected: Sequence[str], problems: list[str]) -> bool:
    unknown = [key for key in document.data if key not in expected]
    for key in unknown:
        problems.append(
            f"{document.where((key,))}: unknown key {key!r} (expected: {', '.join(expected)})"
        )
    return not unknown


def load_storefronts(seeds_dir: Path, problems: list[str]) -> dict[str, str]:
    document = TomlDocument.read(seeds_dir / STOREFRONTS_FILE, problems, what="storefront list")
    if document is None or not _unknown_keys(document, ["storefronts"], problems):
        return {}
    table = document.data.get("storefronts")
    if not isinstance(table, dict) or not table:
        problems.append(f'{document.path}: expected a [storefronts] table of code = "name"')
        return {}
    storefronts = {}
    for code, name in table.items():
        if not _COUNTRY.match(code) or not isinstance(name, str) or not name.strip():
            problems.append(
                f"{document.where(('storefronts', code))}: {code} = {name!r}: expected a "
                'lower-case two-letter code and a name, e.g. us = "United States"'
            )
            continue
        storefronts[code] = name
    return storefronts


def load_chart_seed(seeds_dir: Path, problems: list[str]) -> tuple[ChartSeed, TomlDocument] | None:
    document = TomlDocument.read(seeds_dir / CHARTS_FILE, problems, what="default chart set")
    if document is None or not _unknown_keys(document, ["charts"], problems):
        return None
    try:
        return ChartSeed.model_validate(document.data.get("charts", {})), document
    except ValidationError as exc:
        problems.extend(_model_problems(document, ("charts",), exc))
        return None


def load_watchlist_file(path: Path, problems: list[str]) -> list[tuple[WatchlistEntry, str]]:
    """The apps of a watchlist file, each with where it was written (for duplicate reports)."""
    document = TomlDocument.read(path, problems, what="watchlist file")
    if document is None or not _unknown_keys(document, ["apps"], problems):
        return []
    apps = document.data.get("apps", [])
    if not isinstance(apps, list):
        problems.append(f"{document.where(('apps',))}: apps: expected [[apps]] tables")
        return []
    entries = []
    for index, raw in enumerate(apps):
        try:
            entries.append((WatchlistEntry.model_validate(raw), document.where(("apps", index))))
        except ValidationError as exc:
            problems.extend(_model_problems(document, ("apps", index), exc))
    return entries


def merge_watchlist(
    entries: Sequence[tuple[WatchlistEntry, str]], problems: list[str]
) -> list[WatchedApp]:
    first_seen: dict[tuple[Store, str], str] = {}
    apps = []
    for entry, where in entries:
        key = (entry.store, entry.store_id)
        if key in first_seen:
            problems.append(
                f"{where}: app {entry.store}/{entry.store_id} ({entry.name}) is listed twice: "
                f"first at {first_seen[key]}"
            )
            continue
        first_seen[key] = where
        apps.append(entry.watched_app())
    return apps


@dataclasses.dataclass(frozen=True)
class ChartSelection:
    """The effective `[charts]` values, after the seed filled in the keys a config left out."""

    storefronts: Sequence[str]
    collections: Sequence[Collection]
    devices: Sequence[Device]
    genres: Sequence[str]
    extra: Sequence[str]


def expand_charts(
    selection: ChartSelection,
    known_storefronts: Mapping[str, str],
    where: Callable[[Loc], str],
    problems: list[str],
) -> list[ChartKey]:
    """The product storefronts x collections x devices x genres, plus `extra`; sorted, unique.

    `where(loc)` names the source of a value under `[charts]`, e.g. `("extra", 2)`.
    """
    if list(selection.storefronts) == [ALL_STOREFRONTS]:
        countries = sorted(known_storefronts)
    else:
        countries = []
        for code in selection.storefronts:
            if code in known_storefronts:
                countries.append(code)
            else:
                problems.append(
                    f"{where(('storefronts',))}: [charts] storefronts: {code!r} is not a "
                    f"storefront listed in {STOREFRONTS_FILE}"
                )
    charts: set[ChartKey] = set()
    refused: set[tuple[Collection, Device, str]] = set()
    for country, collection, device, genre in itertools.product(
        countries, selection.collections, selection.devices, selection.genres
    ):
        chart = ChartKey(Store.APPLE, country, collection, device, genre)
        if is_supported(chart):
            charts.add(chart)
        elif (collection, device, genre) not in refused:
            refused.add((collection, device, genre))
            sources = ", ".join(f"{key} from {where((key,))}" for key in ("collections", "devices"))
            problems.append(
                f"[charts] collections x devices: {collection} on {device} (genre {genre}) is "
                f"not served by any feed ({sources})"
            )
    for index, slug in enumerate(selection.extra):
        try:
            # "top-free" is how the v2 feed spells it in URLs; accept it too.
            chart = ChartKey.parse(slug.replace("-", "_"))
        except ValueError as exc:
            problems.append(f"{where(('extra', index))}: [charts] extra[{index}] = {slug!r}: {exc}")
            continue
        if chart.country not in known_storefronts:
            problems.append(
                f"{where(('extra', index))}: [charts] extra[{index}] = {slug!r}: "
                f"{chart.country!r} is not a storefront listed in {STOREFRONTS_FILE}"
            )
        elif not is_supported(chart):
            problems.append(
                f"{where(('extra', index))}: [charts] extra[{index}] = {slug!r}: no feed serves "
                f"{chart.collection} on {chart.device}"
            )
        else:
            charts.add(chart)
    if not charts and not problems:
        problems.append("[charts]: the configuration selects no chart at all")
    return sorted(charts)
