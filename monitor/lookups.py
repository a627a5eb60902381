"""What a user typed, resolved to what the store holds: times, apps, watchlist apps.

Shared by the command line and the read API, so both accept the same input and say the same
thing about input they cannot use. Problems are raised as LookupFailed (a ValueError) with a
message for people; the caller turns it into a usage error or an HTTP 4xx.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from monitor.config import parse_duration
from monitor.model import Store
from monitor.output import printable
from monitor.store.repository import AppInfo, Repository

APP_CANDIDATES_SHOWN = 10
_APP_MATCHES_COUNTED = 50


class LookupFailed(ValueError):
    """`found_nothing`: nothing matched (rather than too much, or an unusable value)."""

    def __init__(self, message: str, *, found_nothing: bool = False) -> None:
        super().__init__(message)
        self.found_nothing = found_nothing


def parse_time(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """ISO date or datetime (UTC when no offset), or a duration ago such as `24h` or `7d`.

    ISO is tried first: `20250126` is a date, not twenty million seconds ago.
    """
    try:
        parsed = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        pass
    else:
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=dt.UTC)
        try:
            return parsed.astimezone(dt.UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 is in the year 0 in UTC
            raise LookupFailed(f"{text!r} is out of range in UTC") from None
    try:
        return (now or dt.datetime.now(dt.UTC)) - parse_duration(text)
    except OverflowError:
        raise LookupFailed(f"{text!r} ago is before the year 1") from None
    except ValueError as exc:
        if str(exc).startswith("a duration must be"):  # a duration, too long
            raise LookupFailed(f"{text!r}: {exc}") from None
        raise LookupFailed(
            f"{text!r} is neither an ISO date/time nor a duration like 24h or 7d"
        ) from None


def one_app(repository: Repository, ref: str) -> AppInfo:
    """The one stored app `ref` names: by store id or bundle id, else by (part of) its name."""
    matches = repository.find_apps(ref, limit=_APP_MATCHES_COUNTED + 1)
    wanted = ref.strip()
    exact = [
        a
        for a in matches
        if wanted in (a.store_id, a.bundle_id) or a.name.casefold() == wanted.casefold()
    ]
    if len(exact) == 1:
        return exact[0]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LookupFailed(
            f"no stored app matches {ref!r} (by store id, bundle id or name)", found_nothing=True
        )
    shown = matches[:APP_CANDIDATES_SHOWN]
    lines = [f"  {a.store_id}  {printable(a.name)}" for a in shown]
    if len(matches) > _APP_MATCHES_COUNTED:
        count = f"more than {_APP_MATCHES_COUNTED}"
        lines.append("  ...")
    else:
        count = str(len(matches))
        if len(matches) > len(shown):
            lines.append(f"  ... and {len(matches) - len(shown)} more")
    listed = "\n".join(lines)
    raise LookupFailed(f"{count} apps match {ref!r}; use the store id:\n{listed}")


def watchlist_apps(ref: str, names: Mapping[tuple[Store, str], str]) -> list[tuple[Store, str]]:
    """The watchlist apps `ref` names, by watchlist name (any case) or store id."""
    wanted = ref.strip()
    apps = [
        key
        for key, name in names.items()
        if name.casefold() == wanted.casefold() or key[1] == wanted
    ]
    if not apps:
        known = ", ".join(sorted(names.values())) or "it is empty"
        raise LookupFailed(
            f"{ref!r} is neither the name nor the store id of a watchlist app ({known})",
            found_nothing=True,
        )
    return apps
