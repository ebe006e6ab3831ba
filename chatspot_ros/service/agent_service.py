"""AgentService: the agent without ROS. It owns the frame matcher, the model worker, request
tracking, statistics, the instruction planner and the :class:`~chatspot_ros.pipeline.ChatSpot`,
and decides everything a front end (the ROS node, a replay, a test) would otherwise repeat:

* which model is loaded and how (:mod:`chatspot_ros.service.loading`);
* which frame a request or click uses (its own image, the one with its stamp, else the latest);
* request limits, the request timeout and the busy / deactivating answers;
* gating task suggestions, and refusing a detection message without a describable region;
* the seed rule, and that partial answers of a stopped stream input are not published;
* preemption of a running describe by a newer one.

Inputs are plain values (frames with ``FrameLike``, ``Query``, regions: :mod:`chatspot_ros.service.values`);
answers to a caller come back as ``Answer``; stream results (detections, clicks) go to the plain
Python callbacks of ``Outputs``, on the worker thread. Every input is counted once, with one outcome
(:mod:`chatspot_ros.service.stats`). Nothing here imports rclpy.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
import traceback
from dataclasses import replace
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

from chatspot_ros.pipeline import ChatSpot, FrameAnswers
from chatspot_ros.referring import InstructionBuilder, ReferringInstruction
from chatspot_ros.runtime.config import GenerationConfig
from chatspot_ros.runtime.errors import ModelOutOfMemory, as_model_error
from chatspot_ros.service.config import AgentConfig, changes_allowed
from chatspot_ros.service.frames import Arrival, FrameMatcher, MatchPolicy, MatchResult, format_ns
from chatspot_ros.service.imaging import ImageDecodeError
from chatspot_ros.service.inputs import DetectionRegion, check_fields, click_region
from chatspot_ros.service.loading import load_chatspot, model_info, with_model_path
from chatspot_ros.service.planning import InstructionPlanner, Plan, Role
from chatspot_ros.service.requests import Outcome, PendingRequest, RequestKind, RequestTracker
from chatspot_ros.service.stats import LogLimiter, Stats
from chatspot_ros.service.values import (Annotations, Answer, ArrayFrame, ConfigureError, DescribedRegion,
                                         Descriptions, FrameLike, Log, Outputs, Query, QuerySource, ServiceStatus,
                                         Suggestion)
from chatspot_ros.service.worker import InferenceWorker, Job

__all__ = ["AgentService", "Annotations", "Answer", "ArrayFrame", "ConfigureError", "DescribedRegion", "Descriptions",
           "FrameLike", "Log", "Outputs", "Query", "QuerySource", "ServiceStatus", "Suggestion"]

LOG_THROTTLE_S = 2.0


class _Awaiting(NamedTuple):
    """A checked detection message, submitted to the FrameMatcher until its frame is settled."""

    request: PendingRequest
    regions: list[DetectionRegion]
    where: str


# ------------------------------------------------------------------------------------ service


class AgentService:
    """See the module docstring and docs/design.md. Thread-safe: inputs may come from several
    threads; the model runs on the service's one worker thread."""

    def __init__(self, *, log: Optional[Log] = None, outputs: Optional[Outputs] = None,
                 loader: Callable[[AgentConfig], ChatSpot] = load_chatspot,
                 clock: Callable[[], float] = time.monotonic, log_throttle_s: float = LOG_THROTTLE_S) -> None:
        self.stats = Stats()
        self.tracker = RequestTracker()  # ask / suggest / describe being handled (a stop waits on it)
        self.outputs = outputs if outputs is not None else Outputs()
        self.loader = loader
        self.last_error = ""
        self._log: Log = log if log is not None else logging.getLogger("chatspot_ros.service")
        self._limiter = LogLimiter(log_throttle_s, clock)
        self._lock = threading.RLock()
        self._config: Optional[AgentConfig] = None
        self._chatspot: Optional[ChatSpot] = None
        self._model_info: dict[str, str] = {}
        self._worker: Optional[InferenceWorker] = None
        # Frames by stamp, and detection messages waiting for theirs (never on a thread); the one
        # wait rule (frames.match_tolerance_s, frames.wait_s) also serves requests with a stamp.
        self._matcher: FrameMatcher[FrameLike, _Awaiting] = FrameMatcher(1, clock=clock)
        self._image_frame_id = ""
        self._task = ""
        self._active: set[PendingRequest] = set()  # running on the model now
        self._describes: set[PendingRequest] = set()  # describe goals being handled

    # ============================================================================ state

    @property
    def config(self) -> Optional[AgentConfig]:
        return self._config

    @property
    def chatspot(self) -> Optional[ChatSpot]:
        return self._chatspot

    @property
    def builder(self) -> Optional[InstructionBuilder]:
        """The loaded checkpoint's InstructionBuilder (owned by the ChatSpot)."""
        chatspot = self._chatspot
        return chatspot.builder if chatspot is not None else None

    @property
    def model_info(self) -> dict[str, str]:
        return dict(self._model_info)

    @property
    def task(self) -> str:
        return self._task

    @property
    def image_frame_id(self) -> str:
        """The frame id of the newest image (detections in another frame are refused)."""
        return self._image_frame_id

    @property
    def running(self) -> bool:
        worker = self._worker
        return worker is not None and worker.running

    def status(self) -> ServiceStatus:
        worker = self._worker
        queue_requests, queue_detections, busy = worker.depths() if worker else (0, 0, False)
        span = self._matcher.span()
        chatspot = self._chatspot
        server = chatspot.runtime.status() if chatspot is not None else {}
        return ServiceStatus(
            configured=self._config is not None, running=self.running, model_info=self.model_info,
            last_error=self.last_error, counters=self.stats.counters(), stages=self.stats.stages(),
            tokens_per_s=self.stats.tokens_per_s(), frames_buffered=self._matcher.frames_buffered,
            frames_capacity=self._matcher.capacity, newest_stamp_ns=span[1] if span else None,
            queue_requests=queue_requests, queue_detections=queue_detections, worker_busy=busy,
            task=self._task, awaiting_frame=self._matcher.waiting, server=server)

    # ============================================================================ lifecycle

    def configure(self, parameters: Union[AgentConfig, Mapping[str, Any]]) -> AgentConfig:
        """Validate the parameters, load the model and make the worker (not started).

        ConfigureError with the reason (logged, counted as ``configure.failed``, in ``last_error``)."""
        try:
            config = parameters if isinstance(parameters, AgentConfig) else AgentConfig.from_parameters(parameters)
            config = with_model_path(config, self._log.warning)
        except (ValueError, OSError) as exc:
            raise self._configure_failed(f"invalid parameters: {exc}") from None
        start = time.perf_counter()
        try:
            chatspot = self.loader(config)
        except Exception as exc:  # noqa: BLE001 - any loading error fails configure, with its reason
            raise self._configure_failed(f"cannot load model {config.model_path!r}: "
                                         f"{type(exc).__name__}: {exc}") from None
        with self._lock:
            self._config = config
            self._chatspot = chatspot
            self._model_info = model_info(config, chatspot.runtime)
            try:
                self._set_builder_limits(config)
            except ValueError as exc:
                self.release()
                raise self._configure_failed(f"invalid referring settings: {exc}") from None
            self._matcher.clear()
            self._configure_matcher(config)  # nothing waits while unconfigured: drops nothing
            self._worker = self._new_worker(config)
        self.last_error = ""
        info = self._model_info
        self._log.info(
            f"configured: model {info.get('model')} ({info.get('family')}) on {config.model_device}/"
            f"{config.model_dtype}, vision backend {info.get('backend')}, dialect {info.get('dialect')}, "
            f"templates {info.get('templates')}, loaded in {time.perf_counter() - start:.1f} s")
        return config

    def _configure_failed(self, reason: str) -> ConfigureError:
        self.last_error = reason
        self.stats.incr("configure.failed")
        self._log.error(f"configure failed: {reason}")
        return ConfigureError(reason)

    def start(self) -> None:
        """Take inputs and run the worker (configure first)."""
        worker = self._worker
        if self._config is None or worker is None:
            raise RuntimeError("the service is not configured")
        self._matcher.reopen()
        worker.start()

    def stop(self, reason: str, timeout: float = 30.0) -> bool:
        """Stop taking inputs: drop detections waiting for a frame, stop running requests, drop
        queued jobs (each with ``reason``); the worker is replaced by a fresh one for the next
        :meth:`start`. False when the running job did not end within ``timeout``."""
        self._drop_awaiting(reason)
        with self._lock:
            running = list(self._active)
        for request in running:
            request.stop(reason)
        worker, stopped = self._worker, True
        if worker is not None:
            stopped = worker.stop(reason, timeout=timeout)
            if not stopped:
                self._log.warning(f"the inference worker did not stop within {timeout:g} s")
            config = self._config
            if config is not None:
                self._worker = self._new_worker(config)
        return stopped

    def release(self) -> None:
        """Free the model (and its GPU memory) and forget the frames; configure again to use it."""
        with self._lock:
            chatspot, self._chatspot = self._chatspot, None
            self._config = None
            self._worker = None
            self._model_info = {}
            self._describes.clear()
            self._active.clear()
        self._matcher.clear()
        if chatspot is not None:
            chatspot.close()
            del chatspot
        gc.collect()  # cycles of the model and of jobs that held frames

    def reconfigure(self, changes: Mapping[str, Any], *, state: str,
                    current: Optional[Mapping[str, Any]] = None) -> Optional[str]:
        """Change parameters (by name) at run time; the reason they are refused, or None.

        ``state`` is the lifecycle label (see :func:`changes_allowed`); while unconfigured the
        changes are only validated against ``current`` (all parameter values)."""
        if not changes:
            return None
        reason = changes_allowed(list(changes), state)
        if reason is not None:
            return reason
        base = self._config
        try:
            if base is None:
                values = dict(current or {})
                values.update(changes)
                AgentConfig.from_parameters(values)  # model.path may be empty before configure
                return None
            new = base.replace(changes)
        except ValueError as exc:
            return str(exc)
        with self._lock:
            self._config = new
            evicted = self._configure_matcher(new)
            if self._worker is not None:
                self._worker.set_limits(new.queues_max_pending_requests, new.queues_max_pending_detections,
                                        new.queues_requests_per_detection)
            if self._chatspot is not None:
                self._set_builder_limits(new)
        for waiting in evicted:
            self._drop(waiting.request, "queue limit lowered", waiting.where)
        return None

    def _set_builder_limits(self, config: AgentConfig) -> None:
        assert self._chatspot is not None
        self._chatspot.set_limits(
            max_question_chars=config.limits_max_question_chars,
            max_regions=max(config.limits_max_regions_per_request, config.limits_max_regions_per_frame),
            max_outside=config.referring_max_outside)

    def _configure_matcher(self, config: AgentConfig) -> tuple[_Awaiting, ...]:
        return self._matcher.configure(
            capacity=config.frames_buffer_size, policy=MatchPolicy(config.match_tolerance_ns, config.frames_wait_s),
            max_waiting=config.queues_max_pending_detections,
            max_backward_jump_ns=int(config.frames_max_backward_jump_s * 1e9))

    def _new_worker(self, config: AgentConfig) -> InferenceWorker:
        return InferenceWorker(config.queues_max_pending_requests, config.queues_max_pending_detections,
                               self._on_worker_error, requests_per_detection=config.queues_requests_per_detection,
                               on_share_turn=lambda: self.stats.incr("detections.share_turns"))

    def _drop_awaiting(self, reason: str) -> None:
        """Drop (and count) every detection waiting for its frame; refuse new ones until start."""
        for waiting in self._matcher.close():
            self._drop(waiting.request, reason, waiting.where)

    def abort(self, reason: str) -> None:
        """After an error: drop everything and release the model."""
        self._drop_awaiting(reason)
        if self._worker is not None:
            self._worker.stop(reason, timeout=5.0)
        self.release()

    # ============================================================================ stream inputs

    def warn(self, key: str, message: str) -> None:
        """A warning about a counted event; at most one per throttle period for each ``key`` (the
        event's counter), so that a flood of one kind does not hide the others."""
        held = self._limiter.allow(key)
        if held is not None:
            self._log.warning(message + (f" (and {held} more like it since the last report)" if held else ""))

    def push_frame(self, frame: Union[FrameLike, Callable[[AgentConfig], FrameLike]]) -> bool:
        """Buffer a frame (or one made from the config: its ValueError rejects it); the detections
        it settles are queued. False when it was rejected."""
        start = time.perf_counter()
        self.stats.incr("images.received")
        config = self._config
        if config is None:
            self.stats.incr("images.rejected")
            self.warn("images.rejected", "image rejected: the node is not configured")
            return False
        try:
            made = frame(config) if callable(frame) else frame
        except ValueError as exc:
            self.stats.incr("images.rejected")
            self.warn("images.rejected", f"image rejected: {exc}")
            return False
        pushed = self._matcher.push(made.stamp_ns, made)  # stamp lookups only: nothing is decoded
        if pushed.time_jump:
            self.stats.incr("frames.time_jumps")
            self._log.warning(f"image stamp {format_ns(made.stamp_ns)} jumped back more than "
                              f"{config.frames_max_backward_jump_s:g} s: frame buffer cleared")
        self._image_frame_id = made.frame_id
        self.stats.incr("images.buffered")
        self.stats.observe("receive", (time.perf_counter() - start) * 1e3)
        for released in pushed.released:
            self._dispatch_detections(released.item, released.result)
        return True

    def set_task(self, text: str) -> bool:
        """The task action suggestions are for ("" clears it); False when it is too long."""
        self.stats.incr("tasks.received")
        config = self._config
        text = text.strip()
        if config is not None and len(text) > config.limits_max_question_chars:
            self.stats.incr("tasks.rejected")
            self.warn("tasks.rejected", f"task rejected: {len(text)} characters, the limit is "
                                        f"{config.limits_max_question_chars} (limits.max_question_chars)")
            return False
        if text != self._task:
            self._log.info(f"task {'set to ' + repr(text) if text else 'cleared'}")
        self._task = text
        return True

    def submit_detections(self, stamp_ns: int, frame_id: str, detections: Sequence[DetectionRegion], *,
                          invalid: Sequence[str] = (), overflow: int = 0) -> None:
        """A detector's regions on the frame with ``stamp_ns`` (already capped at
        limits.max_regions_per_frame); ``invalid``: why the detections not converted were refused;
        ``overflow``: how many valid ones the cap left out. Answered on the worker once the frame is
        there (never blocks); the answers go to ``outputs``."""
        self.stats.incr("detections.received")
        config = self._config
        where = f"detections at {format_ns(stamp_ns)}"
        if config is None or self._worker is None:
            self.stats.incr("detections.rejected")
            self.warn("detections.rejected", f"{where} rejected: the node is not configured")
            return
        if not detections and not invalid and not overflow:
            self.stats.incr("detections.empty")
            self._log.debug(f"{where}: empty, nothing to describe")
            return
        image_frame = self._image_frame_id
        if frame_id and image_frame and frame_id != image_frame:
            self.stats.incr("detections.rejected")
            self.warn("detections.rejected", f"{where} rejected: frame '{frame_id}' is not the camera "
                                             f"frame '{image_frame}'")
            return
        if invalid:
            self.stats.incr("regions.rejected", len(invalid))
            self.warn("regions.rejected", f"{where}: {len(invalid)} invalid detection(s), e.g. {invalid[0]}")
        if overflow:
            cap = config.limits_max_regions_per_frame
            self.stats.incr("regions.overflow", overflow)
            self.warn("regions.overflow", f"{where}: {len(detections) + overflow} detections, answering the "
                                          f"{cap} highest-scoring (limits.max_regions_per_frame); "
                                          f"{overflow} left out")
        if not detections:
            self.stats.incr("detections.rejected")
            return
        waiting = _Awaiting(PendingRequest(self.stats, RequestKind.DETECTIONS), list(detections), where)
        submitted = self._matcher.submit(stamp_ns, waiting)
        for old in submitted.evicted:
            self._drop(old.request, "too many detection messages waiting for their frame "
                                    "(queues.max_pending_detections): a newer message replaced it", old.where)
        if submitted.arrival is Arrival.REFUSED:
            self._drop(waiting.request, "stopped", where)
        elif submitted.arrival is not Arrival.WAITING:
            assert submitted.result is not None
            self._dispatch_detections(waiting, submitted.result)

    def poll(self) -> None:
        """Call on a timer: queue waiting detections whose frame arrived, and finish as unmatched
        those whose lookup failed for good or that waited frames.wait_s in vain."""
        for released in self._matcher.poll():
            self._dispatch_detections(released.item, released.result)

    def _dispatch_detections(self, waiting: _Awaiting, match: MatchResult[FrameLike]) -> None:
        request, where = waiting.request, waiting.where
        if not match.ok:
            if request.finish("unmatched", Outcome(False, match.message)):
                self.warn("detections.unmatched", f"{where}: no frame: {match.message}")
            return
        worker = self._worker
        if worker is None:
            self._drop(request, "the node is not configured", where)
            return
        frame, regions = match.frame.item, waiting.regions
        worker.submit_stream(Job("detections", lambda: self._answer_detections(request, frame, regions, where),
                                 lambda reason: self._drop(request, reason, where),
                                 lambda reason: self._fail(request, reason, where)))

    def _answer_detections(self, request: PendingRequest, frame: FrameLike,
                           detections: list[DetectionRegion], where: str) -> None:
        """Worker: describe each detection on its frame; with a task (and task.suggest_on_detections),
        suggest actions for the first task.max_detections; refuse a message with no describable region."""
        config, builder = self._config, self.builder
        if config is None or builder is None:
            request.finish("failed", Outcome(False, "node not configured"))
            return
        task = self._task if config.task_suggest_on_detections else ""
        plan = InstructionPlanner(builder).for_detections(
            [d.region for d in detections], (frame.width, frame.height), task=task,
            suggest_for=config.task_max_detections)
        for _, reason in plan.rejected:
            self.stats.incr("regions.rejected")
            self.warn("regions.rejected", f"{where}: {reason}")
        for _, reason in plan.suggestions_rejected:
            self.stats.incr("suggestions.rejected")
            self.warn("suggestions.rejected", f"{where}: no action suggestion: {reason}")
        if plan.first(Role.DESCRIBE) is None:
            request.finish("rejected", Outcome(False, "no valid region in the image"))
            return
        result = self._run_model(request, frame, plan.instructions, config.generation_max_new_tokens, where)
        if result is None:
            return
        texts, elapsed_s = result
        described = plan.by_role(texts, Role.DESCRIBE)
        self.outputs.descriptions(Descriptions(
            frame, elapsed_s, self._model_info.get("model", ""),
            tuple(DescribedRegion(detections[a.source].label, a.instruction, a.text) for a in described),
            RequestKind.DETECTIONS))
        self._emit_suggestions(frame, plan, texts, task)
        self.stats.incr("regions.answered", len(described))
        request.finish("answered", Outcome(True, "", tuple(texts), tuple(plan.instructions), frame))
        self.outputs.annotations(Annotations(frame, tuple(
            (a.instruction.regions[0], f"{detections[a.source].label or detections[a.source].region.id}: {a.text}")
            for a in described)))

    def _emit_suggestions(self, frame: FrameLike, plan: Plan, texts: Sequence[str], task: str) -> None:
        for answered in plan.by_role(texts, Role.SUGGEST):
            self.outputs.suggestion(Suggestion(frame, answered.instruction.regions[0], task, answered.text))

    def click_frame(self, stamp_ns: int) -> Optional[FrameLike]:
        """The frame with the click's stamp, else the latest (rviz stamps clicks with 'now');
        None when no frame has arrived."""
        if stamp_ns:
            match = self._matcher.lookup(stamp_ns)
            if match.ok:
                return match.frame.item
        latest = self._matcher.latest()
        return latest.item if latest is not None else None

    def click(self, stamp_ns: int, to_pixel: Union[tuple[float, float], Callable[[FrameLike], tuple[float, float]]],
              ) -> bool:
        """A click on the frame with ``stamp_ns`` (else the latest): ``to_pixel`` is its pixel, or
        places it on the chosen frame (its ValueError rejects the click). Asks click.question about
        it (or describes it) and suggests actions for the task; answers go to ``outputs``.
        False when it was not queued (counted with the reason)."""
        self.stats.incr("clicks.received")
        config, worker, builder = self._config, self._worker, self.builder
        if config is None or worker is None or builder is None:
            self.stats.incr("clicks.rejected")
            self.warn("clicks.rejected", "click rejected: the node is not configured")
            return False
        frame = self.click_frame(stamp_ns)
        if frame is None:
            self.stats.incr("clicks.unmatched")
            self.warn("clicks.unmatched", "click ignored: no image received yet")
            return False
        task = self._task
        try:
            u, v = to_pixel(frame) if callable(to_pixel) else to_pixel
            region = click_region(u, v, frame.width, frame.height, config.click_box_size)
            plan = InstructionPlanner(builder).for_click(region, (frame.width, frame.height),
                                                         question=config.click_question, task=task)
        except ValueError as exc:
            self.stats.incr("clicks.rejected")
            self.warn("clicks.rejected", f"click rejected: {exc}")
            return False
        request = PendingRequest(self.stats, RequestKind.CLICK)
        job = Job("click", lambda: self._answer_click(request, frame, plan, task),
                  lambda reason: self._drop(request, reason, "click"),
                  lambda reason: self._fail(request, reason, "click"))
        if not worker.submit_request(job):
            request.finish("dropped", Outcome(False, "busy"))
            self.warn("clicks.dropped", "click dropped: the request queue is full (queues.max_pending_requests)")
            return False
        return True

    def _answer_click(self, request: PendingRequest, frame: FrameLike, plan: Plan, task: str) -> None:
        config = self._config
        if config is None:
            request.finish("failed", Outcome(False, "node not configured"))
            return
        result = self._run_model(request, frame, plan.instructions, config.generation_max_new_tokens, "click")
        if result is None:
            return
        texts, elapsed_s = result
        about = [a for a in plan.answers(texts) if a.role is not Role.SUGGEST]  # the description or the answer
        self.outputs.descriptions(Descriptions(
            frame, elapsed_s, self._model_info.get("model", ""),
            tuple(DescribedRegion("", a.instruction, a.text) for a in about), RequestKind.CLICK))
        self._emit_suggestions(frame, plan, texts, task)
        request.finish("answered", Outcome(True, "", tuple(texts), tuple(plan.instructions), frame))
        self.outputs.annotations(Annotations(frame, tuple((a.instruction.regions[0], a.text) for a in about)))

    def _drop(self, request: PendingRequest, reason: str, where: str) -> None:
        if request.finish("dropped", Outcome(False, reason)):
            self.warn(f"{request.counter}.dropped", f"{where} dropped: {reason}")

    def _fail(self, request: PendingRequest, reason: str, where: str) -> None:
        if request.finish("failed", Outcome(False, reason)):
            self.warn(f"{request.counter}.failed", f"{where} failed: {reason}")

    # ============================================================================ requests

    def ask(self, query: QuerySource, *, should_cancel: Optional[Callable[[], bool]] = None) -> Answer:
        """A question about regions (or the whole image); blocks until answered, refused or timed out."""
        pending = self._pending(RequestKind.ASK, should_cancel)
        return self._serve("ask", pending, lambda: self._ask(pending, query))

    def suggest(self, query: QuerySource, *, should_cancel: Optional[Callable[[], bool]] = None) -> Answer:
        """Steps for the task ``query.question`` on its region (at most one; none: the image);
        a success also goes to ``outputs.suggestion``."""
        pending = self._pending(RequestKind.SUGGEST, should_cancel)
        return self._serve("suggest_actions", pending, lambda: self._suggest(pending, query))

    def describe(self, query: QuerySource, on_token: Optional[Callable[[int, str], None]] = None, *,
                 should_cancel: Optional[Callable[[], bool]] = None) -> Answer:
        """The question about the regions, else a description; ``on_token(index, text so far)``
        streams the answer. With describe.preempt a newer describe stops this one."""
        pending = self._pending(RequestKind.DESCRIBE, should_cancel)
        self._preempt_describes()
        return self._serve("describe", pending, lambda: self._describe(pending, query, on_token))

    def cancel(self, kind: Optional[RequestKind] = None, reason: str = "cancelled") -> int:
        """Stop the open requests (of ``kind``, else all) and the running stream job; they end
        "cancelled" with their partial answer (stream inputs publish nothing). How many were told."""
        with self._lock:
            targets = set(self.tracker.open_requests()) | set(self._active)
        targets = {r for r in targets if kind is None or r.kind is kind}
        for request in targets:
            request.stop(reason)
        return len(targets)

    def _pending(self, kind: RequestKind, should_cancel: Optional[Callable[[], bool]]) -> PendingRequest:
        check = None if should_cancel is None else (lambda: "cancelled" if should_cancel() else None)
        return PendingRequest(self.stats, kind, stop_check=check)

    def _preempt_describes(self) -> None:
        config = self._config
        if config is not None and config.describe_preempt:
            with self._lock:
                running = list(self._describes)
            for request in running:
                request.stop("preempted by a newer goal")

    def _serve(self, where: str, pending: PendingRequest, handler: Callable[[], Answer]) -> Answer:
        """Every request is counted once: received, then one outcome (the handler's, or ``failed``
        with the reason when the handler raised: a bug answers, it does not hang the caller)."""
        self.stats.incr("requests.received")
        self.tracker.enter(pending)
        try:
            return handler()
        except Exception as exc:  # noqa: BLE001 - a bug answers success=false with the reason, counted
            message = f"internal error: {type(exc).__name__}: {exc}"
            self.stats.incr("internal.errors")
            pending.stop(message)
            pending.finish("failed", Outcome(False, message))
            self._log.error(f"{where}: {message}\n{traceback.format_exc()}")
            return Answer(False, message)
        finally:
            self.tracker.leave(pending)

    def _refuse(self, pending: PendingRequest, exc: Exception, where: str) -> Answer:
        pending.finish("rejected", Outcome(False, str(exc)))
        self.warn("requests.rejected", f"{where} refused: {exc}")
        return Answer(False, str(exc))

    def _prepare(self, query: QuerySource, build: Callable[[InstructionPlanner, Query, tuple[int, int]], Plan], *,
                 what: str = "question", require_question: bool = True,
                 ) -> tuple[Query, FrameLike, list[ReferringInstruction]]:
        """Checks shared by ask / suggest / describe; ValueError when the request is refused."""
        config, builder = self._config, self.builder
        if config is None or builder is None:
            raise ValueError("the node is not configured")
        made = query(config) if callable(query) else query
        check_fields(len(made.regions), made.question, made.max_new_tokens,
                     max_regions=config.limits_max_regions_per_request,
                     max_question_chars=config.limits_max_question_chars,
                     max_new_tokens_limit=config.generation_max_new_tokens_limit,
                     what=what, require_question=require_question)
        made = replace(made, question=made.question.strip(),
                       max_new_tokens=int(made.max_new_tokens) or config.generation_max_new_tokens)
        frame = self.resolve_frame(made)
        return made, frame, build(InstructionPlanner(builder), made, (frame.width, frame.height)).instructions

    def resolve_frame(self, query: Query) -> FrameLike:
        """The frame a request names: its own image, the one with its stamp (waiting up to
        frames.wait_s, blocking this thread), else the latest. ValueError when there is none."""
        if query.frame is not None:
            return query.frame
        if not query.stamp_ns:
            latest = self._matcher.latest()
            if latest is None:
                raise ValueError(f"no image received yet on '{self._image_topic()}'")
            return latest.item
        match = self._matcher.wait(query.stamp_ns)
        if not match.ok:
            raise ValueError(f"no frame for stamp {format_ns(query.stamp_ns)}: {match.message}")
        return match.frame.item

    def _image_topic(self) -> str:
        config = self._config
        if config is None:
            return "image"
        return f"{config.topics_image}/compressed" if config.image_transport == "compressed" else config.topics_image

    def _ask(self, pending: PendingRequest, query: QuerySource) -> Answer:
        try:
            made, frame, instructions = self._prepare(
                query, lambda planner, q, size: planner.for_ask(q.question, q.regions, size))
        except ValueError as exc:
            return self._refuse(pending, exc, "ask")
        answer = self._submit_and_wait(pending, frame, instructions, made, "ask")
        if answer.success:
            self.outputs.annotations(Annotations(frame, tuple((r, answer.text) for r in instructions[0].regions)))
        return answer

    def _suggest(self, pending: PendingRequest, query: QuerySource) -> Answer:
        try:
            made, frame, instructions = self._prepare(
                query, lambda planner, q, size: planner.for_suggest(q.question, q.regions[0] if q.regions else None,
                                                                    size), what="task")
        except ValueError as exc:
            return self._refuse(pending, exc, "suggest_actions")
        answer = self._submit_and_wait(pending, frame, instructions, made, "suggest_actions")
        if answer.success:
            self.outputs.suggestion(Suggestion(frame, instructions[0].regions[0], made.question, answer.text))
        return answer

    def _describe(self, pending: PendingRequest, query: QuerySource,
                  on_token: Optional[Callable[[int, str], None]]) -> Answer:
        try:
            made, frame, instructions = self._prepare(
                query, lambda planner, q, size: planner.for_describe(q.question, q.regions, size),
                require_question=False)
        except ValueError as exc:
            return self._refuse(pending, exc, "describe")
        with self._lock:
            self._describes.add(pending)
        try:
            return self._submit_and_wait(pending, frame, instructions, made, "describe", on_token)
        finally:
            with self._lock:
                self._describes.discard(pending)

    def _submit_and_wait(self, request: PendingRequest, frame: FrameLike, instructions: list[ReferringInstruction],
                         query: Query, where: str, on_token: Optional[Callable[[int, str], None]] = None) -> Answer:
        """Queue the request for the worker and wait for its outcome: refused at once when the queue
        is full ("busy") or the worker stopped ("deactivating"); failed after queues.request_timeout_s."""
        config, worker = self._config, self._worker
        if config is None or worker is None:
            request.finish("rejected", Outcome(False, "the node is not active"))
        else:
            def run() -> None:
                result = self._run_model(request, frame, instructions, query.max_new_tokens, where, on_token)
                if result is None:
                    return
                status, message = "served", ""
                if request.stop_reason is not None:
                    status, message = "cancelled", request.stop_reason
                request.finish(status, Outcome(status == "served", message, tuple(result[0]), tuple(instructions),
                                               frame))

            job = Job(where, run, lambda reason: request.finish("failed", Outcome(False, reason)))
            if not worker.submit_request(job):
                message = ("the node is deactivating" if not worker.running else
                           f"busy: {config.queues_max_pending_requests} requests are already waiting "
                           "(queues.max_pending_requests)")
                request.finish("rejected", Outcome(False, message))
            elif not request.wait(config.queues_request_timeout_s):
                request.stop("timed out")
                request.finish("failed", Outcome(False, f"timed out after {config.queues_request_timeout_s:g} s "
                                                        "(queues.request_timeout_s)"))
        outcome = request.outcome
        assert outcome is not None
        return Answer(outcome.success, outcome.message, outcome.texts[0] if outcome.texts else "",
                      instructions[0], frame, query.question,
                      cancelled=not outcome.success and bool(outcome.texts))

    # ============================================================================ model

    def generation_config(self, max_new_tokens: int) -> GenerationConfig:
        """Sampling settings of a request: generation.seed < 0 means no seed (a fresh draw each time)."""
        config = self._config
        assert config is not None
        return GenerationConfig(max_new_tokens=int(max_new_tokens), temperature=config.generation_temperature,
                                top_p=config.generation_top_p,
                                seed=None if config.generation_seed < 0 else config.generation_seed)

    def _run_model(self, request: PendingRequest, frame: FrameLike, instructions: Sequence[ReferringInstruction],
                   max_new_tokens: int, where: str, on_token: Optional[Callable[[int, str], None]] = None,
                   ) -> Optional[tuple[list[str], float]]:
        """Worker: run the model on one frame; on failure finish ``request`` and return None."""
        chatspot = self._chatspot
        if self._config is None or chatspot is None:
            request.finish("failed", Outcome(False, "node not configured"))
            return None
        if request.should_stop():
            request.finish(request.kind.stopped_status, Outcome(False, request.stop_reason or "stopped before it ran"))
            return None
        start = time.perf_counter()
        try:
            rgb = frame.rgb()
        except ImageDecodeError as exc:
            self.stats.incr("images.decode_failed")
            request.finish("failed", Outcome(False, f"cannot decode the image: {exc}"))
            self.warn("images.decode_failed", f"{where}: cannot decode the image: {exc}")
            return None
        self.stats.observe("conversion", (time.perf_counter() - start) * 1e3)
        try:
            gen = self.generation_config(max_new_tokens)
            with self._lock:
                self._active.add(request)
            result = chatspot.answer_frame(rgb, (frame.frame_id, frame.stamp_ns), list(instructions), gen,
                                           on_token=on_token, should_stop=request.should_stop)
        except Exception as exc:  # noqa: BLE001 - a model error fails this request (counted), not the service
            self._model_failed(request, as_model_error(exc), where)
            return None
        finally:
            with self._lock:
                self._active.discard(request)
        elapsed_s = time.perf_counter() - start
        self.record_timings(result, elapsed_s)
        if request.stop_reason is not None and not request.kind.is_service:
            # A detection or click stopped mid-generation (deactivation, shutdown): its partial
            # answers are not published. (Service calls and goals return theirs as "cancelled".)
            request.finish("failed", Outcome(False, request.stop_reason))
            self.warn(f"{request.counter}.failed", f"{where}: stopped: {request.stop_reason}")
            return None
        return result.texts, elapsed_s

    def record_timings(self, result: FrameAnswers, elapsed_s: float) -> None:
        """Stage latencies of one ChatSpot.answer_frame call: the core reports the vision time once
        (0 on a cache hit) and each decode batch once."""
        self.stats.observe("vision", result.vision_ms)
        self.stats.observe("prefill", result.prefill_ms)
        self.stats.observe("decode", result.decode_ms)
        self.stats.observe("total", elapsed_s * 1e3)
        self.stats.observe_tokens(result.tokens, result.decode_ms)

    def _model_failed(self, request: PendingRequest, error: Exception, where: str) -> None:
        """A typed model error (the runtime already dropped its caches after running out of memory)."""
        self.stats.incr("model.errors")
        if isinstance(error, ModelOutOfMemory):
            self.stats.incr("model.oom")
        message = f"model error: {error}"
        request.finish("failed", Outcome(False, message))
        self._log.error(f"{where}: {message}")

    def _on_worker_error(self, job: Job, exc: Exception) -> None:
        # Jobs report their own failures; reaching here is a bug. The job still fails with the
        # reason (Job.fail), so its request is answered and counted; the service keeps going.
        self.stats.incr("worker.errors")
        self._log.error(f"internal error in a {job.kind} job: {type(exc).__name__}: {exc}\n"
                        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
