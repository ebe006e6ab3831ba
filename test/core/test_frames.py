"""chatspot_ros.service.frames: the stamp-ordered ring buffer and stamp matching (no ROS)."""
from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatspot_ros.service.frames import (
    Arrival, FrameBuffer, FrameMatcher, MatchPolicy, MatchStatus, WaitingRoom, format_ns, ns_to_stamp,
    stamp_to_ns,
)

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


def test_matcher_wait_returns_when_the_frame_arrives() -> None:
    matcher: FrameMatcher[str, str] = FrameMatcher(10, MatchPolicy(0, wait_s=5.0))
    matcher.push(100 * MS, "f100")
    threading.Timer(0.1, lambda: matcher.push(200 * MS, "late")).start()
    start = time.monotonic()
    result = matcher.wait(200 * MS)
    assert result.status is MatchStatus.EXACT and time.monotonic() - start < 2.0
    assert matcher.wait(10 * MS).status is MatchStatus.TOO_OLD  # final at once: no waiting
    matcher.configure(policy=MatchPolicy(0, wait_s=0.2))
    start = time.monotonic()
    assert matcher.wait(900 * MS).status is MatchStatus.NOT_YET
    assert 0.15 < time.monotonic() - start < 2.0


def test_matcher_close_wakes_blocked_waits() -> None:
    matcher: FrameMatcher[str, str] = FrameMatcher(10, MatchPolicy(0, wait_s=30.0))
    threading.Timer(0.1, matcher.close).start()
    start = time.monotonic()
    assert matcher.wait(5 * MS).status is MatchStatus.EMPTY
    assert time.monotonic() - start < 5.0


def test_waiting_room_releases_items_when_their_frame_arrives_or_fails_for_good() -> None:
    buffer: FrameBuffer[str] = FrameBuffer(10)
    room: WaitingRoom[str] = WaitingRoom(4)
    policy = MatchPolicy(5 * MS, wait_s=10.0)
    for name, stamp in (("early", 100 * MS), ("later", 300 * MS), ("between", 150 * MS)):
        assert room.add(stamp, name, deadline=10.0) == (True, [])
    assert room.pop_settled(buffer, policy, now=0.0) == [] and len(room) == 3  # EMPTY: all may still come
    buffer.push(100 * MS, "f100")
    ready = room.pop_settled(buffer, policy, now=0.0)
    assert [(item, r.status) for item, r in ready] == [("early", MatchStatus.EXACT)]
    assert ready[0][1].frame.item == "f100" and len(room) == 2  # "between" and "later" are newer
    buffer.push(200 * MS, "f200")  # "between" (150) now lies inside the buffered span: not found
    ready = room.pop_settled(buffer, policy, now=0.0)
    assert [(item, r.status) for item, r in ready] == [("between", MatchStatus.NOT_FOUND)]
    buffer.push(302 * MS, "f302")
    ready = room.pop_settled(buffer, policy, now=0.0)
    assert [(item, r.status, r.frame.item) for item, r in ready] == [("later", MatchStatus.NEAREST, "f302")]
    assert len(room) == 0 and room.pop_settled(buffer, policy, now=0.0) == []


def test_waiting_room_expires_by_deadline_and_is_bounded() -> None:
    buffer: FrameBuffer[str] = FrameBuffer(10)
    policy = MatchPolicy(0, wait_s=1.0)
    room: WaitingRoom[str] = WaitingRoom(2)
    room.add(1, "a", deadline=1.0)
    room.add(2, "b", deadline=2.0)
    accepted, evicted = room.add(3, "c", deadline=3.0)  # full: the oldest arrival makes room
    assert accepted and evicted == ["a"] and len(room) == 2
    assert room.pop_settled(buffer, policy, 1.5) == []
    assert [(i, r.status) for i, r in room.pop_settled(buffer, policy, 2.0)] == [("b", MatchStatus.EMPTY)]
    room.add(4, "d", deadline=9.0)
    assert room.set_capacity(1) == ["c"] and room.capacity == 1
    assert [i for i, _ in room.pop_settled(buffer, policy, 100.0)] == ["d"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_matcher_submit_matches_waits_and_releases_by_one_rule() -> None:
    clock = FakeClock()
    matcher: FrameMatcher[str, str] = FrameMatcher(10, MatchPolicy(5 * MS, wait_s=0.5), max_waiting=2,
                                                   clock=clock)
    assert matcher.submit(100 * MS, "d0").arrival is Arrival.WAITING  # nothing buffered yet
    pushed = matcher.push(100 * MS, "f100")
    assert [(r.item, r.result.status) for r in pushed.released] == [("d0", MatchStatus.EXACT)]
    assert not pushed.time_jump and matcher.waiting == 0
    done = matcher.submit(102 * MS, "d1")  # buffered: matched at once, never waits
    assert done.arrival is Arrival.MATCHED and done.result.frame.item == "f100"
    old = matcher.submit(10 * MS, "d2")  # too old: final at once
    assert old.arrival is Arrival.UNMATCHED and old.result.status is MatchStatus.TOO_OLD
    assert matcher.submit(300 * MS, "d3").arrival is Arrival.WAITING
    clock.now = 0.2
    assert matcher.submit(400 * MS, "d4").arrival is Arrival.WAITING
    full = matcher.submit(500 * MS, "d5")  # the room holds 2: the oldest arrival is pushed out
    assert full.arrival is Arrival.WAITING and full.evicted == ("d3",)
    clock.now = 0.49
    assert matcher.poll() == ()
    clock.now = 0.7  # d4 arrived at 0.2: its 0.5 s are over; d5 too (same arrival time)
    assert [(r.item, r.result.status) for r in matcher.poll()] == [("d4", MatchStatus.NOT_YET),
                                                                      ("d5", MatchStatus.NOT_YET)]
    assert matcher.waiting == 0


def test_matcher_with_wait_zero_never_waits_and_close_refuses() -> None:
    matcher: FrameMatcher[str, str] = FrameMatcher(10, MatchPolicy(0, wait_s=0.0))
    assert matcher.submit(5, "a").arrival is Arrival.UNMATCHED
    matcher.configure(policy=MatchPolicy(0, wait_s=1.0))
    assert matcher.submit(5, "b").arrival is Arrival.WAITING
    assert matcher.close() == ("b",) and matcher.closed
    assert matcher.submit(6, "c").arrival is Arrival.REFUSED
    matcher.reopen()
    assert matcher.submit(6, "c").arrival is Arrival.WAITING
    assert matcher.configure(max_waiting=1) == ()
    assert matcher.submit(7, "d").evicted == ("c",)


def test_matcher_time_jump_clears_frames_and_is_reported() -> None:
    matcher: FrameMatcher[str, str] = FrameMatcher(10, max_backward_jump_ns=1000 * MS)
    matcher.push(10_000 * MS, "a")
    assert matcher.push(50 * MS, "after a bag loop").time_jump
    assert matcher.span() == (50 * MS, 50 * MS) and matcher.frames_buffered == 1
    matcher.clear()
    assert matcher.latest() is None


def test_match_policy_rejects_negative_settings() -> None:
    with pytest.raises(ValueError):
        MatchPolicy(-1, 0.0)
    with pytest.raises(ValueError):
        MatchPolicy(0, -0.1)


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
