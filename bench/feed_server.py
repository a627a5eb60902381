"""A local stand-in for Apple's chart feeds, for the benchmarks: every storefront and chart.

Payloads have the real shapes and sizes: legacy entries are the real Hong Kong sample's 100
entries (summaries and all) relabelled as synthetic apps, v2 entries follow the US v2 sample.
Charts are drawn from a pool of apps, with the watchlist apps placed high in many of them,
and every chart changes every cycle (neighbours swap, a few apps enter), the worst case for
storage. `GET /_cycle/N` switches every chart to cycle N.

Run: python bench/feed_server.py PORT   (serves until killed)
"""

from __future__ import annotations

import copy
import http.server
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "feeds"
LEGACY_SAMPLE = FIXTURES / "legacy_itunes_hk_topfreeapplications_limit100_2024-09-04.json"
V2_SAMPLE = FIXTURES / "apple_v2_us_top-free_100_2026-05-26.json"
POOL_SIZE = 3000
WATCHED = ["6737597349", "6448311069", "6473753684", "6477489729", "6472538445", "1668000334"]

_V2 = re.compile(r"^/api/v2/(?P<cc>[a-z]{2})/apps/(?P<feed>[a-z-]+)/(?P<n>\d+)/apps\.json$")
_LEGACY = re.compile(r"^/(?P<cc>[a-z]{2})/rss/(?P<feed>[a-z]+)/limit=(?P<n>\d+)(/genre=\d+)?/json$")


class Catalog:
    def __init__(self) -> None:
        legacy = json.loads(LEGACY_SAMPLE.read_text(encoding="utf-8"))["feed"]["entry"]
        v2 = json.loads(V2_SAMPLE.read_text(encoding="utf-8"))["feed"]
        self._v2_envelope = {k: v for k, v in v2.items() if k != "results"}
        ids = WATCHED + [str(1_000_000_000 + i) for i in range(POOL_SIZE - len(WATCHED))]
        self.ids = ids
        self._legacy_text = [
            json.dumps(_legacy_entry(legacy[i % len(legacy)], app_id, i), ensure_ascii=False)
            for i, app_id in enumerate(ids)
        ]
        self._v2_text = [
            json.dumps(_v2_entry(v2["results"][i % len(v2["results"])], app_id, i))
            for i, app_id in enumerate(ids)
        ]
        self.cycle = 0

    def order(self, chart: str, depth: int) -> list[int]:
        """Pool indexes of a chart at the current cycle: a stable base, perturbed per cycle."""
        rng = random.Random(chart)
        order = rng.sample(range(len(WATCHED), POOL_SIZE), depth)
        for watched in range(len(WATCHED)):
            if rng.random() < 0.6:
                order.insert(rng.randrange(min(depth, 30)), watched)
        order = order[:depth]
        drift = random.Random(f"{chart}/{self.cycle}")
        for _ in range(10):
            i = drift.randrange(depth - 1)
            order[i], order[i + 1] = order[i + 1], order[i]
        for _ in range(2):
            newcomer = drift.randrange(len(WATCHED), POOL_SIZE)
            if newcomer not in order:
                order[drift.randrange(depth)] = newcomer
        return order

    def body(self, path: str) -> bytes | None:
        if match := _V2.match(path):
            order = self.order(f"{match['cc']}/{match['feed']}", int(match["n"]))
            envelope = dict(self._v2_envelope, country=match["cc"], id=f"bench{path}")
            head = json.dumps({"feed": envelope})[:-2]
            results = ",".join(self._v2_text[i] for i in order)
            return f'{head},"results":[{results}]}}}}'.encode()
        if match := _LEGACY.match(path):
            order = self.order(f"{match['cc']}/{match['feed']}", int(match["n"]))
            feed_id = f"https://itunes.apple.com/{match['cc']}/rss/{match['feed']}/json"
            entries = ",".join(self._legacy_text[i] for i in order)
            return (
                '{"feed":{"author":{"name":{"label":"iTunes Store"}},"entry":['
                + entries
                + '],"updated":{"label":"2026-11-29T02:17:38-07:00"},'
                + f'"id":{{"label":"{feed_id}"}}}}}}'
            ).encode()
        return None


def _legacy_entry(template: dict[str, Any], app_id: str, index: int) -> dict[str, Any]:
    entry = copy.deepcopy(template)
    entry["im:name"] = {"label": f"Bench App {index}"}
    entry["id"]["attributes"] = {"im:id": app_id, "im:bundleId": f"com.bench.app{index}"}
    return entry


def _v2_entry(template: dict[str, Any], app_id: str, index: int) -> dict[str, Any]:
    return dict(template, id=app_id, name=f"Bench App {index}")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    catalog: Catalog

    def do_GET(self) -> None:
        if self.path.startswith("/_cycle/"):
            self.catalog.cycle = int(self.path.removeprefix("/_cycle/"))
            body: bytes | None = b"ok"
        else:
            body = self.catalog.body(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/javascript; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(port: int) -> None:
    _Handler.catalog = Catalog()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.daemon_threads = True
    print(f"serving on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
