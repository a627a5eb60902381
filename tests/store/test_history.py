"""Reading back: one app's rank history, apps by reference, tracked apps' current ranks."""

from __future__ import annotations

import datetime as dt

from monitor.model import RankPoint, RankStatus, Store, WatchedApp
from monitor.store.repository import Repository

from .conftest import CHATGPT, DEEPSEEK, HOUR, JP_FREE, T0, US_FREE, US_PAID, Poller


def _app_id(repository: Repository, store_id: str) -> int:
    (app,) = [app for app in repository.find_apps(store_id) if app.store_id == store_id]
    return app.id


def _story(poller: Poller) -> None:
    """DeepSeek climbs US top free, drops below a short chart's depth, and a fetch fails."""
    poller.store(US_FREE, T0, [CHATGPT, "2", "3", DEEPSEEK])
    poller.store(US_FREE, T0 + HOUR, [CHATGPT, DEEPSEEK, "3"])
    poller.fail(US_FREE, T0 + 2 * HOUR, "FetchTimeout")
    poller.store(US_FREE, T0 + 3 * HOUR, [CHATGPT, "2"])
    poller.store(US_FREE, T0 + 4 * HOUR, [DEEPSEEK, CHATGPT])
    poller.store(US_PAID, T0, ["7", "8"])  # never lists DeepSeek: not part of its history
    poller.store(JP_FREE, T0, ["9", DEEPSEEK])


def _summary(
    points: list[RankPoint],
) -> list[tuple[str, int, str, int | None, int | None, str | None]]:
    return [
        (p.chart.country, int((p.at - T0) / HOUR), p.status.value, p.rank, p.depth, p.error)
        for p in points
    ]


EXPECTED = [
    ("jp", 0, "listed", 2, 2, None),
    ("us", 0, "listed", 4, 4, None),
    ("us", 1, "listed", 2, 3, None),
    ("us", 2, "fetch_failed", None, None, "FetchTimeout"),
    ("us", 3, "below_depth", None, 2, None),
    ("us", 4, "listed", 1, 2, None),
]


def test_history_tells_listed_below_depth_and_failed_fetches_apart(poller: Poller) -> None:
    _story(poller)
    repository = poller.repository

    untracked = repository.history(_app_id(repository, DEEPSEEK))
    repository.sync_watchlist([WatchedApp(Store.APPLE, DEEPSEEK, "DeepSeek")])
    tracked = repository.history(_app_id(repository, DEEPSEEK))

    assert _summary(untracked) == EXPECTED
    assert tracked == untracked


def test_history_filters_by_chart_and_time(poller: Poller) -> None:
    _story(poller)
    repository = poller.repository
    app_id = _app_id(repository, DEEPSEEK)

    us_only = repository.history(app_id, country="us", collection="top_free", device="iphone")
    window = repository.history(app_id, country="us", since=T0 + HOUR, until=T0 + 3 * HOUR)
    ipad = repository.history(app_id, device="ipad")
    japan = repository.history(app_id, only={JP_FREE, US_PAID})

    assert _summary(us_only) == EXPECTED[1:]
    assert _summary(japan) == EXPECTED[:1]
    assert repository.history(app_id, only=set()) == []
    assert _summary(window) == EXPECTED[2:5]
    assert ipad == []


def test_history_of_an_unknown_app_is_empty(poller: Poller) -> None:
    _story(poller)

    assert poller.repository.history(10_000) == []


def test_apps_are_found_by_store_id_or_any_case_part_of_the_name(poller: Poller) -> None:
    repository = poller.repository
    poller.store(US_FREE, T0, [CHATGPT, DEEPSEEK, "100_1"])

    by_id = repository.find_apps(DEEPSEEK)
    by_name = repository.find_apps("aPp 6")
    by_bundle = repository.find_apps(f"com.example.app{CHATGPT}")
    literal_underscore = repository.find_apps("0_1")

    assert [a.store_id for a in by_id] == [DEEPSEEK]
    assert {a.store_id for a in by_name} == {CHATGPT, DEEPSEEK}
    assert [a.store_id for a in by_bundle] == [CHATGPT]
    assert [a.store_id for a in literal_underscore] == ["100_1"]
    assert repository.find_apps("nothing like it") == []


def test_tracked_apps_show_their_current_rank_on_every_enabled_chart(poller: Poller) -> None:
    _story(poller)
    repository = poller.repository
    repository.sync_watchlist(
        [
            WatchedApp(Store.APPLE, DEEPSEEK, "DeepSeek"),
            WatchedApp(Store.APPLE, "404", "Never charted"),
        ]
    )

    deepseek, never = repository.tracked_apps()

    assert deepseek.app.store_id == DEEPSEEK
    assert {(c.chart, c.rank, c.depth) for c in deepseek.ranks} == {
        (US_FREE, 1, 2),
        (US_PAID, None, 2),
        (JP_FREE, 2, 2),
    }
    assert deepseek.best_rank == 1
    assert deepseek.as_row() == {
        "store_id": DEEPSEEK,
        "name": f"App {DEEPSEEK}",
        "best_rank": 1,
        "best_chart": US_FREE.slug,
        "charts_listed": 2,
    }
    assert never.app.name == "Never charted"
    assert never.app.first_seen_at is None
    assert never.best_rank is None
    assert never.listed == ()


def test_disabled_charts_do_not_count_for_current_ranks(poller: Poller) -> None:
    _story(poller)
    repository = poller.repository
    repository.sync_watchlist([WatchedApp(Store.APPLE, DEEPSEEK, "DeepSeek")])

    repository.sync_charts([JP_FREE], now=T0 + 5 * HOUR)

    (deepseek,) = repository.tracked_apps()
    assert [(c.chart, c.rank) for c in deepseek.ranks] == [(JP_FREE, 2)]


def _failures(points: list[RankPoint]) -> list[tuple[float, str | None]]:
    return [((p.at - T0) / HOUR, p.error) for p in points if p.status is RankStatus.FETCH_FAILED]


def test_a_poll_that_failed_on_both_feeds_is_one_failure_with_the_last_error(
    poller: Poller,
) -> None:
    poller.store(US_FREE, T0, [DEEPSEEK])
    poller.fail(US_FREE, T0 + HOUR, "HttpStatusError", fallback_error="FetchTimeout")
    poller.fail(US_FREE, T0 + 2 * HOUR, "FeedFormatError")
    repository = poller.repository

    points = repository.history(_app_id(repository, DEEPSEEK))

    assert [p.status for p in points] == [
        RankStatus.LISTED,
        RankStatus.FETCH_FAILED,
        RankStatus.FETCH_FAILED,
    ]
    assert _failures(points) == [(1, "FetchTimeout"), (2, "FeedFormatError")]


def test_a_failed_poll_belongs_to_the_window_its_start_is_in(poller: Poller) -> None:
    poller.store(US_FREE, T0, [DEEPSEEK])
    poller.fail(US_FREE, T0 + HOUR, "HttpStatusError", fallback_error="FetchTimeout")
    repository = poller.repository
    app_id = _app_id(repository, DEEPSEEK)
    between_its_fetches = T0 + HOUR + dt.timedelta(milliseconds=500)

    ending_mid_poll = repository.history(app_id, until=between_its_fetches)
    starting_mid_poll = repository.history(app_id, since=between_its_fetches)

    assert _failures(ending_mid_poll) == [(1, "FetchTimeout")]
    assert starting_mid_poll == []
