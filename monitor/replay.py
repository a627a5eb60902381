"""Importing a folder of recorded feed payloads into history (`app-rank-monitor replay DIR`).

A recorded payload is the body a chart feed served, saved in a file whose path says which
chart, when and from which feed:

    DIR/<chart>/<time>.<source>.json[.gz]

`<chart>` is the chart as folders, as `--chart` takes it: `country/collection[/device[/genre]]`
with an optional `apple/` in front (`us/top_free`, `apple/us/top_free/iphone/all`); `<time>`
is when it was fetched, ISO 8601, UTC unless it has an offset (`20250126T060000Z`,
`2025-01-26T06:00:00`); `<source>` is the feed format, `apple_v2` (Marketing Tools v2) or
`itunes_rss` (legacy iTunes RSS); `.gz` files are gzip-compressed. Other files (a README) are
ignored. A user saving a few payloads by hand for a bug report needs nothing else.

Each payload goes, in time order, through the parser and the storage path of a poll: a claim
on the chart (so the write is fenced against a poller of the same chart) and
`Repository.record_snapshot`, which stores a snapshot, or only confirms the previous one when
the content is the same, and writes nothing new for a payload already imported. A payload
that cannot be read or parsed is reported and skipped; the others are imported.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import hashlib
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from monitor.errors import FeedError, LeaseLost
from monitor.model import ChartKey, ChartSnapshot, PollClaim, SourceName
from monitor.sources.parsers import PARSERS
from monitor.store.repository import Repository

PAYLOAD_SUFFIXES = (".json", ".json.gz")
LAYOUT = "DIR/<country>/<collection>[/<device>[/<genre>]]/<time>.<source>.json[.gz]"
# How often a chart leased by a poller is asked for again while the replay waits for it.
CLAIM_RETRY_SECONDS = 0.2


@dataclasses.dataclass(frozen=True)
class RecordedPayload:
    path: Path
    name: str  # the path relative to DIR, as reported
    chart: ChartKey
    fetched_at: dt.datetime
    source: SourceName


@dataclasses.dataclass(frozen=True)
class ReplayFailure:
    name: str
    error: str
    chart: ChartKey | None = None


@dataclasses.dataclass
class ChartReplay:
    """What the replay did to one chart."""

    chart: ChartKey
    payloads: int = 0
    stored: int = 0  # new snapshots
    unchanged: int = 0  # the content of the snapshot before, or a payload imported already
    failed: int = 0
    first: dt.datetime | None = None
    last: dt.datetime | None = None

    def as_row(self) -> dict[str, object]:
        return {
            "chart": self.chart.slug,
            "payloads": self.payloads,
            "stored": self.stored,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "first": self.first.isoformat() if self.first else None,
            "last": self.last.isoformat() if self.last else None,
        }


@dataclasses.dataclass
class ReplayReport:
    charts: dict[ChartKey, ChartReplay] = dataclasses.field(default_factory=dict)
    failures: list[ReplayFailure] = dataclasses.field(default_factory=list)

    def of(self, chart: ChartKey) -> ChartReplay:
        return self.charts.setdefault(chart, ChartReplay(chart))

    def failed(self, failure: ReplayFailure) -> None:
        self.failures.append(failure)
        if failure.chart is not None:
            self.of(failure.chart).failed += 1


@dataclasses.dataclass(frozen=True)
class ReplaySettings:
    depth: int  # the requested depth stored with each snapshot, as a poll asks for
    max_body_bytes: int  # after decompression, as for a fetched body
    owner: str  # the claims' lease owner
    lease: dt.timedelta


def find_payloads(folder: Path) -> tuple[list[RecordedPayload], list[ReplayFailure]]:
    """The payload files under `folder`, oldest first, and the ones whose path does not say
    their chart, time and source."""
    payloads: list[RecordedPayload] = []
    failures: list[ReplayFailure] = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or not path.name.endswith(PAYLOAD_SUFFIXES):
            continue
        name = path.relative_to(folder).as_posix()
        try:
            payloads.append(_recorded(path, name))
        except ValueError as exc:
            failures.append(ReplayFailure(name, f"{exc} (expected {LAYOUT})"))
    payloads.sort(key=lambda payload: (payload.fetched_at, payload.chart, payload.name))
    return payloads, failures


def _recorded(path: Path, name: str) -> RecordedPayload:
    folders = name.split("/")[:-1]
    if not folders:
        raise ValueError("not in a chart's folder")
    chart = ChartKey.parse("/".join(folders))
    stem = path.name.removesuffix(".gz").removesuffix(".json")
    when, _, source = stem.rpartition(".")
    if source not in SourceName._value2member_map_:
        sources = ", ".join(s.value for s in SourceName)
        raise ValueError(f"{source!r} is not a feed format ({sources})")
    try:
        fetched_at = dt.datetime.fromisoformat(when)
        if fetched_at.tzinfo is None:
            fetched_at = fetched_at.replace(tzinfo=dt.UTC)
        fetched_at = fetched_at.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"{when!r} is not an ISO 8601 time in UTC's range") from None
    return RecordedPayload(path, name, chart, fetched_at, SourceName(source))


def read_body(payload: RecordedPayload, *, max_bytes: int) -> bytes:
    """The payload's bytes, decompressed; OSError (or a subclass) for a file that cannot be
    read, is no gzip, or is larger than `max_bytes`."""
    opener = gzip.open if payload.path.name.endswith(".gz") else open
    try:
        with opener(payload.path, "rb") as file:
            body = file.read(max_bytes + 1)
    except (EOFError, zlib.error) as exc:  # a cut or corrupt gzip stream
        raise OSError(f"not a readable gzip file: {exc}") from None
    if len(body) > max_bytes:
        raise OSError(f"larger than {max_bytes} bytes ([fetch] max_body_bytes)")
    return body


def parse(payload: RecordedPayload, body: bytes, *, depth: int) -> ChartSnapshot:
    """The payload as a poll of its chart at its time would have parsed it."""
    return PARSERS[payload.source](
        body, chart=payload.chart, requested_depth=depth, fetched_at=payload.fetched_at
    )


def replay(
    repository: Repository | None,
    payloads: Sequence[RecordedPayload],
    settings: ReplaySettings,
    *,
    report: ReplayReport,
    clock: Callable[[], dt.datetime],
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> ReplayReport:
    """Import `payloads` in their order into `repository`, or only parse them when it is None
    (a dry run). The charts must be in the schedule already (enabled or not).

    A payload older than where retention folded its chart is not imported: its day is a
    summary already, which a snapshot cannot be added to."""
    horizons: dict[ChartKey, dt.datetime | None] = {}
    for done, payload in enumerate(payloads, start=1):
        chart = report.of(payload.chart)
        chart.payloads += 1
        if repository is not None and payload.chart not in horizons:
            horizons[payload.chart] = repository.folded_before(payload.chart)
        horizon = horizons.get(payload.chart)
        if horizon is not None and payload.fetched_at < horizon:
            why = f"older than {horizon:%Y-%m-%d}, before which retention keeps daily summaries"
            report.failed(ReplayFailure(payload.name, f"not imported: {why}", chart.chart))
            progress(done, len(payloads))
            continue
        try:
            body = read_body(payload, max_bytes=settings.max_body_bytes)
            snapshot = parse(payload, body, depth=settings.depth)
            stored = repository is None or _store(
                repository, payload, body=body, snapshot=snapshot, settings=settings, clock=clock
            )
        except (OSError, FeedError, LeaseLost) as exc:
            report.failed(ReplayFailure(payload.name, f"{type(exc).__name__}: {exc}", chart.chart))
        else:
            chart.first = min(chart.first or payload.fetched_at, payload.fetched_at)
            chart.last = max(chart.last or payload.fetched_at, payload.fetched_at)
            if stored:
                chart.stored += 1
            else:
                chart.unchanged += 1
        progress(done, len(payloads))
    return report


def _store(
    repository: Repository,
    payload: RecordedPayload,
    *,
    body: bytes,
    snapshot: ChartSnapshot,
    settings: ReplaySettings,
    clock: Callable[[], dt.datetime],
) -> bool:
    """Record one parsed payload as a poll would; True when it stored a new snapshot.
    Raises LeaseLost when a poller holds the chart for longer than a lease."""
    claim = _claim(repository, payload.chart, settings, clock)
    if claim is None:
        raise LeaseLost(f"{payload.chart}: leased by a poller for longer than a lease")
    written = repository.record_snapshot(
        claim,
        snapshot,
        content_hash=hashlib.sha256(body).hexdigest(),
        # The chart's own validators stay: they belong to its live feed, not to this payload.
        validators=claim.validators,
        # No fetch log rows: nothing was fetched, and the log is of the service's fetches.
        fetches=(),
        # Due at once: the next poll puts back the live schedule state (last hash and success
        # time) that this payload's replaced. A disabled chart is not polled anyway.
        next_due_at=clock(),
    )
    return written.stored


def _claim(
    repository: Repository,
    chart: ChartKey,
    settings: ReplaySettings,
    clock: Callable[[], dt.datetime],
) -> PollClaim | None:
    """A lease on `chart`, waiting (at most a lease's time) while a poller holds it."""
    deadline = time.monotonic() + settings.lease.total_seconds()
    while True:
        claims = repository.claim_due(
            owner=settings.owner,
            now=clock(),
            lease=settings.lease,
            limit=1,
            charts=[chart],
            include_disabled=True,
        )
        if claims:
            return claims[0]
        if time.monotonic() > deadline:
            return None
        time.sleep(CLAIM_RETRY_SECONDS)
