"""Frames and answers between a source (ROS or in-process) and the pages, without unbounded queues.

* :class:`LatestSlot`: a thread-safe slot of size one. The source (a ROS callback) puts, the
  server takes; a put over an untaken item replaces it and counts a drop. Nothing waits on it.
* :class:`HeldFrames`: the last frames sent to the pages, by id, so that a question names the
  frozen frame the person drew on (a bounded ring).
* :class:`TokenBucket`: per-connection message rate limit.
* :class:`Counters`: every message, frame and request ends in a named counter.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class Counters:
    """Named integer counters, safe to bump from any thread."""

    def __init__(self) -> None:
        self._values: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._values.items()))


class LatestSlot(Generic[T]):
    """Latest item wins: ``put`` never blocks; an item replaced before it was taken is counted."""

    def __init__(self, counters: Counters, dropped_counter: str) -> None:
        self._item: Optional[T] = None
        self._lock = threading.Lock()
        self._counters = counters
        self._dropped = dropped_counter
        self.on_put: Optional[Callable[[], None]] = None  # e.g. wake the server's loop

    def put(self, item: T) -> None:
        with self._lock:
            if self._item is not None:
                self._counters.add(self._dropped)
            self._item = item
        if self.on_put is not None:
            self.on_put()

    def take(self) -> Optional[T]:
        with self._lock:
            item, self._item = self._item, None
            return item


@dataclass(frozen=True)
class SourceFrame:
    """A frame as the source delivered it; ``payload`` is the source's own (a ROS message, an array)."""

    stamp_sec: int
    stamp_nanosec: int
    frame_id: str
    width: int
    height: int
    payload: Any
    received: float = field(default_factory=time.monotonic)
    seq: int = 0  # the source's count of frames received when this one came

    @property
    def stamp(self) -> dict[str, int]:
        return {"sec": int(self.stamp_sec), "nanosec": int(self.stamp_nanosec)}


@dataclass(frozen=True)
class HeldFrame:
    """A frame as the pages saw it: its id, its source frame, the JPEG sent."""

    id: int
    source: SourceFrame
    jpeg: bytes

    def header(self) -> dict[str, Any]:
        return {"frame": self.id, "stamp": self.source.stamp, "frame_id": self.source.frame_id,
                "width": self.source.width, "height": self.source.height}


class HeldFrames:
    """The last ``capacity`` frames sent, by id (the oldest forgotten first); ids only grow."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._frames: OrderedDict[int, HeldFrame] = OrderedDict()
        self._next = 1
        self._lock = threading.Lock()

    def add(self, source: SourceFrame, jpeg: bytes) -> HeldFrame:
        with self._lock:
            frame = HeldFrame(self._next, source, jpeg)
            self._next += 1
            self._frames[frame.id] = frame
            while len(self._frames) > self.capacity:
                self._frames.popitem(last=False)
            return frame

    def get(self, frame_id: int) -> Optional[HeldFrame]:
        with self._lock:
            return self._frames.get(frame_id)

    def latest(self) -> Optional[HeldFrame]:
        with self._lock:
            return next(reversed(self._frames.values()), None)


class TokenBucket:
    """``rate`` messages per second on average, bursts of ``burst``; ``allow`` takes one token."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate}, {burst}")
        self.rate, self.burst, self._clock = float(rate), float(burst), clock
        self._tokens, self._last = float(burst), clock()

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
