"""The one-line news of an alert event: "DeepSeek #1 in US Top Free iPhone (was #4)".

These lines are email subjects and chat messages: the app's name first, then what happened,
where, and the rank before it.
"""

from __future__ import annotations

from collections.abc import Mapping

from monitor.alerts.model import AppRef, EventState, RuleKind


def rank_text(rank: int | None, depth: int | None) -> str:
    if rank is not None:
        return f"#{rank}"
    return f"below #{depth}" if depth else "not listed"


def summary(
    kind: RuleKind,
    state: EventState,
    *,
    app: AppRef,
    scope: str,
    now: int | None,
    before: int | None,
    depth: int | None,
    facts: Mapping[str, str],
) -> str:
    name, rank, was = app.name, rank_text(now, depth), rank_text(before, depth)
    top = facts.get("top", "")
    firing = state is EventState.FIRING
    if kind is RuleKind.MOVED:
        places = (before or 0) - (now or 0)
        direction = "up" if places > 0 else "down"
        within = f" within {facts['window']}" if "window" in facts else ""
        return f"{name} {direction} {abs(places)} to {rank} in {scope}{within} (was {was})"
    if kind is RuleKind.ENTERED_TOP:
        if top == "1":
            return f"{name} #1 in {scope} (was {was})" if firing else (
                f"{name} no longer #1 in {scope} (now {rank})")  # fmt: skip
        return f"{name} in the top {top} of {scope} at {rank} (was {was})" if firing else (
            f"{name} out of the top {top} of {scope} (now {rank})")  # fmt: skip
    if kind is RuleKind.LEFT_TOP:
        if top == "1":
            return f"{name} lost #1 in {scope} (now {rank})" if firing else (
                f"{name} back at #1 in {scope}")  # fmt: skip
        return f"{name} left the top {top} of {scope} (now {rank}, was {was})" if firing else (
            f"{name} back in the top {top} of {scope} at {rank}")  # fmt: skip
    if kind is RuleKind.DROPPED_OUT:
        return f"{name} dropped out of {scope} ({rank}, was {was})" if firing else (
            f"{name} back in {scope} at {rank}")  # fmt: skip
    if kind is RuleKind.RIVAL_PASSED:
        rival, rival_rank = facts["rival"], facts["rival_rank"]
        return f"{name} passed {rival} in {scope}: {rank} vs {rival_rank}" if firing else (
            f"{rival} back ahead of {name} in {scope}: {rival_rank} vs {rank}")  # fmt: skip
    count, needed = facts["country_count"], facts["countries_needed"]
    return (
        f"{name} in the top {top} in {count} countries ({scope}): {facts['countries']}"
        if firing
        else f"{name} in the top {top} in fewer than {needed} countries ({scope}): now {count}"
    )
