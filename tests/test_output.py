"""Rendering rows: aligned tables for people, CSV and JSON that programs read back intact."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import unicodedata
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.output import OutputFormat, display_width, printable, render

COLUMNS = ["rank", "store_id", "name", "developer"]
ROWS = [
    {"rank": 1, "store_id": "6737597349", "name": "DeepSeek - AI Assistant", "developer": "DS"},
    {"rank": 2, "store_id": "6448311069", "name": "ChatGPT", "developer": "OpenAI OpCo, LLC"},
    {"rank": 10, "store_id": "1", "name": "X", "developer": None},
]


def cells(line: str) -> int:
    """Terminal cells a line of printable text takes (the test's own count)."""
    return sum(
        0
        if unicodedata.category(c) in ("Mn", "Me", "Cf")
        else 2
        if unicodedata.east_asian_width(c) in "WF"
        else 1
        for c in line
    )


def column_starts(line: str, values: list[str]) -> list[int]:
    """The terminal cell at which each value starts on the line, searched left to right."""
    starts, position = [], 0
    for value in values:
        index = line.index(value, position)
        starts.append(cells(line[:index]))
        position = index + len(value)
    return starts


# -- table ------------------------------------------------------------------------------------


def test_a_table_has_a_header_a_rule_and_one_aligned_line_per_row() -> None:
    text = render(ROWS, COLUMNS, OutputFormat.TABLE)

    assert text == (
        "rank  store_id    name                     developer\n"
        "----  ----------  -----------------------  ----------------\n"
        "1     6737597349  DeepSeek - AI Assistant  DS\n"
        "2     6448311069  ChatGPT                  OpenAI OpCo, LLC\n"
        "10    1           X\n"
    )


def test_a_table_of_no_rows_is_its_header() -> None:
    assert render([], ["chart", "outcome"], OutputFormat.TABLE) == (
        "chart  outcome\n-----  -------\n"
    )


def test_a_table_shows_missing_values_and_missing_keys_as_blanks() -> None:
    text = render([{"a": None}, {"b": "x"}], ["a", "b"], OutputFormat.TABLE)

    assert text.splitlines()[2:] == ["", "   x"]


def test_a_table_escapes_control_characters_so_every_row_stays_one_line() -> None:
    names = [
        "Line\nbreak",
        "Carriage\rreturn",
        "Tab\there",
        "\x1b[2J\x1b[31mred",  # clear screen, red
        "bell\x07",
        "C1\x85next line",
        "sep\u2028arator",
        "\u202eesrever",  # right-to-left override
        "NUL\x00",
    ]
    rows = [{"rank": i, "name": name} for i, name in enumerate(names, start=1)]

    lines = render(rows, ["rank", "name"], OutputFormat.TABLE).splitlines()

    assert len(lines) == 2 + len(names)
    assert [line.split("  ", 1)[1].strip() for line in lines[2:]] == [
        "Line\\nbreak",
        "Carriage\\rreturn",
        "Tab\\there",
        "\\x1b[2J\\x1b[31mred",
        "bell\\x07",
        "C1\\x85next line",
        "sep\\u2028arator",
        "\\u202eesrever",
        "NUL\\x00",
    ]
    assert all(line.isprintable() for line in lines)


def test_a_table_aligns_columns_by_terminal_cells_for_wide_and_combining_characters() -> None:
    rows = [
        {"name": "原神", "developer": "miHoYo"},  # two wide characters: four cells
        {"name": "\uff30\uff35\uff22\uff27", "developer": "Krafton"},  # full-width PUBG
        {"name": "Poke\u0301mon", "developer": "Niantic"},  # e + combining acute: 7 cells
        {"name": "카카오톡", "developer": "Kakao"},
        {"name": "Plain", "developer": "Someone"},
    ]

    lines = render(rows, ["name", "developer"], OutputFormat.TABLE).splitlines()

    header_start = lines[0].index("developer")
    for line, row in zip(lines[2:], rows, strict=True):
        assert column_starts(line, [row["name"], row["developer"]]) == [0, header_start]
    assert header_start == 8 + 2  # the widest name takes 8 cells, then the gap
    assert len(lines[1].split()[0]) == 8


def test_a_table_keeps_emoji_and_joiners_as_they_are() -> None:
    name = "Family 👨\u200d👩\u200d👧 Game"

    (line,) = render([{"name": name, "n": 1}], ["name", "n"], OutputFormat.TABLE).splitlines()[2:]

    assert line.startswith(name)


@given(
    st.lists(
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
        min_size=1,
        max_size=6,
    )
)
def test_a_table_of_any_names_has_one_line_per_row_and_aligned_columns(names: list[str]) -> None:
    rows = [{"name": name, "after": "|"} for name in names]

    lines = render(rows, ["name", "after"], OutputFormat.TABLE).splitlines()

    assert len(lines) == 2 + len(names)
    starts = {display_width(line[: line.rindex("|")]) for line in lines[2:]}
    assert starts == {lines[0].index("after")}


@pytest.mark.parametrize(
    ("text", "width"),
    [("", 0), ("abc", 3), ("原神", 4), ("e\u0301", 1), ("a\u200db", 2), ("\uff21\uff22", 4)],
)
def test_display_width_counts_terminal_cells(text: str, width: int) -> None:
    assert display_width(text) == width


def test_printable_leaves_printable_text_alone_and_escapes_what_a_terminal_acts_on() -> None:
    assert printable("Pokémon GO 原神 👍") == "Pokémon GO 原神 👍"
    assert printable("a\tb\nc\x1bd\u202ee") == "a\\tb\\nc\\x1bd\\u202ee"


# -- CSV --------------------------------------------------------------------------------------

AWKWARD_NAMES = [
    "Comma, Inc.",
    'The "Quoted" App',
    "Multi\nline",
    "Windows\r\nline",
    "  padded  ",
    "",
    "=HYPERLINK(1)",
    "原神",
]


def test_csv_quotes_commas_quotes_and_newlines_and_reads_back_exactly() -> None:
    rows = [{"rank": i, "name": name} for i, name in enumerate(AWKWARD_NAMES, start=1)]

    text = render(rows, ["rank", "name"], OutputFormat.CSV)

    assert text.startswith("rank,name\r\n")
    assert '"Comma, Inc."' in text
    assert '"The ""Quoted"" App"' in text
    read = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [row["name"] for row in read] == AWKWARD_NAMES
    assert [row["rank"] for row in read] == [str(i) for i in range(1, len(AWKWARD_NAMES) + 1)]


def test_csv_writes_null_as_an_empty_field_and_only_the_columns_asked_for() -> None:
    text = render([{"a": None, "b": 2, "extra": "x"}], ["a", "b"], OutputFormat.CSV)

    assert text == "a,b\r\n,2\r\n"


@given(
    st.lists(
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
        max_size=5,
    )
)
def test_csv_round_trips_any_text(names: list[str]) -> None:
    text = render([{"name": name} for name in names], ["name"], OutputFormat.CSV)

    read = list(csv.reader(io.StringIO(text, newline="")))
    assert read[0] == ["name"]
    assert [row[0] if row else "" for row in read[1:]] == names


# -- JSON -------------------------------------------------------------------------------------


def test_json_is_a_list_of_objects_with_exactly_the_columns_in_order() -> None:
    text = render(ROWS, ["store_id", "rank", "missing"], OutputFormat.JSON)

    document = json.loads(text)
    assert document == [
        {"store_id": row["store_id"], "rank": row["rank"], "missing": None} for row in ROWS
    ]
    assert list(document[0]) == ["store_id", "rank", "missing"]
    assert text.endswith("]\n")


def test_json_round_trips_names_exactly() -> None:
    rows = [{"name": name, "rank": None} for name in [*AWKWARD_NAMES, "\x1b[31m\u202e"]]

    assert json.loads(render(rows, ["name", "rank"], OutputFormat.JSON)) == rows


def test_json_writes_times_in_iso_8601_and_decimals_exactly() -> None:
    at = dt.datetime(2025, 1, 26, 8, 0, tzinfo=dt.UTC)
    rows = [{"at": at, "day": at.date(), "price": Decimal("0.99")}]

    (document,) = json.loads(render(rows, ["at", "day", "price"], OutputFormat.JSON))

    assert document == {"at": "2025-01-26T08:00:00+00:00", "day": "2025-01-26", "price": "0.99"}


def test_times_read_the_same_in_every_format() -> None:
    at = dt.datetime(2025, 1, 26, 8, 0, tzinfo=dt.UTC)
    rows = [{"at": at}]

    assert render(rows, ["at"], OutputFormat.TABLE).splitlines()[2] == at.isoformat()
    assert render(rows, ["at"], OutputFormat.CSV).splitlines()[1] == at.isoformat()
    assert json.loads(render(rows, ["at"], OutputFormat.JSON)) == [{"at": at.isoformat()}]


def test_json_refuses_a_value_it_cannot_represent() -> None:
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        render([{"x": object()}], ["x"], OutputFormat.JSON)
