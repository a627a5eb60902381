"""The packed form of a snapshot's ranking: little-endian uint32 internal app ids.

Position i holds the app at rank i + 1; 0 marks a position the parser dropped (a gap). The
length is the visible depth, so a packed ranking never ends in a gap.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Collection, Mapping, Sequence

GAP = 0
MAX_APP_ID = 2**32 - 1
_WIDTH = 4
# Past this many apps, unpacking once beats one byte search per app.
_SEARCH_LIMIT = 12


def pack_ranking(app_id_by_rank: Mapping[int, int]) -> bytes:
    """Pack `{rank: internal app id}` (ranks 1-based, gaps allowed) into the stored form."""
    if not app_id_by_rank:
        return b""
    depth = max(app_id_by_rank)
    if min(app_id_by_rank) < 1:
        raise ValueError("ranks start at 1")
    slots = [GAP] * depth
    for rank, app_id in app_id_by_rank.items():
        if not 0 < app_id <= MAX_APP_ID:
            raise ValueError(f"app id {app_id} does not fit a packed ranking")
        slots[rank - 1] = app_id
    return struct.pack(f"<{depth}I", *slots)


def slots(packed: bytes) -> tuple[int, ...]:
    """The app id at each position, GAP for a gap."""
    return struct.unpack(f"<{len(packed) // _WIDTH}I", packed)


def unpack_ranking(packed: bytes) -> dict[int, int]:
    """The inverse of `pack_ranking`: `{rank: app id}` without the gaps."""
    if len(packed) % _WIDTH:
        raise ValueError(f"a packed ranking is a multiple of {_WIDTH} bytes, got {len(packed)}")
    slots = struct.unpack(f"<{len(packed) // _WIDTH}I", packed)
    return {rank: app_id for rank, app_id in enumerate(slots, start=1) if app_id != GAP}


def rank_of(packed: bytes, app_id: int) -> int | None:
    """The rank of one app in a packed ranking, None when it is not listed.

    A byte search is much faster than unpacking; a hit that straddles two slots is skipped.
    """
    needle = struct.pack("<I", app_id)
    start = packed.find(needle)
    while start != -1:
        if start % _WIDTH == 0:
            return start // _WIDTH + 1
        start = packed.find(needle, start + 1)
    return None


def ranks_of(packed: bytes, app_ids: Collection[int]) -> dict[int, int]:
    """`{app id: rank}` for those of `app_ids` that the packed ranking lists."""
    if len(app_ids) > _SEARCH_LIMIT:
        ranking = unpack_ranking(packed)
        return {app_id: rank for rank, app_id in ranking.items() if app_id in app_ids}
    found: dict[int, int] = {}
    for app_id in app_ids:
        rank = rank_of(packed, app_id)
        if rank is not None:
            found[app_id] = rank
    return found


HASH_BYTES = 16


def hash_bytes(content_hash: str) -> bytes:
    """The stored form of a content hash: its first 16 bytes when it is hex, else a digest.

    It is only ever compared with the previous snapshot of the same chart, where 128 bits
    leave no practical chance of a collision; the full hash stays in poll_tasks.last_hash.
    """
    try:
        raw = bytes.fromhex(content_hash)
    except ValueError:
        raw = b""
    if len(raw) < HASH_BYTES:
        raw = hashlib.sha256(content_hash.encode()).digest()
    return raw[:HASH_BYTES]


# -- daily summaries (daily_ranks) --------------------------------------------------------------
# Slot for slot beside the day's packed app ids: best, worst and last rank, minutes listed.
_DAY_STATS = struct.Struct("<4H")


def pack_day_stats(stats: Sequence[tuple[int, int, int, int]]) -> bytes:
    """Pack (best, worst, last rank, minutes listed) per app, in the order of its app ids."""
    return b"".join(_DAY_STATS.pack(*row) for row in stats)


def day_stats_at(packed: bytes, slot: int) -> tuple[int, int, int, int]:
    """The stats of the app in `slot` (its rank in the app ids, less one)."""
    best, worst, last, minutes = _DAY_STATS.unpack_from(packed, slot * _DAY_STATS.size)
    return best, worst, last, minutes
