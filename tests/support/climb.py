"""DeepSeek's climb (31 -> 12 -> 1 in US top free) for tests that lose writes or share work:
the emails it must cause under tests.test_alert_emails.RULES, and a feed that moves on only
when the test says so.

FakeAppleCharts moves every chart on at each request, so a poll whose write a crash lost would
never see that content again. Here every request gets FakeAppleCharts' payload of the current
`step` (DeepSeek's climb in US top free), however often it is polled:

    feed = SteppedFeed()
    with ScriptedServer(fallback=feed.respond) as server:
        ...
        feed.step = 1          # from now on every chart serves its second poll
"""

from __future__ import annotations

import collections

from tests.support.fake_apple import DEEPSEEK, FakeAppleCharts
from tests.support.history_checks import US_TOP_FREE, snapshots_by_chart
from tests.support.http_server import Request, Response

DEEPSEEK_ID = str(DEEPSEEK["id"])

# One email per step of the climb after the first.
CLIMB_EMAIL_SUBJECTS = [
    "DeepSeek up 19 to #12 in US Top Free iPhone (was #31)",
    "DeepSeek #1 in US Top Free iPhone (was #12) (and 3 more)",
]


class SteppedFeed:
    def __init__(self, charts: FakeAppleCharts | None = None) -> None:
        self.charts = charts or FakeAppleCharts()
        self.step = 0
        self.served: collections.Counter[tuple[str, int]] = collections.Counter()

    def respond(self, request: Request) -> Response:
        step = self.step
        body = self.charts.payload(request.path, step)
        if body is None:
            return Response(404)
        self.served[request.path, step] += 1
        return Response(200, body)


def deepseek_ranks(url: str) -> list[int | None]:
    """DeepSeek's rank in each stored snapshot of US top free, oldest first."""
    return [
        snapshot.ranks.get(DEEPSEEK_ID) for snapshot in snapshots_by_chart(url).get(US_TOP_FREE, [])
    ]
