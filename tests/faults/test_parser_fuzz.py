"""A fuzz run: 100,000 mutated real Apple payloads through both parsers, on every core.

The hypothesis properties beside the parsers (tests/sources/test_parser_properties.py) search
cleverly with a few hundred examples; this run is the brute-force complement: many cheap,
deterministic mutations of the real payloads (tests/fixtures/feeds/, the same files as
../shared/feeds-samples): bytes flipped, cut, inserted and repeated; keys deleted, renamed,
retyped; values replaced by huge numbers, hostile text, deep nesting. Every payload goes
through both parsers. A parser may return a snapshot the store can take (checked as the
properties do) or raise a FeedError with a one-line message; anything else is a failure,
reported with the case number that regenerates it: `mutated_payload(case)`.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import datetime as dt
import functools
import json
import multiprocessing
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from monitor.errors import FeedError
from monitor.model import SourceName
from monitor.sources.parsers import PARSERS
from tests.sources.test_parser_properties import CHART, KEYS, assert_one_storable_line
from tests.sources.test_parser_properties import assert_storable as assert_snapshot_storable

FEEDS = Path(__file__).resolve().parent.parent / "fixtures" / "feeds"
CASES = 100_000
SEED = "app-rank-monitor parser fuzz 1"
FETCHED_AT = dt.datetime(2026, 8, 7, 10, 0, tzinfo=dt.UTC)
DEPTHS = (1, 3, 10, 100)
# Entries kept of each real payload: mutating a 3-entry chart finds what a 100-entry one does,
# thirty times faster; the whole payloads get a share of the cases too.
TRIMS = (1, 3, 10, None)
SMALL_BYTES = 32_000
WHOLE_SHARE = 0.02

HOSTILE_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1.5, -0.0, 2**63, -(2**64), 10**400, 1e308, float("inf"),
    float("nan"), "", " ", "\x00", "\ud800", "\udfff", "\u202eevil", "\x1b[31mred\x1b[0m",
    "line\nINFO forged", "Evil\r\nBcc: x@y", "<script>alert(1)</script>", "a" * 10_000,
    "\U0001f600" * 50, "-1", "0", "1e5", "9" * 40, "NaN", "null", "https://", "javascript:x",
    "2026-02-30T25:61:00Z", "0000-00-00", "+99999-01-01", [], {}, [[[[[[[[[[[]]]]]]]]]]],
    {"label": None}, {"attributes": {}}, {"attributes": {"im:id": "1"}}, [{"label": "1"}],
)  # fmt: skip
KEY_VOCABULARY = (*KEYS.elements, "", "__proto__", "ID", "entry ")  # type: ignore[attr-defined]


@dataclasses.dataclass(frozen=True)
class Payload:
    name: str
    document: Any  # parsed JSON, never mutated itself
    body: bytes


def _trimmed(document: Any, keep: int | None) -> Any:
    feed = document.get("feed") if isinstance(document, dict) else None
    if keep is None or not isinstance(feed, dict):
        return document
    key = "results" if "results" in feed else "entry"
    if not isinstance(feed.get(key), list):
        return document
    return {**document, "feed": {**feed, key: feed[key][:keep]}}


@functools.cache
def payloads() -> tuple[Payload, ...]:
    found = []
    for path in sorted(FEEDS.glob("*.json")):
        document = json.loads(path.read_bytes())
        for keep in TRIMS:
            trimmed = _trimmed(document, keep)
            found.append(Payload(f"{path.name}[:{keep}]", trimmed, json.dumps(trimmed).encode()))
    return tuple({p.body: p for p in found}.values())  # trims of a short feed coincide


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*path, index))
    return found


def _hostile(rng: random.Random) -> Any:
    # A copy: a later mutation of the document must not change the table (or the next case).
    return copy.deepcopy(rng.choice(HOSTILE_VALUES))


def _retyped(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        return rng.choice([list(value.values()), list(value), json.dumps(value), len(value)])
    if isinstance(value, list):
        return rng.choice([dict(enumerate(value)), value[0] if value else None, json.dumps(value)])
    if isinstance(value, str):
        return rng.choice([int(value) if value.isdigit() else len(value), [value], {value: value}])
    if isinstance(value, bool) or value is None:
        return str(value)
    return rng.choice([str(value), -value, [value], value * 10**30])


def _nested(depth: int, rng: random.Random) -> Any:
    value: Any = _hostile(rng)
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {rng.choice(KEY_VOCABULARY): value}
    return value


def _mutate_json(document: Any, rng: random.Random) -> Any:
    """One structural mutation of `document` (a fresh copy), returning the new root."""
    paths = _paths(document)
    # Half the mutations near the top, so the envelope breaks as often as the entries.
    shallow = [path for path in paths if len(path) <= 3]
    path = rng.choice(shallow if rng.random() < 0.5 else paths)
    if not path:
        return rng.choice([_nested(rng.randrange(1, 60), rng), [document], _retyped(document, rng)])
    *parents, last = path
    container = document
    for key in parents:
        container = container[key]
    action = rng.randrange(8)
    if action == 0:
        del container[last]
    elif action == 1:
        container[last] = _hostile(rng)
    elif action == 2:
        container[last] = _retyped(container[last], rng)
    elif action == 3:
        container[last] = _nested(rng.randrange(1, 40), rng)
    elif action == 4 and isinstance(container, dict):
        container[rng.choice(KEY_VOCABULARY)] = container.pop(last)
    elif action == 4:
        container.insert(last, container[last])  # an entry listed twice
    elif action == 5 and isinstance(container, list) and len(container) > 1:
        other = rng.randrange(len(container))
        container[last], container[other] = container[other], container[last]
    elif action == 6 and isinstance(container[last], dict):
        container[last][rng.choice(KEY_VOCABULARY)] = _hostile(rng)
    else:
        container[last] = [container[last]] if rng.random() < 0.5 else {"label": container[last]}
    return document


def _serialize(document: Any, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return json.dumps(document).encode()
    # Raw UTF-8, lone surrogates written as the invalid bytes a broken server would send.
    return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _mutate_bytes(body: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(body) + 1)
    action = rng.randrange(7)
    if action == 0:
        flipped = bytearray(body)
        for _ in range(rng.randrange(1, 9)):
            index = rng.randrange(len(flipped)) if flipped else None
            if index is not None:
                flipped[index] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    if action == 1:
        return body[:at]
    if action == 2:
        return body[:at] + rng.randbytes(rng.randrange(1, 16)) + body[at:]
    if action == 3:
        end = min(len(body), at + rng.randrange(1, 200))
        return body[:at] + body[end:]
    if action == 4:
        end = min(len(body), at + rng.randrange(1, 200))
        return body[:end] + body[at:]  # a stretch repeated
    if action == 5:
        return rng.choice([b"\xef\xbb\xbf", b"\xff\xfe", b"\x00", b" \n\t", b")]}'\n"]) + body
    return body.decode("utf-8", "replace").encode(rng.choice(["utf-16", "utf-32", "latin-1"]),
                                                   "replace")  # fmt: skip


def mutated_payload(case: int) -> tuple[str, bytes, int]:
    """Case `case` of the run: (the payload it started from, the mutated body, the depth)."""
    rng = random.Random(f"{SEED}:{case}")
    small = [payload for payload in payloads() if len(payload.body) <= SMALL_BYTES]
    whole = [payload for payload in payloads() if len(payload.body) > SMALL_BYTES]
    payload = rng.choice(whole if rng.random() < WHOLE_SHARE else small)
    depth = rng.choice(DEPTHS)
    kind = rng.random()
    if kind < 0.6:  # structure
        document = json.loads(payload.body)
        for _ in range(rng.randrange(1, 5)):
            document = _mutate_json(document, rng)
        body = _serialize(document, rng)
    else:
        body = payload.body
    if kind >= 0.45:  # bytes, after a structural mutation or alone
        for _ in range(rng.randrange(1, 4)):
            body = _mutate_bytes(body, rng)
    return payload.name, body, depth


def check_case(case: int) -> list[str]:
    """The problems case `case` shows in either parser (none: both behaved)."""
    name, body, depth = mutated_payload(case)
    problems = []
    for source, parser in PARSERS.items():
        try:
            snapshot = parser(body, chart=CHART, requested_depth=depth, fetched_at=FETCHED_AT)
            assert_snapshot_storable(snapshot, source, depth)
        except FeedError as exc:
            try:
                assert_one_storable_line(str(exc))
            except AssertionError:
                problems.append(f"case {case} ({name}), {source}: message {str(exc)!r}")
        except Exception as exc:  # the point of the run: anything else is a parser bug
            problems.append(f"case {case} ({name}), {source}: {type(exc).__name__}: {exc!r}"[:500])
    return problems


def check_cases(cases: range) -> list[str]:
    return [problem for case in cases for problem in check_case(case)]


def test_mutations_are_deterministic_and_cover_both_parsers_and_every_payload() -> None:
    assert mutated_payload(12345) == mutated_payload(12345)
    assert mutated_payload(1) != mutated_payload(2)
    started_from = {mutated_payload(case)[0] for case in range(2000)}
    assert started_from == {payload.name for payload in payloads()}
    assert set(PARSERS) == set(SourceName)


@pytest.mark.slow
def test_a_hundred_thousand_mutated_real_payloads_raise_nothing_but_feed_errors() -> None:
    workers = os.cpu_count() or 1
    chunk = 2_000
    chunks = [range(start, min(start + chunk, CASES)) for start in range(0, CASES, chunk)]
    started = time.perf_counter()
    # spawn, not fork: forking a process that runs threads (pytest-timeout, aiosmtpd fixtures
    # of other tests) is unsafe and warns.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        problems = [problem for found in pool.map(check_cases, chunks) for problem in found]
    elapsed = time.perf_counter() - started
    print(
        f"{CASES} mutated payloads x {len(PARSERS)} parsers in {elapsed:.1f} s on {workers} cores"
    )

    assert sum(len(c) for c in chunks) == CASES
    assert not problems, f"{len(problems)} problems, the first ones:\n" + "\n".join(problems[:20])
