"""The packed ranking stored in every snapshot: a pure function, tested on its own."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.store.packing import (
    MAX_APP_ID,
    hash_bytes,
    pack_ranking,
    rank_of,
    ranks_of,
    unpack_ranking,
)

app_ids = st.integers(min_value=1, max_value=MAX_APP_ID)
# Up to 200 positions, some of them gaps, no app twice (as ChartSnapshot guarantees).
rankings = st.lists(app_ids, unique=True, max_size=200).flatmap(
    lambda ids: st.lists(st.booleans(), min_size=len(ids), max_size=len(ids)).map(
        lambda gaps: {
            rank: app_id
            for rank, (app_id, gap) in enumerate(zip(ids, gaps, strict=True), start=1)
            if not gap or rank == len(ids)
        }
    )
)


@given(rankings)
def test_packing_round_trips_including_gaps(ranking: dict[int, int]) -> None:
    packed = pack_ranking(ranking)

    assert unpack_ranking(packed) == ranking
    assert len(packed) == 4 * (max(ranking) if ranking else 0)


@given(rankings, app_ids)
def test_rank_of_finds_exactly_the_listed_position(ranking: dict[int, int], other: int) -> None:
    packed = pack_ranking(ranking)
    by_app = {app_id: rank for rank, app_id in ranking.items()}

    for app_id, rank in by_app.items():
        assert rank_of(packed, app_id) == rank
    assert rank_of(packed, other) == by_app.get(other)
    assert ranks_of(packed, {*by_app, other}) == by_app


def test_a_byte_match_straddling_two_slots_is_not_a_rank() -> None:
    # Slots 0x01000000 and 0x00000002 contain the bytes of 0x00000200 across their boundary.
    packed = pack_ranking({1: 0x01000000, 2: 0x00000002})
    straddler = struct.unpack("<I", packed[3:7])[0]

    assert rank_of(packed, straddler) is None


def test_gaps_are_zero_slots_and_the_depth_is_the_last_listed_rank() -> None:
    packed = pack_ranking({2: 7, 5: 9})

    assert struct.unpack("<5I", packed) == (0, 7, 0, 0, 9)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [({0: 1}, "ranks start at 1"), ({1: 0}, "does not fit"), ({1: MAX_APP_ID + 1}, "does not fit")],
)
def test_impossible_rankings_are_refused(bad: dict[int, int], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        pack_ranking(bad)


def test_content_hashes_are_stored_as_16_bytes_of_hex_or_a_digest_of_other_text() -> None:
    sha = "ab" * 32

    assert hash_bytes(sha) == bytes.fromhex("ab" * 16)
    assert len(hash_bytes("not hex at all")) == 16
    assert hash_bytes("not hex at all") != hash_bytes("not hex at all!")
