"""Counters and per-stage latencies of the agent node (ROS-free, thread-safe).

The node counts every input event into exactly one outcome so the totals add up, e.g. for
detection messages::

    received == rejected + empty + dropped + unmatched + answered + failed + pending

(:meth:`Stats.balance` checks such an identity). ``/diagnostics`` publishes a snapshot.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from chatspot_ros.service.requests import OUTCOMES  # one definition, beside the request kinds

STAGES = ("conversion", "vision", "prefill", "decode", "total")
__all__ = ["OUTCOMES", "STAGES", "LogLimiter", "StageSummary", "Stats"]


@dataclass(frozen=True)
class StageSummary:
    count: int
    last_ms: float
    mean_ms: float  # over the last `window` observations
    max_ms: float  # over the last `window` observations


class Stats:
    def __init__(self, window: int = 100) -> None:
        self._lock = threading.Lock()
        self._counters: collections.Counter[str] = collections.Counter()
        self._window = int(window)
        self._stages: dict[str, collections.deque[float]] = {}
        self._stage_counts: collections.Counter[str] = collections.Counter()
        self._tokens: collections.deque[tuple[int, float]] = collections.deque(maxlen=self._window)

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def get(self, name: str) -> int:
        with self._lock:
            return self._counters[name]

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def observe(self, stage: str, ms: float) -> None:
        with self._lock:
            values = self._stages.get(stage)
            if values is None:
                values = self._stages[stage] = collections.deque(maxlen=self._window)
            values.append(float(ms))
            self._stage_counts[stage] += 1

    def observe_tokens(self, tokens: int, decode_ms: float) -> None:
        if tokens > 0 and decode_ms > 0:
            with self._lock:
                self._tokens.append((int(tokens), float(decode_ms)))

    def tokens_per_s(self) -> float:
        with self._lock:
            tokens = sum(t for t, _ in self._tokens)
            ms = sum(m for _, m in self._tokens)
        return 1000.0 * tokens / ms if ms > 0 else 0.0

    def stages(self) -> dict[str, StageSummary]:
        with self._lock:
            out = {}
            for stage, values in self._stages.items():
                if values:
                    out[stage] = StageSummary(self._stage_counts[stage], values[-1],
                                              sum(values) / len(values), max(values))
            return out

    def balance(self, kind: str, pending: int = 0) -> int:
        """received - (sum of outcomes + pending) for an input kind; 0 when the counts add up."""
        with self._lock:
            received = self._counters[f"{kind}.received"]
            outcomes = sum(self._counters[f"{kind}.{o}"] for o in OUTCOMES[kind])
        return received - outcomes - pending


class LogLimiter:
    """At most one log line per ``period_s`` for each kind of event (its key, e.g. the counter it
    goes with), so that a flood of one kind neither fills the log nor hides the other kinds; the
    next line says how many were held back. The counters still count every event."""

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._period = float(period_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def allow(self, key: str) -> Optional[int]:
        """None when this line is to be held back; else how many lines of ``key`` were held back
        since the last one that was let through."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period:
                self._held[key] += 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)
