"""Rule evaluation: pure code over (episodes so far, one poll of one chart, rules).

Each rule has one episode per target: an app on the chart (for rival rules, an app and the
rival it passed; for breadth rules, an app across the chart's countries). An episode exists
while its condition holds; it fires once confirmed, may repeat, and its end is the resolved
notice. The caller stores the episodes between polls and turns the events into notifications.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator, Mapping, Sequence

from monitor.alerts import summaries
from monitor.alerts.model import AlertEvent, AppRef, EventState, RuleKind, chart_title
from monitor.alerts.rules import Rule
from monitor.config_types import format_duration
from monitor.model import ChartKey

Ranks = Mapping[AppRef, int | None]


@dataclasses.dataclass(frozen=True)
class ChartUpdate:
    """What one successful poll of a chart tells the rules about the tracked apps.

    `ranks` holds every tracked app: its rank, or None below the visible `depth`. `previous`
    is the same as of the chart's previous evaluated poll (None: this is the first), except
    that an app that poll was too shallow to show keeps its last rank known.

    An app not listed in a snapshot shallower than where it was (a chart served 37 entries
    deep, the app last seen at #80), or than a top its rule asks about, is not known to have
    gone anywhere: its rules neither start, continue nor end anything on the chart until a
    snapshot deep enough tells.

    `past[window]` gives the ranks as of `at - window`, for the windows the rules use (a
    window is missing when no snapshot is that old). `countries[app]` gives the app's current
    rank in every watched country of this kind of chart (same collection, device and genre),
    this chart's country included, for breadth rules; None when no app entered or left a
    breadth rule's top on this chart, so that no country count changed (breadth rules are
    then not checked: reading every country's chart at every snapshot would cost the most).
    """

    chart: ChartKey
    at: dt.datetime
    depth: int
    ranks: Ranks
    previous: Ranks | None
    past: Mapping[dt.timedelta, Ranks] = dataclasses.field(default_factory=dict)
    countries: Mapping[AppRef, Mapping[str, int | None]] | None = None


@dataclasses.dataclass(frozen=True)
class Episode:
    """A condition that holds on a target: since when, for how many polls, and whether (and
    when last) it was notified."""

    since: dt.datetime
    polls: int
    firing: bool
    notified_at: dt.datetime | None


@dataclasses.dataclass(frozen=True, order=True)
class EpisodeKey:
    rule: str
    app: AppRef
    target: str  # a chart slug, "slug>rival id" or a breadth scope


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The events of one poll, and the episodes that changed: None deletes one that ended."""

    events: tuple[AlertEvent, ...]
    episodes: Mapping[EpisodeKey, Episode | None]


@dataclasses.dataclass(frozen=True)
class _Check:
    """A rule's condition on one target at this poll."""

    key: EpisodeKey
    rule: Rule
    app: AppRef
    chart: ChartKey | None
    scope: str
    holds: bool
    now: int | None
    before: int | None
    facts: Mapping[str, str]
    # Holds at the chart's first poll, for a rule whose resolved notice is news on its own.
    known_at_start: bool = False


def breadth_may_change(
    rules: Sequence[Rule],
    chart: ChartKey,
    ranks: Ranks,
    previous: Ranks | None,
) -> bool:
    """Whether a breadth rule needs the other countries' charts for a poll of `chart` (the
    `countries` of its ChartUpdate): an app entered or left the rule's top here (the only way
    its country count moves), or the rule has something to do at every poll: count polls
    towards confirmation, or repeat a firing alert."""
    breadth = [rule for rule in rules if rule.kind is RuleKind.BREADTH and rule.covers(chart)]
    if any(
        rule.confirm_snapshots > 1 or rule.confirm_for or rule.repeat_interval is not None
        for rule in breadth
    ):
        return True
    return previous is not None and any(
        in_top(rank, rule.top) != in_top(previous.get(app), rule.top)
        for rule in breadth
        for app, rank in ranks.items()
    )


def breadth_target(chart: ChartKey) -> str:
    """The episode target of breadth rules on `chart`'s kind of chart, whatever its country."""
    return f"{chart.store}/{chart.collection}/{chart.device}/{chart.genre}"


def breadth_scope(chart: ChartKey) -> str:
    """The countries a breadth rule counts across: one kind of chart ("Top Free iPhone")."""
    return chart_title(chart).split(" ", 1)[1]


def evaluate(
    update: ChartUpdate, episodes: Mapping[EpisodeKey, Episode], rules: Sequence[Rule]
) -> Evaluation:
    """The events this poll causes and the episodes it starts, continues and ends."""
    events: list[AlertEvent] = []
    changed: dict[EpisodeKey, Episode | None] = {}
    for check in _checks(update, episodes, rules):
        episode = episodes.get(check.key)
        if not check.holds:
            if episode is not None:
                changed[check.key] = None
                if episode.firing and check.rule.send_resolved:
                    events.append(_event(check, update, EventState.RESOLVED, episode.since))
            continue
        rule = check.rule
        if episode is None and check.known_at_start:
            # Already in the top at the chart's first poll: not news, but leaving it will be.
            changed[check.key] = Episode(since=update.at, polls=1, firing=True, notified_at=None)
            continue
        before = episode
        if episode is None:
            episode = Episode(since=update.at, polls=0, firing=False, notified_at=None)
        if not episode.firing:
            # Polls count towards confirmation only: a firing episode left as it is needs
            # no write.
            episode = dataclasses.replace(episode, polls=episode.polls + 1)
        confirmed = (
            episode.polls >= rule.confirm_snapshots
            and update.at - episode.since >= rule.confirm_for
        )
        repeat_due = (
            episode.firing
            and rule.repeat_interval is not None
            and episode.notified_at is not None
            and update.at - episode.notified_at >= rule.repeat_interval
        )
        if (confirmed and not episode.firing) or repeat_due:
            events.append(_event(check, update, EventState.FIRING, episode.since, repeat_due))
            episode = dataclasses.replace(episode, firing=True, notified_at=update.at)
        if episode != before:
            changed[check.key] = episode
    return Evaluation(tuple(events), changed)


@dataclasses.dataclass(frozen=True)
class _Poll:
    """One evaluation's inputs, indexed once: most rule-target pairs neither hold nor have an
    episode, and are skipped on plain comparisons of ranks and strings."""

    update: ChartUpdate
    slug: str
    title: str
    # (rule, app's store id, target) of every episode in progress.
    active: frozenset[tuple[str, str, str]]

    def is_active(self, rule: Rule, app: AppRef, target: str) -> bool:
        return (rule.name, app.store_id, target) in self.active


def _checks(
    update: ChartUpdate, episodes: Mapping[EpisodeKey, Episode], rules: Sequence[Rule]
) -> Iterator[_Check]:
    chart = update.chart
    poll = _Poll(
        update,
        chart.slug,
        chart_title(chart),
        frozenset((key.rule, key.app.store_id, key.target) for key in episodes),
    )
    apps = sorted(update.ranks)
    for rule in rules:
        if not rule.covers(chart):
            continue
        for app in apps:
            if not rule.watches(app):
                continue
            if rule.kind is RuleKind.RIVAL_PASSED:
                yield from _rival_checks(rule, app, apps, poll)
            elif rule.kind is RuleKind.BREADTH:
                if update.countries is not None and not unknown(update, app, rule.top):
                    yield _breadth_check(rule, app, update.countries, poll)
            elif (check := _chart_check(rule, app, poll)) is not None:
                yield check


def unknown(update: ChartUpdate, app: AppRef, top: int | None = None) -> bool:
    """Whether the app's place is unknown: not listed, in a snapshot shallower than its last
    known rank or than `top` (so neither "out of the chart" nor "out of the top" is known)."""
    if update.ranks[app] is not None:
        return False
    before = update.previous.get(app) if update.previous is not None else None
    return (before is not None and before > update.depth) or (
        top is not None and update.depth < top
    )


def _chart_check(rule: Rule, app: AppRef, poll: _Poll) -> _Check | None:
    """The rule on the app on this chart; None when it neither holds nor ends anything, or
    when the snapshot cannot tell (its episode is then left as it is)."""
    update = poll.update
    top = rule.top if rule.kind in (RuleKind.ENTERED_TOP, RuleKind.LEFT_TOP) else None
    if unknown(update, app, top):
        return None
    active = poll.is_active(rule, app, poll.slug)
    now = update.ranks[app]
    before = update.previous.get(app) if update.previous is not None else None
    if rule.kind is RuleKind.MOVED:
        if rule.window is not None:
            past = update.past.get(rule.window)
            before = past.get(app) if past is not None else None
        holds = _moved_enough(rule, now, before)
    else:
        holds = _entered(
            _inside(rule, now),
            None if update.previous is None else _inside(rule, before),
            active=active,
        )
    # "Out of the top 10" is true whenever it was in the top 10 before; "back in the top 10"
    # and "back in the chart" would not be for an app that never was.
    known_at_start = (
        rule.kind is RuleKind.ENTERED_TOP and update.previous is None and _inside(rule, now)
    )
    if not (holds or known_at_start or active):
        return None
    facts: dict[str, str] = {}
    if rule.kind is RuleKind.MOVED and rule.window is not None:
        facts["window"] = format_duration(rule.window)
    if rule.top is not None:
        facts["top"] = str(rule.top)
    return _Check(
        EpisodeKey(rule.name, app, poll.slug),
        rule,
        app,
        update.chart,
        poll.title,
        holds or known_at_start,
        now,
        before,
        facts,
        known_at_start,
    )


def _moved_enough(rule: Rule, now: int | None, before: int | None) -> bool:
    """Only between two listed ranks: an app dropping out or coming back is not a move (the
    dropped-out rule tells it), so "dropped out" never comes with "moved" for one target."""
    if now is None or before is None:
        return False
    up = before - now
    return (rule.places_up is not None and up >= rule.places_up) or (
        rule.places_down is not None and -up >= rule.places_down
    )


def _inside(rule: Rule, rank: int | None) -> bool:
    """Where an ENTERED_TOP, LEFT_TOP or DROPPED_OUT condition holds, given the way in."""
    if rule.kind is RuleKind.ENTERED_TOP:
        return in_top(rank, rule.top)
    if rule.kind is RuleKind.LEFT_TOP:
        return not in_top(rank, rule.top)
    return rank is None


def in_top(rank: int | None, top: int | None) -> bool:
    return rank is not None and top is not None and rank <= top


def _entered(inside_now: bool, inside_before: bool | None, *, active: bool) -> bool:
    """A sticky condition: it starts when the target goes from outside to inside (known from
    the previous poll; unknown at a chart's first poll) and holds while it stays inside."""
    return inside_now and (active or inside_before is False)


def _rival_checks(rule: Rule, app: AppRef, apps: Sequence[AppRef], poll: _Poll) -> Iterator[_Check]:
    """Only the pairs where something holds or ends: of n apps' n(n-1) pairs, nearly none."""
    update = poll.update
    if unknown(update, app):
        return
    now = update.ranks[app]
    before = update.previous.get(app) if update.previous is not None else None
    # Ahead of no rival can hold unless the app is listed, and in the top if the rule has one.
    may_hold = now is not None and (rule.top is None or in_top(now, rule.top))
    for rival in apps:
        if rival == app or not rule.is_rival(rival) or unknown(update, rival):
            continue
        target = f"{poll.slug}>{rival.store_id}"
        active = poll.is_active(rule, app, target)
        if not (may_hold or active):
            continue
        rival_now = update.ranks[rival]
        rival_before = update.previous.get(rival) if update.previous is not None else None
        # Behind a rival that was not listed is not known: it may have just entered the
        # chart below the app, which is no pass.
        known_before = update.previous is not None and rival_before is not None
        holds = _entered(
            may_hold and _ahead(now, rival_now),
            _ahead(before, rival_before) if known_before else None,
            active=active,
        )
        if not holds and not active:
            continue
        facts = {"rival": rival.name, "rival_rank": summaries.rank_text(rival_now, update.depth)}
        if rival_before is not None:
            facts["rival_previous_rank"] = str(rival_before)
        yield _Check(
            EpisodeKey(rule.name, app, target),
            rule,
            app,
            update.chart,
            poll.title,
            holds,
            now,
            before,
            facts,
        )


def _ahead(rank: int | None, rival: int | None) -> bool:
    """Both listed, `rank` above `rival`: a rival that dropped out was not passed."""
    return rank is not None and rival is not None and rank < rival


def _breadth_check(
    rule: Rule,
    app: AppRef,
    ranks_by_country: Mapping[AppRef, Mapping[str, int | None]],
    poll: _Poll,
) -> _Check:
    update = poll.update
    scope = breadth_scope(update.chart)
    key = EpisodeKey(rule.name, app, breadth_target(update.chart))
    countries = {
        country: rank
        for country, rank in ranks_by_country.get(app, {}).items()
        if not rule.countries or country in rule.countries
    }
    leading = sorted(country for country, rank in countries.items() if in_top(rank, rule.top))
    needed = rule.countries_needed or 0
    count_before: int | None = None
    if update.previous is not None:
        before = {**countries, update.chart.country: update.previous.get(app)}
        count_before = sum(in_top(rank, rule.top) for rank in before.values())
    holds = _entered(
        len(leading) >= needed,
        None if count_before is None else count_before >= needed,
        active=poll.is_active(rule, app, key.target),
    )
    facts = {
        "top": str(rule.top),
        "countries_needed": str(needed),
        "countries": ", ".join(country.upper() for country in leading),
        "country_count": str(len(leading)),
        "watched_countries": str(len(countries)),
    }
    return _Check(key, rule, app, None, scope, holds, None, None, facts)


def _event(
    check: _Check,
    update: ChartUpdate,
    state: EventState,
    since: dt.datetime,
    repeat: bool = False,
) -> AlertEvent:
    key = check.key
    parts = [key.rule, key.app.store, key.app.store_id, key.target, state, since.isoformat()]
    if repeat:
        parts.append(update.at.isoformat())
    depth = update.depth if check.chart is not None else None
    return AlertEvent(
        rule=check.rule.name,
        kind=check.rule.kind,
        state=state,
        severity=check.rule.severity,
        app=check.app,
        chart=check.chart,
        scope=check.scope,
        at=update.at,
        rank=check.now,
        previous_rank=check.before,
        depth=depth,
        summary=summaries.summary(
            check.rule.kind,
            state,
            app=check.app,
            scope=check.scope,
            now=check.now,
            before=check.before,
            depth=depth,
            facts=check.facts,
        ),
        facts=check.facts,
        dedupe_key="|".join(parts),
    )
