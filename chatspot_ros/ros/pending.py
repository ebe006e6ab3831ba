"""Bookkeeping of one unit of work handed to the inference worker (ROS-free).

A :class:`PendingRequest` is finished exactly once, and its outcome counted once under
``<counter>.<status>`` (see :mod:`chatspot_ros.ros.stats`), whichever path gets there first: the
worker, a drop from the queue, a timeout or a deactivation.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

from chatspot_ros.referring import ReferringInstruction
from chatspot_ros.ros.stats import Stats


@dataclass
class Outcome:
    success: bool
    message: str
    texts: tuple[str, ...] = ()  # one per instruction
    instructions: tuple[ReferringInstruction, ...] = ()
    header: Optional[Any] = None  # std_msgs/Header of the frame answered about


class PendingRequest:
    """A request handed to the worker: finished exactly once, its outcome counted once."""

    def __init__(self, stats: Stats, counter: str,
                 stop_check: Optional[Callable[[], Optional[str]]] = None) -> None:
        self._stats = stats
        self._counter = counter  # "requests" | "clicks" | "detections"
        # Returns a reason to stop (e.g. "cancelled"), or None; polled while the model generates.
        self.stop_check = stop_check
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.outcome: Optional[Outcome] = None
        self._stop_reason: Optional[str] = None

    def finish(self, status: str, outcome: Outcome) -> bool:
        """Record the outcome under ``status`` (one of stats.OUTCOMES); False if already done."""
        with self._lock:
            if self.outcome is not None:
                return False
            self.outcome = outcome
        self._stats.incr(f"{self._counter}.{status}")
        self._done.set()
        return True

    @property
    def counter(self) -> str:
        return self._counter

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def stop(self, reason: str) -> None:
        """Ask the running generation to stop (cancel, preempt, timeout, shutdown)."""
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason

    @property
    def stop_reason(self) -> Optional[str]:
        with self._lock:
            return self._stop_reason

    def should_stop(self) -> bool:
        check = self.stop_check
        if check is not None:
            reason = check()
            if reason is not None:
                self.stop(reason)
        return self.stop_reason is not None or self.finished
