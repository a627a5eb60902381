"""Format-agnostic reading of a JSON feed body: decoding, the envelope, and field readers.

Every reader is pure (standard library, `monitor.model` and `monitor.errors` only) and raises
nothing but `FeedFormatError`, whatever the input. Optional readers return None for a value that
is absent or unreadable, never a guess; `required` turns that None into a FeedFormatError naming
the path at fault. Feed text quoted in a message goes through `excerpt`: shortened and escaped.
What the parsers do with what is read here (ranks, gaps, depth) is `monitor.sources.entry_policy`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

from monitor.errors import FeedFormatError
from monitor.model import ChartKey

_BOM = b"\xef\xbb\xbf"
_APP_ID = re.compile(r"[0-9]{1,20}")
_ID_IN_URL = re.compile(r"/id([0-9]{1,20})(?:[/?#]|$)")
_WEB_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f\ud800-\udfff]+", re.IGNORECASE)
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")

_T = TypeVar("_T")
Item = tuple[str, object]
"""A raw entry with the path it was found at (e.g. `feed.entry[3]`), for messages."""


def decode_json(body: bytes) -> object:
    """UTF-8 JSON, with or without a byte-order mark, whatever the Content-Type said."""
    bom = len(_BOM) if body.startswith(_BOM) else 0
    if not body[bom:].strip():
        raise FeedFormatError(f"not JSON: body is empty ({len(body)} bytes)")
    try:
        text = body[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FeedFormatError(
            f"not UTF-8: byte 0x{body[bom + exc.start]:02x} at offset {bom + exc.start}; "
            f"body starts with {_prefix(body)}"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FeedFormatError(
            f"not JSON: body starts with {_prefix(body)} "
            f"({exc.msg} at line {exc.lineno} column {exc.colno}, {len(body)} bytes)"
        ) from None
    except (ValueError, RecursionError) as exc:
        # Valid JSON Python refuses: nesting past the recursion limit, integers over 4300 digits.
        raise FeedFormatError(f"JSON too deep or too large to read: {excerpt(str(exc))}") from None


def feed_object(document: object) -> dict[str, object]:
    """The `feed` object both Apple formats wrap everything in."""
    if not isinstance(document, dict):
        raise FeedFormatError(f"top level: expected an object, got {kind(document)}")
    feed = document.get("feed")
    if feed is None:
        keys = ", ".join(excerpt(key, 20) for key in list(document)[:5])
        raise FeedFormatError(f"feed: missing (top-level keys: {keys or 'none'})")
    if not isinstance(feed, dict):
        raise FeedFormatError(f"feed: expected an object, got {kind(feed)}")
    return feed


def items_at(feed: Mapping[str, object], key: str, *, absent_is_empty: bool) -> list[Item]:
    """The raw entries under `feed[key]`: a list, or a single object for a chart of one."""
    path = f"feed.{key}"
    value = feed.get(key)
    if value is None:
        if absent_is_empty:
            return []
        raise FeedFormatError(f"{path}: missing")
    if isinstance(value, dict):
        return [(path, value)]
    if isinstance(value, list):
        return [(f"{path}[{index}]", item) for index, item in enumerate(value)]
    raise FeedFormatError(f"{path}: expected a list of entries, got {kind(value)}")


def check_storefront(served: str, chart: ChartKey, path: str) -> None:
    """Another country's chart stored under this one would be silently wrong history."""
    if served.strip().lower() != chart.country:
        raise FeedFormatError(
            f"{path}: storefront {excerpt(served, 10)} served for a chart of {chart.country!r}"
        )


def feed_timestamp(
    value: object, path: str, parse: Callable[[str], dt.datetime], notices: list[str]
) -> dt.datetime | None:
    """The feed's own update time in UTC, or None (with a notice) when it cannot be read."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parsed = parse(value)
            if parsed.utcoffset() is not None:
                return parsed.astimezone(dt.UTC)
        except (ValueError, TypeError, IndexError, OverflowError):
            pass
    notices.append(f"{path} unreadable, ignored: {excerpt(value)}")
    return None


def member(value: object, *keys: str) -> object:
    """`value[k1][k2]...`, or None where a step is missing or not an object."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def required(
    read: Callable[[object], _T | None], what: str, item: object, path: str, *keys: str
) -> _T:
    """`read(item[k1][k2]...)`, or a FeedFormatError naming the path and what was wrong."""
    value = item
    for key in keys:
        if not isinstance(value, dict):
            raise FeedFormatError(f"{path}: expected an object, got {kind(value)}")
        path = f"{path}.{key}"
        value = value.get(key)
        if value is None:
            raise FeedFormatError(f"{path}: missing")
    result = read(value)
    if result is None:
        raise FeedFormatError(f"{path}: not {what}: {excerpt(value)}")
    return result


def optional_id(value: object) -> str | None:
    """A numeric store id: a string of digits in the feeds, an integer in the lookup API."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    return value if isinstance(value, str) and _APP_ID.fullmatch(value) else None


def optional_text(value: object) -> str | None:
    """Non-blank text as served, with NUL and unpaired surrogates (unstorable) as U+FFFD."""
    if not isinstance(value, str) or not value.strip():
        return None
    return _UNSTORABLE.sub("\ufffd", value)


def optional_date(value: object) -> dt.date | None:
    """The calendar date the store wrote, not shifted to UTC."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value).date()
    except ValueError:
        return None


def id_in_url(value: object) -> str | None:
    """The numeric id in an App Store URL such as `.../developer/openai-opco-llc/id1684349733`."""
    match = _ID_IN_URL.search(value) if isinstance(value, str) else None
    return match.group(1) if match else None


def web_url(value: object) -> str | None:
    """An http(s) URL, or None: feed text ends up as links in e-mails and the status page."""
    return value if isinstance(value, str) and _WEB_URL.fullmatch(value) else None


def kind(value: object) -> str:
    """The JSON name of a value's type, for messages."""
    names = ((bool, "boolean"), (int | float, "number"), (str, "string"), (list, "array"))
    for types, name in (*names, (dict, "object")):
        if isinstance(value, types):
            return name
    return "null" if value is None else type(value).__name__


def excerpt(value: object, limit: int = 40) -> str:
    """A short, escaped rendering of untrusted feed content for a message."""
    if isinstance(value, dict | list):
        return f"an {kind(value)} of {len(value)} {'items' if isinstance(value, list) else 'keys'}"
    if not isinstance(value, str):
        return "null" if value is None else json.dumps(value)[:limit]
    return repr(value[:limit] + ("…" if len(value) > limit else ""))


def _prefix(body: bytes) -> str:
    return excerpt(body[:60].decode("utf-8", "replace"))
