"""chatspot_ros.frames: the stamp-ordered ring buffer and stamp matching (no ROS)."""
from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatspot_ros.frames import FrameBuffer, MatchStatus, WaitingRoom, format_ns, ns_to_stamp, stamp_to_ns

MS = 1_000_000


def filled(stamps, capacity=10, **kwargs) -> FrameBuffer[str]:
    buffer: FrameBuffer[str] = FrameBuffer(capacity, **kwargs)
    for s in stamps:
        buffer.push(s, f"f{s}")
    return buffer


def test_stamp_conversions_roundtrip() -> None:
    assert stamp_to_ns(12, 345) == 12_000_000_345
    assert ns_to_stamp(12_000_000_345) == (12, 345)
    assert format_ns(1_500_000_000) == "1.500000000"


def test_exact_and_nearest_within_tolerance() -> None:
    buffer = filled([100 * MS, 133 * MS, 166 * MS])
    exact = buffer.match(133 * MS, 0)
    assert exact.status is MatchStatus.EXACT and exact.frame.item == f"f{133 * MS}" and exact.ok
    near = buffer.match(140 * MS, 10 * MS)
    assert near.status is MatchStatus.NEAREST and near.frame.stamp_ns == 133 * MS and near.offset_ns == -7 * MS
    assert buffer.match(150 * MS, 10 * MS).status is MatchStatus.NOT_FOUND


def test_reasons_when_nothing_matches() -> None:
    assert FrameBuffer(3).match(5, 0).status is MatchStatus.EMPTY
    buffer = filled([100 * MS, 200 * MS])
    old = buffer.match(10 * MS, 5 * MS)
    assert old.status is MatchStatus.TOO_OLD and "older than the oldest" in old.message and not old.ok
    new = buffer.match(900 * MS, 5 * MS)
    assert new.status is MatchStatus.NOT_YET and "newer than the newest" in new.message
    assert buffer.match(96 * MS, 5 * MS).status is MatchStatus.NEAREST  # tolerance reaches past the ends


def test_capacity_evicts_the_oldest_and_out_of_order_frames_are_sorted() -> None:
    buffer = filled([5, 1, 3, 2, 4], capacity=3)
    assert buffer.span() == (3, 5) and len(buffer) == 3 and buffer.evicted == 2
    assert buffer.latest().stamp_ns == 5
    buffer.push(4, "again")
    assert buffer.match(4, 0).frame.item == "again" and len(buffer) == 3
    buffer.resize(1)
    assert buffer.span() == (5, 5)
    with pytest.raises(ValueError):
        FrameBuffer(0)


def test_a_big_jump_back_in_time_clears_the_buffer() -> None:
    buffer = filled([10_000 * MS, 10_033 * MS], max_backward_jump_ns=1000 * MS)
    assert not buffer.push(10_020 * MS, "late but fine")
    assert buffer.push(50 * MS, "after a bag loop")
    assert buffer.span() == (50 * MS, 50 * MS)


def test_wait_match_returns_when_the_frame_arrives() -> None:
    buffer = filled([100 * MS])
    threading.Timer(0.1, lambda: buffer.push(200 * MS, "late")).start()
    start = time.monotonic()
    result = buffer.wait_match(200 * MS, 0, timeout_s=5.0)
    assert result.status is MatchStatus.EXACT and time.monotonic() - start < 2.0
    start = time.monotonic()
    assert buffer.wait_match(900 * MS, 0, timeout_s=0.2).status is MatchStatus.NOT_YET
    assert 0.15 < time.monotonic() - start < 2.0
    assert buffer.wait_match(10 * MS, 0, timeout_s=5.0).status is MatchStatus.TOO_OLD  # no waiting


def test_waiting_room_releases_items_when_their_frame_arrives_or_fails_for_good() -> None:
    buffer: FrameBuffer[str] = FrameBuffer(10)
    room: WaitingRoom[str] = WaitingRoom(4)
    for name, stamp in (("early", 100 * MS), ("later", 300 * MS), ("between", 150 * MS)):
        assert room.add(stamp, name, deadline=10.0) == (True, [])
    assert room.pop_ready(buffer, 0) == [] and len(room) == 3  # EMPTY: all may still come
    buffer.push(100 * MS, "f100")
    ready = room.pop_ready(buffer, 5 * MS)
    assert [(item, r.status) for item, r in ready] == [("early", MatchStatus.EXACT)]
    assert ready[0][1].frame.item == "f100" and len(room) == 2  # "between" and "later" are newer
    buffer.push(200 * MS, "f200")  # "between" (150) now lies inside the buffered span: not found
    ready = room.pop_ready(buffer, 5 * MS)
    assert [(item, r.status) for item, r in ready] == [("between", MatchStatus.NOT_FOUND)]
    buffer.push(302 * MS, "f302")
    ready = room.pop_ready(buffer, 5 * MS)
    assert [(item, r.status, r.frame.item) for item, r in ready] == [("later", MatchStatus.NEAREST, "f302")]
    assert len(room) == 0 and room.pop_ready(buffer, 0) == []


def test_waiting_room_expires_by_deadline_and_is_bounded() -> None:
    room: WaitingRoom[str] = WaitingRoom(2)
    room.add(1, "a", deadline=1.0)
    room.add(2, "b", deadline=2.0)
    accepted, evicted = room.add(3, "c", deadline=3.0)  # full: the oldest arrival makes room
    assert accepted and evicted == ["a"] and len(room) == 2
    assert room.pop_expired(1.5) == []
    assert room.pop_expired(2.0) == [(2, "b")] and len(room) == 1
    room.add(4, "d", deadline=9.0)
    assert room.set_capacity(1) == ["c"] and room.capacity == 1
    assert room.pop_expired(100.0) == [(4, "d")]


def test_a_closed_waiting_room_refuses_items_until_reopened() -> None:
    room: WaitingRoom[str] = WaitingRoom(3)
    room.add(1, "a", deadline=1.0)
    room.add(2, "b", deadline=1.0)
    assert room.drain(close=True) == ["a", "b"] and len(room) == 0
    assert room.add(3, "c", deadline=1.0) == (False, [])
    room.reopen()
    assert room.add(3, "c", deadline=1.0) == (True, [])
    assert room.drain() == ["c"]
    assert room.add(4, "d", deadline=1.0)[0]  # drain without close keeps it open


@settings(max_examples=100, deadline=None)
@given(stamps=st.lists(st.integers(0, 10**6), min_size=1, max_size=30, unique=True),
       query=st.integers(-10, 10**6 + 10), tolerance=st.integers(0, 5000))
def test_match_agrees_with_a_brute_force_search(stamps, query, tolerance) -> None:
    buffer = filled(stamps, capacity=len(stamps))
    result = buffer.match(query, tolerance)
    best = min(stamps, key=lambda s: (abs(s - query), s))
    if abs(best - query) <= tolerance:
        assert result.ok and abs(result.frame.stamp_ns - query) == abs(best - query)
    else:
        assert not result.ok and result.frame is None
