"""Chart payloads in Apple's real shapes (v2 and legacy RSS), changing from poll to poll.

The apps and the v2 envelope come from the real US top-free sample; the legacy envelope
and entry shape follow the real legacy samples. The scenario replays January 2025: DeepSeek
climbs the US top free chart from #31 to #12 to #1 over three polls, pushing ChatGPT to #2.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "feeds"
V2_SAMPLE = FIXTURES / "apple_v2_us_top-free_100_2026-05-26.json"

DEEPSEEK = {
    "artistName": "Hangzhou DeepSeek Artificial Intelligence Basic Technology Research Co., Ltd.",
    "id": "6737597349",
    "name": "DeepSeek - AI Assistant",
    "releaseDate": "2025-01-10",
    "kind": "apps",
    "artworkUrl100": "https://is1-ssl.mzstatic.com/image/thumb/deepseek/100x100bb.png",
    "genres": [],
    "url": "https://apps.apple.com/us/app/deepseek-ai-assistant/id6737597349",
}
DEEPSEEK_US_TOP_FREE_RANKS = (31, 12, 1)

_V2_PATH = re.compile(r"^/api/v2/(?P<cc>[a-z]{2})/apps/(?P<feed>top-free|top-paid)/(?P<n>\d+)/")
_LEGACY_PATH = re.compile(r"^/(?P<cc>[a-z]{2})/rss/(?P<feed>[a-z]+)/limit=(?P<n>\d+)")


class FakeAppleCharts:
    """Payload for the n-th request of each URL; DeepSeek's climb plays in us top free, one
    rank of `climb` per poll (the last one stays)."""

    def __init__(self, climb: tuple[int, ...] = DEEPSEEK_US_TOP_FREE_RANKS) -> None:
        self._climb = climb
        sample = json.loads(V2_SAMPLE.read_text(encoding="utf-8"))
        self._envelope: dict[str, Any] = sample["feed"]
        self._apps: list[dict[str, Any]] = [
            a for a in sample["feed"]["results"] if a["id"] != DEEPSEEK["id"]
        ]
        self._requests: dict[str, int] = {}

    def respond(self, path: str) -> bytes | None:
        """Body for a request path, or None when the path is not a chart feed."""
        poll = self._requests.get(path, 0)
        self._requests[path] = poll + 1
        return self.payload(path, poll)

    def payload(self, path: str, poll: int) -> bytes | None:
        """Body for a request path at the given poll (0 first), or None as `respond`."""
        if match := _V2_PATH.match(path):
            apps = self.chart(match["cc"], match["feed"], poll)[: int(match["n"])]
            return self.v2_payload(match["cc"], match["feed"], apps)
        if match := _LEGACY_PATH.match(path):
            apps = self.chart(match["cc"], match["feed"], poll)[: int(match["n"])]
            return _legacy(match["cc"], apps)
        return None

    def chart(self, country: str, feed: str, poll: int) -> list[dict[str, Any]]:
        """The ranked apps of one chart at one poll."""
        # Each chart gets its own stable order so charts differ from each other.
        offset = sum(map(ord, country + feed)) % len(self._apps)
        apps = self._apps[offset:] + self._apps[:offset]
        if country == "us" and feed in ("top-free", "topfreeapplications"):
            apps = list(self._apps)
            rank = self._climb[min(poll, len(self._climb) - 1)]
            apps.insert(rank - 1, DEEPSEEK)
        elif poll % 2:
            # Other charts change a little every other poll: two neighbours swap.
            apps[3], apps[4] = apps[4], apps[3]
        return apps

    def v2_payload(self, country: str, feed: str, apps: list[dict[str, Any]]) -> bytes:
        envelope = copy.deepcopy(self._envelope)
        envelope["country"] = country
        envelope["id"] = envelope["id"].replace("/us/", f"/{country}/").replace("top-free", feed)
        envelope["results"] = apps
        return json.dumps({"feed": envelope}, ensure_ascii=False).encode()


def _legacy(country: str, apps: list[dict[str, Any]]) -> bytes:
    entries = [_legacy_entry(app) for app in apps]
    feed: dict[str, Any] = {
        "author": {"name": {"label": "iTunes Store"}, "uri": {"label": "http://www.apple.com/"}},
        "updated": {"label": "2025-01-26T02:17:38-07:00"},
        "rights": {"label": "Copyright 2008 Apple Inc."},
        "title": {"label": "iTunes Store: Top Free Apps"},
        "icon": {"label": "http://itunes.apple.com/favicon.ico"},
        "id": {"label": f"https://itunes.apple.com/{country}/rss/topfreeapplications/json"},
    }
    if entries:
        feed["entry"] = entries[0] if len(entries) == 1 else entries
    return json.dumps({"feed": feed}, ensure_ascii=False).encode()


def _legacy_entry(app: dict[str, Any]) -> dict[str, Any]:
    return {
        "im:name": {"label": app["name"]},
        "im:image": [{"label": app["artworkUrl100"], "attributes": {"height": "100"}}],
        "summary": {"label": f"{app['name']} summary"},
        "im:price": {"label": "Get", "attributes": {"amount": "0.00", "currency": "USD"}},
        "im:contentType": {"attributes": {"term": "Application", "label": "Application"}},
        "rights": {"label": f"© {app['artistName']}"},
        "title": {"label": f"{app['name']} - {app['artistName']}"},
        "link": [
            {"attributes": {"rel": "alternate", "type": "text/html", "href": app["url"]}},
        ],
        "id": {
            "label": app["url"],
            "attributes": {"im:id": app["id"], "im:bundleId": f"com.example.{app['id']}"},
        },
        "im:artist": {
            "label": app["artistName"],
            "attributes": {"href": f"https://apps.apple.com/us/developer/x/id{app['id'][:9]}"},
        },
        "category": {
            "attributes": {
                "im:id": "6000",
                "term": "Business",
                "scheme": "https://apps.apple.com/us/genre/x/id6000",
                "label": "Business",
            }
        },
        "im:releaseDate": {
            "label": f"{app['releaseDate']}T00:00:00-07:00",
            "attributes": {"label": app["releaseDate"]},
        },
    }
