"""The glitch guard: a snapshot that reshuffled or emptied most of a chart at once is more
likely a feed fault (a wrong storefront, a half-served list) than news.

Hourly charts move by small steps: an app entering at #5 shifts everything below it by one.
So a position counts as disturbed only when its app left the chart or moved far.
"""

from __future__ import annotations

from collections.abc import Sequence

# A move of more than this many places, or this share of the depth if larger, is far.
FAR_PLACES = 10
FAR_SHARE = 0.1


def glitch_reason(before: Sequence[int], after: Sequence[int], *, share: float) -> str | None:
    """Why `after` looks like a glitch against `before` (app ids in rank order, 0 for a gap),
    or None. `share` is the part of the chart that must be disturbed at once."""
    listed_before = [app for app in before if app]
    if not listed_before:
        return None
    listed_after = [app for app in after if app]
    if len(listed_after) < len(listed_before) * (1 - share):
        return f"the chart shrank from {len(listed_before)} to {len(listed_after)} entries"
    position = {app: rank for rank, app in enumerate(after) if app}
    far = max(FAR_PLACES, int(len(before) * FAR_SHARE))
    gone = moved = 0
    for rank, app in enumerate(before):
        if not app:
            continue
        if app not in position:
            gone += 1
        elif abs(position[app] - rank) > far:
            moved += 1
    disturbed = gone + moved
    if disturbed > len(listed_before) * share:
        return (
            f"{disturbed} of {len(listed_before)} entries changed at once "
            f"({gone} left the chart, {moved} moved more than {far} places)"
        )
    return None
