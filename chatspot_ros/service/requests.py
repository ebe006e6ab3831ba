"""Request accounting (ROS-free): what kind a unit of work is, its one outcome, and who is still open.

* :class:`RequestKind` names the kinds of work the node takes (detections, click, ask, suggest,
  describe) and the counter each is accounted under (``detections``, ``clicks``, ``requests``);
  callers branch on the kind (``kind.is_service``), never on counter names.
* A :class:`PendingRequest` is finished exactly once, its outcome counted once under
  ``<counter>.<status>`` (see :mod:`chatspot_ros.service.stats`), whichever path gets there first: the
  worker, a drop from the queue, a timeout or a deactivation. A status that is not an outcome of
  its kind is a bug and raises.
* A :class:`RequestTracker` knows which service calls / goals are still being handled, so that a
  deactivation waits on it (a condition, not a fixed sleep) and can stop them all.
"""
from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Protocol

from chatspot_ros.referring import ReferringInstruction

# Outcome counters per counter name, in the order the balance identity lists them (docs/node.md).
OUTCOMES: Mapping[str, tuple[str, ...]] = {
    "images": ("rejected", "buffered"),
    "detections": ("rejected", "empty", "dropped", "unmatched", "answered", "failed"),
    "clicks": ("rejected", "dropped", "unmatched", "answered", "failed"),
    "requests": ("rejected", "served", "failed", "cancelled"),
}


class RequestKind(enum.Enum):
    DETECTIONS = "detections"
    CLICK = "click"
    ASK = "ask"
    SUGGEST = "suggest"
    DESCRIBE = "describe"

    @property
    def counter(self) -> str:
        """The counter prefix its outcomes are accounted under."""
        return {"detections": "detections", "click": "clicks"}.get(self.value, "requests")

    @property
    def is_service(self) -> bool:
        """A service call or action goal: a caller waits for its answer."""
        return self in (RequestKind.ASK, RequestKind.SUGGEST, RequestKind.DESCRIBE)

    @property
    def stopped_status(self) -> str:
        """The outcome of work stopped before it finished: a caller's request is "cancelled" (it gets
        its partial answer); a stream input (detections, click) "failed" (nothing is published)."""
        return "cancelled" if self.is_service else "failed"


class Counter(Protocol):
    def incr(self, name: str, n: int = 1) -> None: ...


@dataclass
class Outcome:
    success: bool
    message: str
    texts: tuple[str, ...] = ()  # one per instruction
    instructions: tuple[ReferringInstruction, ...] = ()
    frame: Optional[Any] = None  # the frame answered about (a service.agent_service.FrameLike)


class PendingRequest:
    """A request handed to the worker: finished exactly once, its outcome counted once."""

    def __init__(self, stats: Counter, kind: RequestKind,
                 stop_check: Optional[Callable[[], Optional[str]]] = None) -> None:
        if not isinstance(kind, RequestKind):
            raise TypeError(f"kind must be a RequestKind, got {kind!r}")
        self._stats = stats
        self.kind = kind
        # Returns a reason to stop (e.g. "cancelled"), or None; polled while the model generates.
        self.stop_check = stop_check
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.outcome: Optional[Outcome] = None
        self._stop_reason: Optional[str] = None

    @property
    def counter(self) -> str:
        return self.kind.counter

    def finish(self, status: str, outcome: Outcome) -> bool:
        """Record the outcome under ``status`` (one of OUTCOMES[kind.counter]); False if already done."""
        if status not in OUTCOMES[self.kind.counter]:
            raise ValueError(f"{status!r} is not an outcome of {self.kind.value} ({OUTCOMES[self.kind.counter]})")
        with self._lock:
            if self.outcome is not None:
                return False
            self.outcome = outcome
        self._stats.incr(f"{self.kind.counter}.{status}")
        self._done.set()
        return True

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


class RequestTracker:
    """The service calls and goals being handled now, and the responses still owed; thread-safe.

    A call is *open* from ``enter`` until its handler returns (``leave``); its response is *owed*
    from ``enter`` until the middleware has it (``sent``). rclpy sends a service response after
    the handler returned, and an action result from a later executor task (and only once the
    client asked for it), so a deactivation waits for both (:meth:`wait_idle`, then
    :meth:`wait_sent`) before it destroys the servers: a condition, not a fixed sleep.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open: dict[int, PendingRequest] = {}
        self._owed = 0

    def enter(self, request: PendingRequest) -> None:
        with self._cond:
            self._open[id(request)] = request
            self._owed += 1

    def leave(self, request: PendingRequest) -> None:
        with self._cond:
            self._open.pop(id(request), None)
            self._cond.notify_all()

    def sent(self) -> None:
        """One response (service response or action result) was handed to the middleware."""
        with self._cond:
            self._owed = max(0, self._owed - 1)
            self._cond.notify_all()

    @property
    def owed(self) -> int:
        with self._cond:
            return self._owed

    def open_requests(self) -> list[PendingRequest]:
        with self._cond:
            return list(self._open.values())

    def __len__(self) -> int:
        with self._cond:
            return len(self._open)

    def stop_all(self, reason: str) -> int:
        """Ask every open request to stop; how many there were."""
        requests = self.open_requests()
        for request in requests:
            request.stop(reason)
        return len(requests)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is open (their handlers returned); False after ``timeout``."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._open, timeout)

    def wait_sent(self, timeout: float) -> int:
        """Wait until every owed response was sent; then forget the rest (a goal whose client never
        asked for its result owes nothing it can still deliver). Returns how many were forgotten."""
        with self._cond:
            self._cond.wait_for(lambda: self._owed == 0, timeout)
            forgotten, self._owed = self._owed, 0
            return forgotten
