"""The inference worker: one thread owns the model; two bounded queues feed it (ROS-free).

* ``requests`` (service calls, action goals, clicks): bounded; a full queue refuses the new job
  ("busy") so the caller gets an answer at once. Served first, so a planner's question is never
  starved by the camera stream; but while a stream job waits, at most ``requests_per_detection``
  requests run in a row, then one stream job runs (its guaranteed share, so that the stream is
  not starved by back-to-back service calls either; ``share_turns`` counts those turns).
* ``stream`` (detection messages): bounded, newest kept: when full, the oldest pending job is
  dropped (its ``on_drop`` is called, so it is counted and logged).

Subscription and service callbacks only enqueue; the model runs here, never on an executor
thread.
"""
from __future__ import annotations

import collections
import threading
from typing import Callable, Optional


class Job:
    """A unit of model work. ``run`` does it (and reports its own result); ``on_drop(reason)`` is
    called instead when the job is dropped before it runs (queue overflow, node deactivated), and
    ``on_fail(reason)`` (default: ``on_drop``) when ``run`` raised, so that the job's owner still
    gets an outcome."""

    def __init__(self, kind: str, run: Callable[[], None], on_drop: Callable[[str], None],
                 on_fail: Optional[Callable[[str], None]] = None) -> None:
        self.kind = kind
        self._run = run
        self._on_drop = on_drop
        self._on_fail = on_fail if on_fail is not None else on_drop

    def run(self) -> None:
        self._run()

    def drop(self, reason: str) -> None:
        self._on_drop(reason)

    def fail(self, reason: str) -> None:
        self._on_fail(reason)


class InferenceWorker:
    def __init__(
        self,
        max_pending_requests: int,
        max_pending_stream: int,
        on_error: Callable[[Job, Exception], None],
        name: str = "chatspot_inference",
        requests_per_detection: int = 4,
        on_share_turn: Optional[Callable[[], None]] = None,
    ) -> None:
        self._on_share_turn = on_share_turn
        self._max_requests = max(1, int(max_pending_requests))
        self._max_stream = max(1, int(max_pending_stream))
        self._requests_per_stream = max(1, int(requests_per_detection))
        self._requests_in_row = 0  # requests run since the last stream job, while one waited
        self.share_turns = 0  # stream jobs run ahead of waiting requests (their share)
        self._requests: collections.deque[Job] = collections.deque()
        self._stream: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._running = False
        self._current: Optional[Job] = None
        self._on_error = on_error
        self._name = name
        self._thread: Optional[threading.Thread] = None

    # -- configuration ------------------------------------------------------------------------

    def set_limits(self, max_pending_requests: int, max_pending_stream: int,
                   requests_per_detection: Optional[int] = None) -> None:
        dropped: list[Job] = []
        with self._cond:
            if requests_per_detection is not None:
                self._requests_per_stream = max(1, int(requests_per_detection))
            self._max_requests = max(1, int(max_pending_requests))
            self._max_stream = max(1, int(max_pending_stream))
            while len(self._stream) > self._max_stream:
                dropped.append(self._stream.popleft())
        for job in dropped:
            job.drop("queue limit lowered")

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, reason: str, timeout: float = 30.0) -> bool:
        """Drop every pending job with ``reason`` and wait for the running one; True if it ended."""
        with self._cond:
            self._running = False
            pending = list(self._requests) + list(self._stream)
            self._requests.clear()
            self._stream.clear()
            self._cond.notify_all()
        for job in pending:
            job.drop(reason)
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            return not thread.is_alive()
        return True

    @property
    def running(self) -> bool:
        with self._cond:
            return self._running

    # -- queues -------------------------------------------------------------------------------

    def submit_request(self, job: Job) -> bool:
        """Queue a request; False (job not queued) when the queue is full or the worker stopped."""
        with self._cond:
            if not self._running or len(self._requests) >= self._max_requests:
                return False
            self._requests.append(job)
            self._cond.notify()
            return True

    def submit_stream(self, job: Job) -> Optional[Job]:
        """Queue a stream job, dropping (and returning) the oldest one when full.

        When the worker is stopped the new job itself is dropped and returned."""
        with self._cond:
            if not self._running:
                dropped: Optional[Job] = job
            else:
                dropped = self._stream.popleft() if len(self._stream) >= self._max_stream else None
                self._stream.append(job)
                self._cond.notify()
        if dropped is not None:
            dropped.drop("stopped" if dropped is job else "queue full: a newer message replaced it")
        return dropped

    def depths(self) -> tuple[int, int, bool]:
        """(pending requests, pending stream jobs, a job is running)."""
        with self._cond:
            return len(self._requests), len(self._stream), self._current is not None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and not self._requests and not self._stream:
                    self._cond.wait()
                if not self._running:
                    return
                job = self._next_locked()
                self._current = job
            try:
                job.run()
            except Exception as exc:  # noqa: BLE001 - reported, counted, the job failed; the worker keeps serving
                self._report(job, exc)
            finally:
                with self._cond:
                    self._current = None

    def _next_locked(self) -> Job:
        """Requests first; a waiting stream job after ``requests_per_detection`` requests in a row."""
        if self._stream and (not self._requests or self._requests_in_row >= self._requests_per_stream):
            if self._requests:
                self.share_turns += 1
                if self._on_share_turn is not None:
                    self._on_share_turn()
            self._requests_in_row = 0
            return self._stream.popleft()
        if self._stream:
            self._requests_in_row += 1
        else:
            self._requests_in_row = 0
        return self._requests.popleft()

    def _report(self, job: Job, exc: Exception) -> None:
        self._on_error(job, exc)
        try:
            job.fail(f"internal error: {type(exc).__name__}: {exc}")
        except Exception as fail_exc:  # noqa: BLE001 - a failing fail handler is reported too
            self._on_error(job, fail_exc)
