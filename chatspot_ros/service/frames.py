"""A bounded, stamp-ordered ring buffer of camera frames and stamp matching (no ROS).

Detections, clicks and service requests name the frame they refer to by its stamp. The buffer
keeps the last ``capacity`` frames in stamp order and answers "which frame has this stamp?":
exactly, or the nearest within a tolerance. A stamp that matches no frame gets a reason
(:class:`MatchStatus`) so the caller can count and log it instead of dropping it silently.

A message that names a frame which has not arrived yet waits in a :class:`WaitingRoom` (bounded,
with a deadline) instead of blocking a thread: it is looked up again when a frame arrives and on
a timer, and leaves the room matched, definitively unmatched, expired or dropped.

:class:`FrameMatcher` is the one type a caller (the ROS node, a bag replayer, an evaluation loop)
feeds and reads: it owns the buffer, the waiting room and the one wait rule (:class:`MatchPolicy`)
that both a non-blocking consumer (detection messages, released on frames and on ``poll``) and a
blocking one (a service call, ``wait``) follow: a lookup that may still succeed (the frame is newer
than every buffered one, or nothing is buffered) is repeated until ``wait_s`` after arrival; any
other result is final at once.

Stamps are integer nanoseconds (``sec * 10**9 + nanosec``) so equality is exact.
"""
from __future__ import annotations

import bisect
import enum
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, Optional, TypeVar

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
    buffered one replaces it) and evicts the oldest when full. ``match`` looks a stamp up, without
    waiting: waiting for a frame that has not arrived yet (a detector's output can overtake the
    image it was computed from) is :class:`FrameMatcher`'s job.
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
class MatchPolicy:
    """The one wait rule (``frames.match_tolerance_s``, ``frames.wait_s``).

    A stamp matches the frame with that stamp, else the nearest within ``tolerance_ns``. A lookup
    whose frame may still arrive (:data:`PENDING_STATUSES`) is repeated until ``wait_s`` after the
    request arrived; with ``wait_s`` 0 it is final at once. Any other result is final at once."""

    tolerance_ns: int = 0
    wait_s: float = 0.0

    def __post_init__(self) -> None:
        if int(self.tolerance_ns) < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance_ns} ns")
        if not float(self.wait_s) >= 0.0:
            raise ValueError(f"wait_s must be >= 0, got {self.wait_s}")

    def deadline(self, arrived: float) -> float:
        """The last moment (monotonic seconds) a request that arrived at ``arrived`` waits."""
        return float(arrived) + float(self.wait_s)

    def settled(self, result: MatchResult[T], now: float, deadline: float) -> bool:
        """True when ``result`` is the request's final lookup."""
        return result.status not in PENDING_STATUSES or now >= deadline


@dataclass(frozen=True)
class Waiting(Generic[W]):
    stamp_ns: int
    deadline: float  # time.monotonic() seconds
    item: W


class WaitingRoom(Generic[W]):
    """Items that wait for the frame with their stamp, without blocking a thread; thread-safe.

    At most ``capacity`` items wait: ``add`` makes room by pushing out the oldest arrivals (and
    returns them, so the caller can count them). ``pop_settled`` takes out every item whose lookup
    the :class:`MatchPolicy` calls settled (matched, failed for good: too old, not found, or past
    its deadline); ``drain`` all of them. A closed room (after ``drain(close=True)``) refuses new items
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

    def pop_settled(self, frames: FrameBuffer[T], policy: MatchPolicy,
                    now: float) -> list[tuple[W, MatchResult[T]]]:
        """Items whose lookup ``policy`` calls settled at ``now`` (matched, failed for good, or past
        their deadline), with that lookup, in arrival order; the others keep waiting."""
        with self._lock:
            if not self._items:
                return []
            settled: list[tuple[W, MatchResult[T]]] = []
            keep: list[Waiting[W]] = []
            for waiting in self._items:
                result = frames.match(waiting.stamp_ns, policy.tolerance_ns)
                if policy.settled(result, now, waiting.deadline):
                    settled.append((waiting.item, result))
                else:
                    keep.append(waiting)
            self._items = keep
            return settled

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


# ------------------------------------------------------------------------------------------------
# FrameMatcher: the buffer, the waiting room and the wait rule in one place.


class Arrival(enum.Enum):
    """What :meth:`FrameMatcher.submit` did with an item."""
    MATCHED = "matched"  # its frame is buffered: ``Submitted.result`` holds it
    UNMATCHED = "unmatched"  # final failure (too old, not found, or not there with wait_s 0)
    WAITING = "waiting"  # its frame may still arrive: released later by push() or poll()
    REFUSED = "refused"  # the matcher is closed (the consumer stopped): the caller drops it


@dataclass(frozen=True)
class Submitted(Generic[T, W]):
    arrival: Arrival
    result: Optional[MatchResult[T]]  # set for MATCHED and UNMATCHED
    evicted: tuple[W, ...] = ()  # older waiting items pushed out to make room (the caller drops them)


@dataclass(frozen=True)
class Released(Generic[T, W]):
    """A waiting item whose lookup is settled: matched (``result.ok``) or unmatched, with the reason."""
    item: W
    result: MatchResult[T]


@dataclass(frozen=True)
class Pushed(Generic[T, W]):
    time_jump: bool  # the frame cleared the buffer: time jumped back (frames.max_backward_jump_s)
    released: tuple[Released[T, W], ...]  # waiting items this frame settled


class FrameMatcher(Generic[T, W]):
    """Frames by stamp and the items (detection messages, requests) that name one; thread-safe.

    Feed it frames (:meth:`push`) and items that name a frame by stamp (:meth:`submit`, which
    never blocks, or :meth:`wait`, which blocks the calling thread); read the outcomes from their
    return values and from :meth:`poll` (call it on a timer so that an item whose frame never comes
    is released unmatched at most one period after its deadline). Every submitted item comes back
    exactly once: matched, unmatched, evicted (the room holds ``max_waiting`` items: the oldest
    arrival is pushed out) or drained by :meth:`close`. The wait rule is :class:`MatchPolicy`.
    """

    def __init__(self, capacity: int = 30, policy: Optional[MatchPolicy] = None, max_waiting: int = 1,
                 max_backward_jump_ns: Optional[int] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition()
        self._buffer: FrameBuffer[T] = FrameBuffer(capacity, max_backward_jump_ns)
        self._room: WaitingRoom[W] = WaitingRoom(max_waiting)
        self._policy = policy if policy is not None else MatchPolicy()
        self._clock = clock
        self._closed = False

    # -- settings ---------------------------------------------------------------------------------

    @property
    def policy(self) -> MatchPolicy:
        return self._policy

    def configure(self, *, capacity: Optional[int] = None, policy: Optional[MatchPolicy] = None,
                  max_waiting: Optional[int] = None,
                  max_backward_jump_ns: Optional[int] = None) -> tuple[W, ...]:
        """Change settings at run time; returns waiting items pushed out by a lower ``max_waiting``."""
        with self._cond:
            if capacity is not None:
                self._buffer.resize(capacity)
            if policy is not None:
                self._policy = policy
            if max_backward_jump_ns is not None:
                self._buffer.max_backward_jump_ns = int(max_backward_jump_ns)
            evicted = self._room.set_capacity(max_waiting) if max_waiting is not None else []
            self._cond.notify_all()
        return tuple(evicted)

    # -- frames -----------------------------------------------------------------------------------

    def push(self, stamp_ns: int, item: T) -> Pushed[T, W]:
        """Buffer a frame and release the waiting items it settles (stamp lookups only)."""
        with self._cond:
            time_jump = self._buffer.push(stamp_ns, item)
            released = self._settle_locked()
            self._cond.notify_all()
        return Pushed(time_jump, released)

    def lookup(self, stamp_ns: int) -> MatchResult[T]:
        """The frame with ``stamp_ns`` (exact or nearest within the tolerance), without waiting."""
        return self._buffer.match(stamp_ns, self._policy.tolerance_ns)

    def latest(self) -> Optional[Frame[T]]:
        return self._buffer.latest()

    def span(self) -> Optional[tuple[int, int]]:
        return self._buffer.span()

    @property
    def frames_buffered(self) -> int:
        return len(self._buffer)

    @property
    def capacity(self) -> int:
        return self._buffer.capacity

    @property
    def waiting(self) -> int:
        """Items waiting for their frame now."""
        return len(self._room)

    def clear(self) -> None:
        """Forget every frame (cleanup); waiting items stay (close() drains them)."""
        with self._cond:
            self._buffer.clear()

    # -- items ------------------------------------------------------------------------------------

    def submit(self, stamp_ns: int, item: W) -> Submitted[T, W]:
        """Look ``item``'s frame up; if it may still arrive, let the item wait (never blocks)."""
        with self._cond:
            if self._closed:
                return Submitted(Arrival.REFUSED, None)
            now = self._clock()
            policy = self._policy
            result = self._buffer.match(stamp_ns, policy.tolerance_ns)
            if policy.settled(result, now, policy.deadline(now)):
                return Submitted(Arrival.MATCHED if result.ok else Arrival.UNMATCHED, result)
            accepted, evicted = self._room.add(stamp_ns, item, policy.deadline(now))
            if not accepted:  # pragma: no cover - the room is closed only with the matcher
                return Submitted(Arrival.REFUSED, None, tuple(evicted))
            return Submitted(Arrival.WAITING, None, tuple(evicted))

    def poll(self) -> tuple[Released[T, W], ...]:
        """Release the waiting items whose lookup is settled now (their frame came or the deadline passed)."""
        with self._cond:
            return self._settle_locked()

    def wait(self, stamp_ns: int) -> MatchResult[T]:
        """Block until the lookup of ``stamp_ns`` is settled by the same rule (or the matcher closes)."""
        with self._cond:
            start = self._clock()
            while True:
                policy = self._policy
                deadline = policy.deadline(start)
                result = self._buffer.match(stamp_ns, policy.tolerance_ns)
                now = self._clock()
                if self._closed or policy.settled(result, now, deadline):
                    return result
                self._cond.wait(max(0.0, deadline - now))

    def close(self) -> tuple[W, ...]:
        """Take every waiting item out (the caller drops them) and refuse new ones until
        :meth:`reopen`; blocked :meth:`wait` calls return their current lookup."""
        with self._cond:
            self._closed = True
            drained = self._room.drain(close=True)
            self._cond.notify_all()
        return tuple(drained)

    def reopen(self) -> None:
        with self._cond:
            self._closed = False
            self._room.reopen()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def _settle_locked(self) -> tuple[Released[T, W], ...]:
        settled = self._room.pop_settled(self._buffer, self._policy, self._clock())
        return tuple(Released(item, result) for item, result in settled)
