"""Regenerate the RECONSTRUCTED DeepSeek scenario payloads in this folder (see README.md).

    python seeds/scenarios/deepseek-2025-01/generate.py

Deterministic: the same inputs give byte-identical files (fixed random seeds, gzip without a
timestamp). Inputs are the real Apple payloads in tests/fixtures/feeds/ (the apps that fill
the charts, with their names, ids, developers and artwork as Apple served them) and the
keyframes below (the watchlist apps' ranks: reported ones marked REPORTED, the rest filled in).
Standard library only, so it runs without the project installed.
"""

from __future__ import annotations

import copy
import datetime as dt
import email.utils
import gzip
import itertools
import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parents[2] / "tests" / "fixtures" / "feeds"
US_SAMPLE = FIXTURES / "apple_v2_us_top-free_100_2026-05-26.json"
HK_SAMPLE = FIXTURES / "legacy_itunes_hk_topfreeapplications_limit100_2024-09-04.json"

START = dt.datetime(2025, 1, 20, tzinfo=dt.UTC)
END = dt.datetime(2025, 2, 1, tzinfo=dt.UTC)  # exclusive: 20-31 January
# storefront -> (hours between snapshots, entries). The US is the story's chart: every 3 hours,
# 100 deep; the others every 6 hours, 50 deep, to keep the folder small.
STOREFRONTS = {"us": (3, 100), "gb": (6, 50), "de": (6, 50), "jp": (6, 50), "in": (6, 50)}
# US charts at 03:00 UTC repeat the 00:00 chart byte for byte (filled in): a recording of an
# unchanged chart, which history keeps as a confirmation, not a new snapshot.
US_REPEATED_HOUR = 3

DEEPSEEK = "6737597349"
CHATGPT = "6448311069"

# Apps the samples lack: metadata as on their public App Store pages; no artwork URL (the
# parsers do not read it, and none was recorded).
EXTRA_APPS = {
    DEEPSEEK: ("DeepSeek - AI Assistant", "DeepSeek", "2025-01-10", "deepseek-ai-assistant"),
    "6472538445": ("Microsoft Copilot", "Microsoft Corporation", "2023-12-26", "microsoft-copilot"),
    "1668000334": (
        "Perplexity - Ask Anything",
        "Perplexity AI, Inc.",
        "2023-03-27",
        "perplexity-ask-anything",
    ),
}
# Global apps of the Hong Kong sample (2024-09-04) added to the US sample's to fill 100 places.
HK_GLOBAL_APPS = {
    "983156458", "1113153706", "951937596", "924620788", "1640745955", "414478124",
    "1386412985", "541164041", "288429040", "546505307", "1161387262", "443904275",
}  # fmt: skip
NOT_YET_RELEASED_AFTER = "2025-01-10"
# ByteDance's TikTok and CapCut were out of the US App Store from 19 January 2025 (and have
# been banned in India since 2020): they are left out of those charts.
UNAVAILABLE = {"us": {"835599320", "1500855883"}, "in": {"835599320", "1500855883"}}

Keyframes = list[tuple[str, int | None]]  # ("2025-01-24T12", rank) or None: below the depth

# DeepSeek: REPORTED about #31 in the US on 24 Jan, #1 on Sun 26 Jan passing ChatGPT, #1 in
# 51 other countries by 27 Jan. How it got from one point to the next is filled in.
SCRIPT: dict[str, dict[str, Keyframes]] = {
    "us": {
        DEEPSEEK: [("2025-01-22T21", None), ("2025-01-23T00", 97),
                   ("2025-01-24T12", 31),  # REPORTED: about #31 on 24 Jan
                   ("2025-01-25T00", 16), ("2025-01-25T12", 6), ("2025-01-26T00", 2),
                   ("2025-01-26T06", 1),  # REPORTED: #1 on 26 Jan, passing ChatGPT
                   ("2025-01-31T21", 1)],
        CHATGPT: [("2025-01-20T00", 4), ("2025-01-22T12", 2), ("2025-01-24T00", 1),
                  ("2025-01-26T03", 1), ("2025-01-26T06", 2), ("2025-01-31T21", 2)],
        "6477489729": [("2025-01-20T00", 48), ("2025-01-26T00", 41), ("2025-01-31T21", 44)],
        "6670324846": [("2025-01-20T00", 36), ("2025-01-25T00", 28), ("2025-01-31T21", 39)],
        "1558240027": [("2025-01-20T00", 66), ("2025-01-31T21", 72)],
        "6472538445": [("2025-01-20T00", 83), ("2025-01-27T00", 71), ("2025-01-31T21", 88)],
        "1668000334": [("2025-01-20T00", 104), ("2025-01-27T00", 84), ("2025-01-31T21", 93)],
        "6473753684": [("2025-01-20T00", 112), ("2025-01-28T00", 96), ("2025-01-31T21", 108)],
    },
    "in": {
        DEEPSEEK: [("2025-01-24T06", None), ("2025-01-24T12", 88), ("2025-01-25T12", 22),
                   ("2025-01-26T06", 3),
                   ("2025-01-26T12", 1),  # REPORTED: #1 in 51 other countries by 27 Jan
                   ("2025-01-31T18", 1)],
        CHATGPT: [("2025-01-20T00", 3), ("2025-01-26T06", 1), ("2025-01-26T12", 2),
                  ("2025-01-31T18", 2)],
        "6477489729": [("2025-01-20T00", 12), ("2025-01-31T18", 15)],
    },
    "gb": {
        DEEPSEEK: [("2025-01-24T06", None), ("2025-01-24T12", 93), ("2025-01-25T12", 24),
                   ("2025-01-26T12", 3), ("2025-01-27T00", 1), ("2025-01-31T18", 1)],
        CHATGPT: [("2025-01-20T00", 2), ("2025-01-26T18", 1), ("2025-01-27T00", 2),
                  ("2025-01-31T18", 2)],
        "6477489729": [("2025-01-20T00", 57), ("2025-01-31T18", 52)],
    },
    "de": {
        DEEPSEEK: [("2025-01-24T12", None), ("2025-01-24T18", 95), ("2025-01-25T18", 27),
                   ("2025-01-26T18", 2), ("2025-01-27T06", 1), ("2025-01-31T18", 1)],
        CHATGPT: [("2025-01-20T00", 2), ("2025-01-27T00", 1), ("2025-01-27T06", 2),
                  ("2025-01-31T18", 2)],
    },
    "jp": {
        DEEPSEEK: [("2025-01-24T18", None), ("2025-01-25T00", 96), ("2025-01-26T00", 30),
                   ("2025-01-27T00", 4), ("2025-01-27T12", 1), ("2025-01-31T18", 1)],
        CHATGPT: [("2025-01-20T00", 5), ("2025-01-27T06", 2), ("2025-01-27T12", 3),
                  ("2025-01-31T18", 3)],
    },
}  # fmt: skip


def main() -> None:
    apps = _apps()
    for country, (hours, depth) in STOREFRONTS.items():
        left_out = set(SCRIPT[country]) | {DEEPSEEK} | UNAVAILABLE.get(country, set())
        fillers = [app for app in apps.values() if app["id"] not in left_out]
        folder = HERE / country
        shutil.rmtree(folder, ignore_errors=True)
        chart_folder = folder / "top_free" / "iphone" / "all"
        chart_folder.mkdir(parents=True)
        rng = random.Random(f"deepseek-2025-01/{country}")  # noqa: S311 (reproducible, not secret)
        drift = {app["id"]: _Drift(rng, base) for base, app in enumerate(fillers)}
        at = START
        while at < END:
            chart_time = at
            if country == "us" and at.hour == US_REPEATED_HOUR:
                chart_time = at.replace(hour=0)
            ranking = _ranking(country, chart_time, apps, drift, depth)
            body = _payload(country, chart_time, ranking)
            name = f"{at.strftime('%Y%m%dT%H%M%SZ')}.apple_v2.json.gz"
            (chart_folder / name).write_bytes(gzip.compress(body, compresslevel=9, mtime=0))
            at += dt.timedelta(hours=hours)


class _Drift:
    """A filler app's slow, deterministic wander around its place in the sample."""

    def __init__(self, rng: random.Random, base: int) -> None:
        self.base = base + rng.uniform(-6, 6)
        self.amplitude = rng.uniform(1, 8)
        self.period_hours = rng.uniform(48, 240)
        self.phase = rng.uniform(0, 2 * math.pi)

    def score(self, at: dt.datetime) -> float:
        hours = (at - START).total_seconds() / 3600
        return self.base + self.amplitude * math.sin(
            2 * math.pi * hours / self.period_hours + self.phase
        )


def _ranking(
    country: str,
    at: dt.datetime,
    apps: dict[str, dict[str, Any]],
    drift: dict[str, _Drift],
    depth: int,
) -> list[dict[str, Any]]:
    places: dict[int, str] = {}
    wanted = [
        (rank, store_id)
        for store_id, keyframes in SCRIPT.get(country, {}).items()
        if (rank := _rank_at(keyframes, at)) is not None and rank <= depth
    ]
    for rank, store_id in sorted(wanted):
        place = rank
        while place in places:  # two scripted apps on one place: the later one yields
            place += 1
        places[place] = store_id
    fillers = iter(sorted(drift, key=lambda store_id: (drift[store_id].score(at), store_id)))
    ranking = []
    for rank in range(1, depth + 1):
        store_id = places.get(rank) or next(fillers)
        ranking.append(apps[store_id])
    return ranking


def _rank_at(keyframes: Keyframes, at: dt.datetime) -> int | None:
    """Linear between keyframes; None (below the depth) before a None keyframe is left."""
    points = [(dt.datetime.fromisoformat(t + ":00+00:00"), rank) for t, rank in keyframes]
    if at < points[0][0]:
        return points[0][1]
    for (t0, r0), (t1, r1) in itertools.pairwise(points):
        if t0 <= at <= t1:
            if r0 is None:
                return None if at < t1 else r1
            assert r1 is not None
            share = (at - t0) / (t1 - t0)
            return round(r0 + (r1 - r0) * share)
    return points[-1][1]


def _payload(country: str, at: dt.datetime, ranking: list[dict[str, Any]]) -> bytes:
    """A Marketing Tools v2 payload, shaped like the real US sample."""
    feed = copy.deepcopy(json.loads(US_SAMPLE.read_bytes())["feed"])
    depth = len(ranking)
    url = f"https://rss.marketingtools.apple.com/api/v2/{country}/apps/top-free/{depth}/apps.json"
    feed.update(
        id=url,
        links=[{"self": url}],
        country=country,
        copyright="Copyright © 2025 Apple Inc. All rights reserved.",
        updated=email.utils.format_datetime(at),
        results=[_localized(app, country) for app in ranking],
    )
    return json.dumps({"feed": feed}, ensure_ascii=False, separators=(",", ":")).encode()


def _localized(app: dict[str, Any], country: str) -> dict[str, Any]:
    return {**app, "url": app["url"].replace("/us/app/", f"/{country}/app/")}


def _apps() -> dict[str, dict[str, Any]]:
    """Every app the charts can hold, in the v2 shape, in the sample's order."""
    apps = {
        item["id"]: item
        for item in json.loads(US_SAMPLE.read_bytes())["feed"]["results"]
        if item["releaseDate"] < NOT_YET_RELEASED_AFTER
    }
    for entry in json.loads(HK_SAMPLE.read_bytes())["feed"]["entry"]:
        store_id = entry["id"]["attributes"]["im:id"]
        if store_id not in HK_GLOBAL_APPS:
            continue
        link = next(
            link["attributes"]["href"]
            for link in entry["link"]
            if link["attributes"].get("rel") == "alternate"
        )
        apps[store_id] = {
            "artistName": entry["im:artist"]["label"],
            "id": store_id,
            "name": entry["im:name"]["label"],
            "releaseDate": entry["im:releaseDate"]["label"][:10],
            "kind": "apps",
            "artworkUrl100": entry["im:image"][-1]["label"],
            "genres": [],
            "url": link.split("?")[0].replace("/hk/app/", "/us/app/"),
        }
    for store_id, (name, artist, released, slug) in EXTRA_APPS.items():
        apps[store_id] = {
            "artistName": artist,
            "id": store_id,
            "name": name,
            "releaseDate": released,
            "kind": "apps",
            "genres": [],
            "url": f"https://apps.apple.com/us/app/{slug}/id{store_id}",
        }
    return apps


if __name__ == "__main__":
    main()
