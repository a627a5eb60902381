"""Properties of every registered parser: whatever the bytes, a valid snapshot or a FeedError.

Inputs are arbitrary bytes, arbitrary JSON built from the keys the formats use, and real
payloads with a few parts deleted, replaced, repeated or wrapped in a list, or with bytes
corrupted. A parse that succeeds must give a snapshot the store can take as it is; a failure's
message must be one storable line.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from monitor.errors import EmptyChart, FeedFormatError
from monitor.model import ChartKey, ChartSnapshot, SourceName
from monitor.sources.apple_v2 import parse_apple_v2
from monitor.sources.itunes_rss import parse_itunes_rss
from monitor.sources.parsers import PARSERS, ChartParser

FEEDS = Path(__file__).resolve().parent.parent / "fixtures" / "feeds"
SAMPLES = {
    SourceName.APPLE_V2: FEEDS / "apple_v2_us_top-free_100_2026-05-26.json",
    SourceName.ITUNES_RSS: FEEDS / "legacy_itunes_us_topfreeapplications_limit5_2026-08-07.json",
}
CHART = ChartKey.parse("us/top_free")
FETCHED_AT = dt.datetime(2026, 8, 7, 10, 0, tzinfo=dt.UTC)
SOURCES = st.sampled_from(sorted(SourceName))
DEPTHS = st.integers(min_value=1, max_value=120)
KEYS = st.sampled_from(
    ["feed", "entry", "results", "id", "attributes", "im:id", "im:name", "label", "name",
     "im:artist", "href", "link", "rel", "category", "im:price", "amount", "currency",
     "im:releaseDate", "releaseDate", "updated", "country", "genres", "genreId", "artistId",
     "url", "im:bundleId"]
)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**25), max_value=10**25)
    | st.floats(allow_nan=True)
    | st.text(max_size=30)
    | st.sampled_from(["6448311069", "\ud83d", "a\x00b", " ", "us", "alternate", "0.00", "USD",
                       "2026-05-26", "2024-09-04T07:15:13-07:00", "Tue, 26 May 2026 01:59:15 -0000",
                       "https://apps.apple.com/us/developer/x/id1"])
)  # fmt: skip
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=40,
)
FEED_PARTS = st.fixed_dictionaries(
    {}, optional=dict.fromkeys(("entry", "results", "updated", "country", "id"), JSON)
)
DOCUMENTS = (
    JSON | st.fixed_dictionaries({"feed": JSON}) | st.fixed_dictionaries({"feed": FEED_PARTS})
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse(source: SourceName, body: bytes, depth: int) -> ChartSnapshot | None:
    """The snapshot, or None for the two feed errors; anything else fails the test."""
    try:
        return PARSERS[source](body, chart=CHART, requested_depth=depth, fetched_at=FETCHED_AT)
    except (FeedFormatError, EmptyChart) as exc:
        assert_one_storable_line(str(exc))
        return None


def assert_one_storable_line(message: str) -> None:
    """Messages go to logs and the fetch log: no forged log lines, nothing UTF-8 cannot encode."""
    assert message
    assert "\n" not in message
    assert "\r" not in message
    assert "\x00" not in message
    message.encode("utf-8")


def check(source: SourceName, body: bytes, depth: int) -> None:
    snapshot = parse(source, body, depth)
    event(f"{source}: {'rejected' if snapshot is None else 'parsed'}")
    if snapshot is not None:
        assert_storable(snapshot, source, depth)


def assert_storable(snapshot: ChartSnapshot, source: SourceName, depth: int) -> None:
    assert snapshot.source is source
    assert snapshot.entries, "a snapshot without entries must have been an EmptyChart"
    ranks = [entry.rank for entry in snapshot.entries]
    assert ranks == sorted(set(ranks))
    assert ranks[0] >= 1
    assert snapshot.served_depth is not None
    assert ranks[-1] <= snapshot.served_depth <= depth
    assert snapshot.visible_depth == snapshot.served_depth
    assert snapshot.is_short == (snapshot.served_depth < depth)
    assert len({entry.store_id for entry in snapshot.entries}) == len(ranks)
    assert (
        snapshot.feed_updated_at is None or snapshot.feed_updated_at.utcoffset() == dt.timedelta()
    )
    for entry in snapshot.entries:
        assert entry.store_id.isascii()
        assert entry.store_id.isdigit()
        assert entry.name.strip()
        texts = [entry.name, entry.developer, entry.genre_name, entry.bundle_id, entry.url]
        for text in filter(None, texts):
            assert "\x00" not in text
            text.encode("utf-8")  # raises on unpaired surrogates
        assert entry.url is None or entry.url.lower().startswith(("https://", "http://"))
    # One notice per gap, plus at most one about depth and one about the feed's update time.
    assert len(snapshot.notices) <= snapshot.served_depth - len(ranks) + 2
    for notice in snapshot.notices:
        assert_one_storable_line(notice)


def test_every_source_has_a_parser_reading_its_own_format() -> None:
    assert set(PARSERS) == set(SourceName)
    for source, path in SAMPLES.items():
        snapshot = parse(source, path.read_bytes(), depth=5)
        assert snapshot is not None
        assert snapshot.source is source


@pytest.mark.parametrize(
    ("parser", "source"),
    [(parse_itunes_rss, SourceName.ITUNES_RSS), (parse_apple_v2, SourceName.APPLE_V2)],
)
def test_parsers_fit_the_registry_signature(parser: ChartParser, source: SourceName) -> None:
    assert PARSERS[source] is parser
    body = SAMPLES[source].read_bytes()
    direct = parser(body, chart=CHART, requested_depth=3, fetched_at=FETCHED_AT)
    assert direct == parse(source, body, depth=3)


@FAST
@given(source=SOURCES, body=st.binary(max_size=200), depth=DEPTHS)
def test_arbitrary_bytes_never_raise_anything_but_a_feed_error(
    source: SourceName, body: bytes, depth: int
) -> None:
    check(source, body, depth)


@FAST
@given(source=SOURCES, document=DOCUMENTS, depth=DEPTHS)
def test_arbitrary_json_never_raises_anything_but_a_feed_error(
    source: SourceName, document: Any, depth: int
) -> None:
    check(source, json.dumps(document).encode(), depth)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict | list):
        children = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in children:
            found += _paths(child, (*path, key))
    return found


MUTATIONS = st.lists(
    st.tuples(st.sampled_from(["delete", "replace", "repeat", "wrap"]), JSON),
    min_size=1,
    max_size=4,
)


@FAST
@given(source=SOURCES, data=st.data(), mutations=MUTATIONS, depth=st.sampled_from([1, 5, 100]))
def test_real_payloads_with_parts_broken_never_raise_anything_but_a_feed_error(
    source: SourceName, data: st.DataObject, mutations: list[tuple[str, Any]], depth: int
) -> None:
    document = json.loads(SAMPLES[source].read_bytes())
    for mutation, replacement in mutations:
        paths = _paths(document)[1:]
        if not paths:
            break
        # Half the draws near the top, so the envelope is broken as often as the entries.
        shallow = [path for path in paths if len(path) <= 3]
        path = data.draw(st.sampled_from(shallow) | st.sampled_from(paths))
        *parents, last = path
        container = document
        for key in parents:
            container = container[key]
        if mutation == "delete":
            del container[last]
        elif mutation == "replace":
            container[last] = replacement
        elif mutation == "repeat" and isinstance(container, list):
            container.insert(last, container[last])
        else:
            container[last] = [container[last]]
    check(source, json.dumps(document).encode(), depth)


@FAST
@given(source=SOURCES, data=st.data(), noise=st.binary(min_size=1, max_size=8))
def test_real_payloads_with_corrupt_bytes_never_raise_anything_but_a_feed_error(
    source: SourceName, data: st.DataObject, noise: bytes
) -> None:
    body = SAMPLES[source].read_bytes()
    at = data.draw(st.integers(min_value=0, max_value=len(body)))
    cut = data.draw(st.booleans())
    corrupted = body[:at] + noise + (b"" if cut else body[at + len(noise) :])
    check(source, corrupted, depth=100)


@FAST
@given(
    source=SOURCES,
    apps=st.lists(st.sampled_from(["11", "22", "33", "44", "55"]), min_size=1, max_size=30),
)
def test_each_app_keeps_the_position_of_its_first_appearance(
    source: SourceName, apps: list[str]
) -> None:
    if source is SourceName.APPLE_V2:
        feed: dict[str, Any] = {"results": [{"id": app, "name": f"app {app}"} for app in apps]}
    else:
        feed = {"entry": [{"id": {"attributes": {"im:id": app}}, "im:name": {"label": app}}
                          for app in apps]}  # fmt: skip
    snapshot = parse(source, json.dumps({"feed": feed}).encode(), depth=len(apps))
    assert snapshot is not None
    expected = {app: apps.index(app) + 1 for app in apps}
    assert {entry.store_id: entry.rank for entry in snapshot.entries} == expected
    assert len(snapshot.notices) == len(apps) - len(expected)
    assert (snapshot.visible_depth, snapshot.is_short) == (len(apps), False)


def _v2_with(**app: Any) -> bytes:
    return json.dumps({"feed": {"results": [{"id": "11", "name": "a", **app}]}}).encode()


# Bodies at the limits of what a JSON reader takes, which generated JSON does not reach.
PATHOLOGICAL = {
    "nested a hundred thousand deep": b"[" * 100_000 + b"]" * 100_000,
    "objects nested deep": b'{"feed":' * 50_000 + b"1" + b"}" * 50_000,
    "an integer of 5000 digits": b'{"feed": {"results": [{"id": ' + b"9" * 5000 + b"}]}}",
    "an id past any float": b'{"feed": {"results": [{"id": 1e400, "name": "a"}]}}',
    "NaN and Infinity": b'{"feed": {"results": [{"id": NaN, "name": Infinity}]}}',
    "a lone surrogate escaped": _v2_with(name="\ud800"),
    "a lone surrogate raw": json.dumps({"feed": {"results": [{"id": "11", "name": "\ud800"}]}},
                                       ensure_ascii=False).encode("utf-8", "surrogatepass"),
    "invalid UTF-8 in a name": _v2_with(name="NAME").replace(b"NAME", b"\xff\xfe\xc0"),
    "a byte order mark": b"\xef\xbb\xbf" + SAMPLES[SourceName.APPLE_V2].read_bytes(),
    "UTF-16": SAMPLES[SourceName.ITUNES_RSS].read_text(encoding="utf-8").encode("utf-16"),
    "a megabyte name": _v2_with(name="x" * 1_000_000),
    "null": b"null",
    "nothing": b"",
    "a JSONP wrapper": b"callback(" + SAMPLES[SourceName.APPLE_V2].read_bytes() + b");",
}  # fmt: skip


@pytest.mark.parametrize("source", sorted(SourceName))
@pytest.mark.parametrize("body", PATHOLOGICAL.values(), ids=PATHOLOGICAL)
def test_pathological_json_is_a_feed_error_or_a_storable_snapshot(
    source: SourceName, body: bytes
) -> None:
    snapshot = parse(source, body, depth=100)
    if snapshot is not None:
        assert_storable(snapshot, source, depth=100)
