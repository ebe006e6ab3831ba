"""A bounded, stamp-ordered ring buffer of camera frames and stamp matching (no ROS).

Detections, clicks and service requests name the frame they refer to by its stamp. The buffer
keeps the last ``capacity`` frames in stamp order and answers "which frame has this stamp?":
exactly, or the nearest within a tolerance. A stamp that matches no frame gets a reason
(:class:`MatchStatus`) so the caller can count and log it instead of dropping it silently.

A message that names a frame which has not arrived yet waits in a :class:`WaitingRoom` (bounded,
with a deadline) instead of blocking a thread: it is looked up again when a frame arrives and on
a timer, and leaves the room matched, definitively unmatched, expired or dropped.

Stamps are integer nanoseconds (``sec * 10**9 + nanosec``) so equality is exact.
"""
from __future__ import annotations

import bisect
import enum
import threading
import time
from dataclasses import dataclass
from typing import Generic, Optional, TypeVar

T = TypeVar("T")
W = TypeVar("W")

NS_PER_S = 1_000_000_000


def stamp_to_ns(sec: int, nanosec: int) -> int:
    """builtin_interfaces/Time fields as integer nanoseconds."""
    return int(sec) * NS_PER_S + int(nanosec)


def ns_to_stamp(ns: int) -> tuple[int, int]:
    """Integer nanoseconds as (sec, nanosec) for builtin_interfaces/Time."""
    sec, nanosec = divmod(int(ns), NS_PER_S)
    return sec, nanosec


def format_ns(ns: int) -> str:
    """A stamp as seconds with 9 decimals, for logs."""
    sec, nanosec = divmod(int(ns), NS_PER_S)
    return f"{sec}.{nanosec:09d}"


@dataclass(frozen=True)
class Frame(Generic[T]):
    stamp_ns: int
    item: T


class MatchStatus(enum.Enum):
    EXACT = "exact"  # a frame with this very stamp
    NEAREST = "nearest"  # the nearest frame, within the tolerance
    NOT_FOUND = "not_found"  # inside the buffered span, but no frame within the tolerance
    TOO_OLD = "too_old"  # older than the oldest buffered frame (minus the tolerance)
    NOT_YET = "not_yet"  # newer than the newest buffered frame (plus the tolerance)
    EMPTY = "empty"  # no frame buffered yet


@dataclass(frozen=True)
class MatchResult(Generic[T]):
    status: MatchStatus
    frame: Optional[Frame[T]]
    offset_ns: int  # frame stamp - requested stamp (0 when no frame)
    message: str

    @property
    def ok(self) -> bool:
        return self.status in (MatchStatus.EXACT, MatchStatus.NEAREST)


class FrameBuffer(Generic[T]):
    """The last ``capacity`` frames, ordered by stamp; thread-safe.

    ``push`` inserts in stamp order (out-of-order arrivals are fine; a frame with the stamp of a
    buffered one replaces it) and evicts the oldest when full. ``match`` looks a stamp up;
    ``wait_match`` waits a bounded time for a frame that has not arrived yet (a detector's output
    can overtake the image it was computed from).
    """

    def __init__(self, capacity: int, max_backward_jump_ns: Optional[int] = None) -> None:
        if int(capacity) < 1:
            raise ValueError(f"frame buffer capacity must be >= 1, got {capacity}")
        self._capacity = int(capacity)
        # A frame this much older than the newest one means time jumped back (a bag looping,
        # a simulator reset): the buffer is cleared rather than keeping "future" frames forever.
        self.max_backward_jump_ns = max_backward_jump_ns
        self._stamps: list[int] = []
        self._frames: list[Frame[T]] = []
        self._cond = threading.Condition()
        self._evicted = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def evicted(self) -> int:
        """Frames pushed out by newer ones since construction."""
        with self._cond:
            return self._evicted

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)

    def resize(self, capacity: int) -> None:
        if int(capacity) < 1:
            raise ValueError(f"frame buffer capacity must be >= 1, got {capacity}")
        with self._cond:
            self._capacity = int(capacity)
            self._trim()

    def clear(self) -> None:
        with self._cond:
            self._stamps.clear()
            self._frames.clear()

    def push(self, stamp_ns: int, item: T) -> bool:
        """Buffer a frame; True when it cleared the buffer because time jumped back."""
        frame = Frame(int(stamp_ns), item)
        reset = False
        with self._cond:
            limit = self.max_backward_jump_ns
            if limit is not None and self._stamps and frame.stamp_ns < self._stamps[-1] - limit:
                self._stamps.clear()
                self._frames.clear()
                reset = True
            index = bisect.bisect_left(self._stamps, frame.stamp_ns)
            if index < len(self._stamps) and self._stamps[index] == frame.stamp_ns:
                self._frames[index] = frame
            else:
                self._stamps.insert(index, frame.stamp_ns)
                self._frames.insert(index, frame)
                self._trim()
            self._cond.notify_all()
        return reset

    def _trim(self) -> None:
        excess = len(self._frames) - self._capacity
        if excess > 0:
            del self._stamps[:excess]
            del self._frames[:excess]
            self._evicted += excess

    def latest(self) -> Optional[Frame[T]]:
        with self._cond:
            return self._frames[-1] if self._frames else None

    def span(self) -> Optional[tuple[int, int]]:
        """(oldest, newest) buffered stamps, or None when empty."""
        with self._cond:
            return (self._stamps[0], self._stamps[-1]) if self._stamps else None

    def match(self, stamp_ns: int, tolerance_ns: int) -> MatchResult[T]:
        """The frame with ``stamp_ns`` exactly, else the nearest within ``tolerance_ns``."""
        with self._cond:
            return self._match_locked(int(stamp_ns), max(0, int(tolerance_ns)))

    def wait_match(self, stamp_ns: int, tolerance_ns: int, timeout_s: float) -> MatchResult[T]:
        """As :meth:`match`, but waits up to ``timeout_s`` while the frame may still arrive."""
        deadline = time.monotonic() + max(0.0, float(timeout_s))
        stamp_ns, tolerance_ns = int(stamp_ns), max(0, int(tolerance_ns))
        with self._cond:
            while True:
                result = self._match_locked(stamp_ns, tolerance_ns)
                remaining = deadline - time.monotonic()
                if result.status not in (MatchStatus.NOT_YET, MatchStatus.EMPTY) or remaining <= 0:
                    return result
                self._cond.wait(remaining)

    def _match_locked(self, stamp_ns: int, tolerance_ns: int) -> MatchResult[T]:
        if not self._frames:
            return MatchResult(MatchStatus.EMPTY, None, 0, "no frame received yet")
        index = bisect.bisect_left(self._stamps, stamp_ns)
        if index < len(self._stamps) and self._stamps[index] == stamp_ns:
            return MatchResult(MatchStatus.EXACT, self._frames[index], 0, "exact stamp")
        candidates = [i for i in (index - 1, index) if 0 <= i < len(self._stamps)]
        best = min(candidates, key=lambda i: abs(self._stamps[i] - stamp_ns))
        offset = self._stamps[best] - stamp_ns
        if abs(offset) <= tolerance_ns:
            return MatchResult(
                MatchStatus.NEAREST, self._frames[best], offset,
                f"nearest frame {offset / 1e6:+.3f} ms away",
            )
        oldest, newest = self._stamps[0], self._stamps[-1]
        span = f"buffered {format_ns(oldest)} .. {format_ns(newest)}, {len(self._stamps)} frames"
        if stamp_ns < oldest:
            return MatchResult(
                MatchStatus.TOO_OLD, None, 0,
                f"stamp {format_ns(stamp_ns)} is {(oldest - stamp_ns) / 1e9:.3f} s older than the "
                f"oldest buffered frame ({span})",
            )
        if stamp_ns > newest:
            return MatchResult(
                MatchStatus.NOT_YET, None, 0,
                f"stamp {format_ns(stamp_ns)} is {(stamp_ns - newest) / 1e9:.3f} s newer than the "
                f"newest frame ({span})",
            )
        return MatchResult(
            MatchStatus.NOT_FOUND, None, 0,
            f"no frame within {tolerance_ns / 1e6:.3f} ms of stamp {format_ns(stamp_ns)} "
            f"(nearest is {abs(offset) / 1e6:.3f} ms away; {span})",
        )


# A frame with these statuses may still arrive: the lookup is worth repeating until a deadline.
PENDING_STATUSES = frozenset({MatchStatus.NOT_YET, MatchStatus.EMPTY})


@dataclass(frozen=True)
class Waiting(Generic[W]):
    stamp_ns: int
    deadline: float  # time.monotonic() seconds
    item: W


class WaitingRoom(Generic[W]):
    """Items that wait for the frame with their stamp, without blocking a thread; thread-safe.

    At most ``capacity`` items wait: ``add`` makes room by pushing out the oldest arrivals (and
    returns them, so the caller can count them). ``pop_ready`` takes out every item whose lookup
    is decided (matched, or failed for good: too old, not found); ``pop_expired`` those past their
    deadline; ``drain`` all of them. A closed room (after ``drain(close=True)``) refuses new items
    until ``reopen``, so that nothing is left waiting behind a stopped consumer.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = max(1, int(capacity))
        self._items: list[Waiting[W]] = []  # arrival order
        self._lock = threading.Lock()
        self._closed = False

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def set_capacity(self, capacity: int) -> list[W]:
        """Change the bound; returns the oldest items pushed out by a lower one."""
        with self._lock:
            self._capacity = max(1, int(capacity))
            return self._trim(self._capacity)

    def _trim(self, keep: int) -> list[W]:
        excess = len(self._items) - keep
        if excess <= 0:
            return []
        out = [w.item for w in self._items[:excess]]
        del self._items[:excess]
        return out

    def add(self, stamp_ns: int, item: W, deadline: float) -> tuple[bool, list[W]]:
        """(accepted, older items pushed out to make room); not accepted while closed."""
        with self._lock:
            if self._closed:
                return False, []
            evicted = self._trim(self._capacity - 1)
            self._items.append(Waiting(int(stamp_ns), float(deadline), item))
            return True, evicted

    def pop_ready(self, frames: FrameBuffer[T], tolerance_ns: int) -> list[tuple[W, MatchResult[T]]]:
        """Items whose frame lookup is decided now, with its result (ok or a final failure)."""
        with self._lock:
            if not self._items:
                return []
            ready: list[tuple[W, MatchResult[T]]] = []
            keep: list[Waiting[W]] = []
            for waiting in self._items:
                result = frames.match(waiting.stamp_ns, tolerance_ns)
                if result.status in PENDING_STATUSES:
                    keep.append(waiting)
                else:
                    ready.append((waiting.item, result))
            self._items = keep
            return ready

    def pop_expired(self, now: float) -> list[tuple[int, W]]:
        """(stamp, item) of the items whose deadline is at or before ``now``."""
        with self._lock:
            if not self._items:
                return []
            expired = [(w.stamp_ns, w.item) for w in self._items if w.deadline <= now]
            if expired:
                self._items = [w for w in self._items if w.deadline > now]
            return expired

    def drain(self, close: bool = False) -> list[W]:
        """Take every waiting item out; with ``close``, refuse new ones until :meth:`reopen`."""
        with self._lock:
            out = [w.item for w in self._items]
            self._items = []
            if close:
                self._closed = True
            return out

    def reopen(self) -> None:
        with self._lock:
            self._closed = False
