"""Rendering rows for the CLI: an aligned table for people, CSV and JSON for programs.

CSV and JSON carry every value as stored. The table is for a terminal, and app names come
from the stores: control characters (a newline, an escape sequence), line separators and
bidirectional overrides are shown escaped (`\\n`, `\\x1b`, `\\u202e`) so that a name can
neither break the rows nor drive the terminal, and columns are padded by display width
(East Asian wide characters take two cells, combining marks none).
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import io
import json
import unicodedata
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any


class OutputFormat(enum.StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


Row = Mapping[str, Any]

# Characters that reorder the text after them on screen (Unicode bidirectional controls).
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_ESCAPED_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})  # C0/C1 controls, line/paragraph separators
_ZERO_WIDTH_CATEGORIES = frozenset({"Mn", "Me", "Cf"})


def render(rows: Sequence[Row], columns: Sequence[str], fmt: OutputFormat) -> str:
    if fmt is OutputFormat.JSON:
        document = [{c: row.get(c) for c in columns} for row in rows]
        return json.dumps(document, indent=2, default=_json_value) + "\n"
    if fmt is OutputFormat.CSV:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: _cell(row.get(c)) for c in columns} for row in rows)
        return buffer.getvalue()
    return _table(rows, columns)


def _json_value(value: object) -> object:
    """What json cannot encode itself: times as ISO 8601, decimals as exact strings."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return str(value)


def printable(text: str) -> str:
    """`text` with the characters a terminal would act on instead of showing escaped."""
    if text.isprintable():
        return text
    return "".join(
        char.encode("unicode_escape").decode("ascii")
        if unicodedata.category(char) in _ESCAPED_CATEGORIES or char in _BIDI_CONTROLS
        else char
        for char in text
    )


def display_width(text: str) -> int:
    """Terminal cells `text` takes: wide and full-width characters two, marks none."""
    return sum(_char_width(char) for char in text)


def _char_width(char: str) -> int:
    if unicodedata.category(char) in _ZERO_WIDTH_CATEGORIES:
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _pad(text: str, width: int) -> str:
    return text + " " * (width - display_width(text))


def _table(rows: Sequence[Row], columns: Sequence[str]) -> str:
    cells = [[printable(_cell(row.get(c))) for c in columns] for row in rows]
    widths = [
        max([display_width(c), *(display_width(line[i]) for line in cells)])
        for i, c in enumerate(columns)
    ]
    lines = [
        "  ".join(_pad(c, w) for c, w in zip(columns, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += [
        "  ".join(_pad(v, w) for v, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]
    return "\n".join(lines) + "\n"
