"""The ``chatspot_agent`` lifecycle node: a thin adapter between ROS 2 and the ChatSpot core.

* ``__init__`` declares every parameter of :data:`chatspot_ros.ros.config.PARAMETERS` and starts
  ``/diagnostics`` (so a failed configure is visible);
* ``on_configure`` validates them into an :class:`AgentConfig` and loads the model (a failure is
  logged with its reason and returns FAILURE);
* ``on_activate`` starts the inference worker, the subscriptions, the services and the action;
* ``on_deactivate`` stops them (pending work fails with "node deactivated");
* ``on_cleanup`` frees the model and its GPU memory.

Callbacks only check input (with the ROS-free helpers of :mod:`chatspot_ros.ros.convert`) and
enqueue work; the model runs on one worker thread (:mod:`chatspot_ros.ros.worker`). Every input
event ends in exactly one counted outcome (see :mod:`chatspot_ros.ros.stats`).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PointStamped
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.duration import Duration as RosDuration
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import ColorRGBA, Header, String
from visualization_msgs.msg import Marker, MarkerArray

from chatspot_ros.frames import FrameBuffer, MatchResult, format_ns
from chatspot_ros.imaging import ImageDecodeError
from chatspot_ros.msg import (
    ActionSuggestion,
    RegionDescription,
    RegionDescriptionArray,
)
from chatspot_ros.projection import PinholeCamera
from chatspot_ros.referring import InstructionBuilder, ReferringInstruction, Region, parse_steps
from chatspot_ros.ros import convert
from chatspot_ros.ros.config import (
    PARAMETERS,
    PARAMETERS_BY_NAME,
    AgentConfig,
    ParamSpec,
    changes_allowed,
)
from chatspot_ros.ros.drawing import PALETTE, Annotation, draw_annotations
from chatspot_ros.ros.stats import OUTCOMES, STAGES, Stats
from chatspot_ros.ros.worker import InferenceWorker, Job
from chatspot_ros.srv import AskRegion, SuggestActions
from chatspot_ros.action import Describe

try:  # vision_msgs is not on PyPI; setup builds a wire-compatible copy when it is missing
    from vision_msgs.msg import Detection2DArray
except ImportError:  # pragma: no cover - reported at activation
    Detection2DArray = None  # type: ignore[assignment,misc]

try:  # tf2 is optional: 3D clicks outside the camera frame need it
    import tf2_geometry_msgs  # noqa: F401  (registers PointStamped with tf2)
    from tf2_ros import Buffer as TfBuffer  # type: ignore[import-not-found]
    from tf2_ros import TransformException, TransformListener  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the install
    TfBuffer = None  # type: ignore[assignment,misc]
    TransformListener = None  # type: ignore[assignment,misc]
    TransformException = Exception  # type: ignore[assignment,misc]

try:  # rclpy >= Iron
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # pragma: no cover - Humble
    from rclpy.qos_event import SubscriptionEventCallbacks  # type: ignore[no-redef]

NODE_NAME = "chatspot_agent"
_RELIABILITY = {
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
    "system_default": ReliabilityPolicy.SYSTEM_DEFAULT,
}
_DURABILITY = {"volatile": DurabilityPolicy.VOLATILE, "transient_local": DurabilityPolicy.TRANSIENT_LOCAL}
_LOG_THROTTLE_S = 2.0
_RESULT_GRACE_S = 1.0


# ------------------------------------------------------------------------------------------------
# Request bookkeeping (no ROS types)


@dataclass
class Outcome:
    success: bool
    message: str
    texts: tuple[str, ...] = ()  # one per instruction
    instructions: tuple[ReferringInstruction, ...] = ()
    header: Optional[Header] = None


class PendingRequest:
    """A request handed to the worker: finished exactly once, its outcome counted once."""

    def __init__(self, stats: Stats, counter: str,
                 stop_check: Optional[Callable[[], Optional[str]]] = None) -> None:
        self._stats = stats
        self._stop_check = stop_check  # returns a reason to stop (e.g. "cancelled"), or None
        self._counter = counter  # "requests" | "clicks" | "detections"
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
        if self._stop_check is not None:
            reason = self._stop_check()
            if reason is not None:
                self.stop(reason)
        return self.stop_reason is not None or self.finished


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    kind = type(spec.default)
    types = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
    constraints = []
    if spec.choices:
        constraints.append("one of: " + ", ".join(repr(c) for c in spec.choices))
    applies = {"always": "", "activate": "applies at activation", "configure": "applies at configure",
               "startup": "read at start-up"}[spec.when]
    if applies:
        constraints.append(applies)
    descriptor = ParameterDescriptor(
        name=spec.name, type=types[kind], description=spec.description,
        additional_constraints="; ".join(constraints), read_only=spec.when == "startup",
        # Floats accept integers too ("temperature: 0" in a YAML file); AgentConfig converts them.
        dynamic_typing=kind is float,
    )
    if kind is int and spec.minimum is not None and spec.maximum is not None:
        descriptor.integer_range = [IntegerRange(from_value=int(spec.minimum), to_value=int(spec.maximum), step=0)]
    elif kind is float and spec.minimum is not None and spec.maximum is not None:
        descriptor.floating_point_range = [
            FloatingPointRange(from_value=float(spec.minimum), to_value=float(spec.maximum), step=0.0)
        ]
    return descriptor


class ChatSpotAgentNode(LifecycleNode):
    """See the module docstring and docs/node.md."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._stats = Stats()
        self._lock = threading.RLock()
        self._config: Optional[AgentConfig] = None
        self._chatspot: Any = None  # chatspot_ros.pipeline.ChatSpot
        self._builder: Optional[InstructionBuilder] = None
        self._model_info: dict[str, str] = {}
        self._last_error = ""
        self._worker: Optional[InferenceWorker] = None
        self._frames: FrameBuffer[convert.DecodedFrame] = FrameBuffer(1)
        self._image_frame_id = ""
        self._camera: Optional[PinholeCamera] = None
        self._task = ""
        self._active_requests: set[PendingRequest] = set()
        self._describe_goals: set[PendingRequest] = set()
        self._tf_buffer: Any = None
        self._tf_listener: Any = None
        self._inflight = 0  # service / action callbacks running (deactivate waits for them)
        self._inflight_cond = threading.Condition()

        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._request_group = ReentrantCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self._subscriptions_active: list[Any] = []
        self._servers: list[Any] = []
        self._action_server: Optional[ActionServer] = None
        self._outputs: dict[str, Any] = {}

        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        period = float(self.get_parameter("diagnostics.period_s").value)
        self._diag_timer = self.create_timer(period, self._publish_diagnostics,
                                             callback_group=self._diag_group)

    # ============================================================================ parameters

    def _parameter_values(self) -> dict[str, Any]:
        return {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}

    @property
    def config(self) -> Optional[AgentConfig]:
        return self._config

    @property
    def stats(self) -> Stats:
        return self._stats

    def _lifecycle_state(self) -> str:
        return self._state_machine.current_state[1]

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in PARAMETERS_BY_NAME}
        if not changes:
            return SetParametersResult(successful=True)
        reason = changes_allowed(list(changes), self._lifecycle_state())
        if reason is not None:
            return SetParametersResult(successful=False, reason=reason)
        base = self._config
        try:
            if base is None:
                values = self._parameter_values()
                values.update(changes)
                # model.path may be empty before configure; check everything else now.
                new = AgentConfig.from_parameters(values)
            else:
                new = base.replace(changes)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if base is not None:
            self._apply_runtime_config(new)
        return SetParametersResult(successful=True)

    def _apply_runtime_config(self, config: AgentConfig) -> None:
        with self._lock:
            self._config = config
            self._frames.resize(config.frames_buffer_size)
            self._frames.max_backward_jump_ns = int(config.frames_max_backward_jump_s * 1e9)
            if self._worker is not None:
                self._worker.set_limits(config.queues_max_pending_requests,
                                        config.queues_max_pending_detections)
            if self._chatspot is not None:
                self._builder = self._make_builder(config)

    # ============================================================================ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            config = AgentConfig.from_parameters(self._parameter_values())
            if not config.model_path.strip():
                raise ValueError("model.path is empty: set it to a local checkpoint folder")
        except ValueError as exc:
            return self._configure_failed(f"invalid parameters: {exc}")
        start = time.perf_counter()
        try:
            chatspot = self._load_model(config)
        except Exception as exc:  # noqa: BLE001 - any loading error fails the transition, with its reason
            return self._configure_failed(f"cannot load model {config.model_path!r}: "
                                          f"{type(exc).__name__}: {exc}")
        with self._lock:
            self._config = config
            self._chatspot = chatspot
            try:
                self._builder = self._make_builder(config)
            except ValueError as exc:
                self._release_model()
                return self._configure_failed(f"invalid referring settings: {exc}")
            self._frames = FrameBuffer(config.frames_buffer_size,
                                       int(config.frames_max_backward_jump_s * 1e9))
            self._worker = InferenceWorker(config.queues_max_pending_requests,
                                           config.queues_max_pending_detections, self._on_worker_error)
        depth = config.qos_output_depth
        reliable = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                              history=HistoryPolicy.KEEP_LAST)
        self._outputs = {
            "descriptions": self.create_lifecycle_publisher(RegionDescriptionArray, "region_descriptions", reliable),
            "suggestions": self.create_lifecycle_publisher(ActionSuggestion, "action_suggestions", reliable),
            "debug_image": self.create_lifecycle_publisher(Image, "debug/image", QoSProfile(
                depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)),
            "markers": self.create_lifecycle_publisher(MarkerArray, "debug/markers", reliable),
        }
        self._last_error = ""
        self.get_logger().info(
            f"configured: model {self._model_info.get('model')} ({self._model_info.get('family')}) on "
            f"{config.model_device}/{config.model_dtype}, vision backend "
            f"{self._model_info.get('backend')}, dialect {self._model_info.get('dialect')}, "
            f"loaded in {time.perf_counter() - start:.1f} s"
        )
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        self._last_error = reason
        self._stats.incr("configure.failed")
        self.get_logger().error(f"configure failed: {reason}")
        return TransitionCallbackReturn.FAILURE

    def _load_model(self, config: AgentConfig) -> Any:
        from chatspot_ros.pipeline import ChatSpot
        from chatspot_ros.runtime import RuntimeConfig

        runtime_config = RuntimeConfig(
            model_path=config.model_path, device=config.model_device, dtype=config.model_dtype,
            vision_backend=config.vision_backend, engine_dir=config.vision_engine_dir,
            feature_cache_size=config.model_feature_cache_size,
            trust_remote_code=config.model_trust_remote_code,
        )
        chatspot = ChatSpot.from_config(
            runtime_config, dialect=config.referring_format or None,
            precision=None if config.referring_precision < 0 else config.referring_precision,
        )
        runtime = chatspot.runtime
        self._model_info = {
            "model": str(runtime.model_name), "family": str(runtime.family),
            "backend": str(runtime.backend_name), "device": config.model_device,
            "dtype": config.model_dtype,
            "dialect": config.referring_format or str(runtime.default_dialect),
        }
        return chatspot

    def _make_builder(self, config: AgentConfig) -> InstructionBuilder:
        base = self._chatspot.builder
        return InstructionBuilder(
            base.dialect, base.geometry, base.templates,
            max_question_chars=config.limits_max_question_chars,
            max_regions=max(config.limits_max_regions_per_request, config.limits_max_regions_per_frame),
            max_outside=config.referring_max_outside,
        )

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        config = self._config
        assert config is not None and self._worker is not None
        if Detection2DArray is None:
            self.get_logger().warning("vision_msgs is not installed: the detections input is off")
        try:
            self._create_interfaces(config)
        except Exception as exc:  # noqa: BLE001 - e.g. an invalid remapped name; fail the transition
            self._destroy_interfaces()
            self._last_error = f"activation failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(self._last_error)
            return TransitionCallbackReturn.FAILURE
        self._worker.start()
        if abs(self._diag_timer.timer_period_ns / 1e9 - config.diagnostics_period_s) > 1e-9:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(config.diagnostics_period_s, self._publish_diagnostics,
                                                 callback_group=self._diag_group)
        self.get_logger().info(
            f"active: {'compressed' if config.image_transport == 'compressed' else 'raw'} images on "
            f"'{self._image_topic(config)}', detections on '{config.topics_detections}', "
            f"services 'ask', 'suggest_actions', action 'describe'"
        )
        return super().on_activate(state)

    def _image_topic(self, config: AgentConfig) -> str:
        base = config.topics_image
        return f"{base}/compressed" if config.image_transport == "compressed" else base

    def _create_interfaces(self, config: AgentConfig) -> None:
        sensor_qos = QoSProfile(depth=config.qos_image_depth, history=HistoryPolicy.KEEP_LAST,
                                reliability=_RELIABILITY[config.qos_image_reliability])
        input_qos = QoSProfile(depth=config.qos_detections_depth, history=HistoryPolicy.KEEP_LAST,
                               reliability=_RELIABILITY[config.qos_detections_reliability])
        task_qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                              reliability=_RELIABILITY[config.qos_detections_reliability],
                              durability=_DURABILITY[config.qos_task_durability])

        def sub(msg_type: Any, topic: str, callback: Callable[[Any], None], qos: QoSProfile) -> None:
            events = SubscriptionEventCallbacks(
                incompatible_qos=lambda event, t=topic: self.get_logger().warning(
                    f"'{t}': a publisher's QoS is incompatible with this subscription "
                    f"(policy {event.last_policy_kind}); check qos.* parameters"
                )
            )
            self._subscriptions_active.append(self.create_subscription(
                msg_type, topic, callback, qos, callback_group=self._sensor_group, event_callbacks=events))

        if config.image_transport == "compressed":
            sub(CompressedImage, self._image_topic(config), self._on_compressed_image, sensor_qos)
        else:
            sub(Image, config.topics_image, self._on_image, sensor_qos)
        if config.camera_info_enabled:
            sub(CameraInfo, config.topics_camera_info, self._on_camera_info, sensor_qos)
        if Detection2DArray is not None:
            sub(Detection2DArray, config.topics_detections, self._on_detections, input_qos)
        sub(PointStamped, config.topics_clicked_point, self._on_click, input_qos)
        sub(String, config.topics_task, self._on_task, task_qos)
        self._servers = [
            self.create_service(AskRegion, "ask", self._on_ask, callback_group=self._request_group),
            self.create_service(SuggestActions, "suggest_actions", self._on_suggest_actions,
                                callback_group=self._request_group),
        ]
        self._action_server = ActionServer(
            self, Describe, "describe", self._execute_describe,
            callback_group=self._request_group,
            goal_callback=lambda goal: GoalResponse.ACCEPT,
            handle_accepted_callback=self._on_describe_accepted,
            cancel_callback=lambda goal_handle: CancelResponse.ACCEPT,
        )
        if TfBuffer is not None and self._tf_buffer is None:
            self._tf_buffer = TfBuffer()
            self._tf_listener = TransformListener(self._tf_buffer, self)

    def _destroy_interfaces(self) -> None:
        for subscription in self._subscriptions_active:
            self.destroy_subscription(subscription)
        self._subscriptions_active = []
        for service in self._servers:
            self.destroy_service(service)
        self._servers = []
        if self._action_server is not None:
            self._action_server.destroy()
            self._action_server = None

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Fail pending work first, so that waiting service calls and goals get their answers
        # while their servers still exist; then remove the servers.
        busy = self._inflight > 0
        self._stop_work("node deactivated")
        self._wait_inflight(10.0)
        if busy:  # let the action server deliver those results to clients that ask for them now
            time.sleep(_RESULT_GRACE_S)
        self._destroy_interfaces()
        self.get_logger().info("inactive: subscriptions, services and the action are stopped")
        return super().on_deactivate(state)

    def _stop_work(self, reason: str) -> None:
        with self._lock:
            running = list(self._active_requests)
        for request in running:
            request.stop(reason)
        if self._worker is not None:
            if not self._worker.stop(reason, timeout=30.0):
                self.get_logger().warning("the inference worker did not stop within 30 s")
            # A stopped worker cannot restart its thread object: make a fresh one for activate.
            config = self._config
            assert config is not None
            self._worker = InferenceWorker(config.queues_max_pending_requests,
                                           config.queues_max_pending_detections, self._on_worker_error)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = {}
        self._release_model()
        self._frames.clear()
        self._camera = None
        self.get_logger().info("cleaned up: model released")
        return TransitionCallbackReturn.SUCCESS

    def _release_model(self) -> None:
        with self._lock:
            chatspot, self._chatspot = self._chatspot, None
            self._builder = None
            self._config = None
            self._worker = None
            self._model_info = {}
        if chatspot is not None:
            chatspot.close()

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().info(f"shutting down from '{state.label}'")
        if state.label == "active":
            self._stop_work("node shutting down")
            self._wait_inflight(5.0)
            self._destroy_interfaces()
        if state.label in ("active", "inactive"):
            for publisher in self._outputs.values():
                self.destroy_lifecycle_publisher(publisher)
            self._outputs = {}
            self._release_model()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error during a transition from '{state.label}': releasing everything")
        self._destroy_interfaces()
        if self._worker is not None:
            self._worker.stop("node error", timeout=5.0)
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = {}
        self._release_model()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        state = self._lifecycle_state()
        if state in ("active", "inactive"):
            if self.context.ok():
                self.trigger_shutdown()
            else:  # the context is gone: no transition is possible, release directly
                self.on_shutdown(LifecycleState(state_id=0, label=state))
        super().destroy_node()

    # ============================================================================ inputs

    def _enter(self) -> None:
        with self._inflight_cond:
            self._inflight += 1

    def _leave(self) -> None:
        with self._inflight_cond:
            self._inflight -= 1
            self._inflight_cond.notify_all()

    def _wait_inflight(self, timeout: float) -> None:
        with self._inflight_cond:
            if not self._inflight_cond.wait_for(lambda: self._inflight == 0, timeout):
                self.get_logger().warning(f"{self._inflight} request callback(s) still running")

    def _warn(self, message: str) -> None:
        self.get_logger().warning(message, throttle_duration_sec=_LOG_THROTTLE_S)

    def _on_image(self, msg: Image) -> None:
        self._receive_frame(lambda cfg: convert.frame_from_image(
            msg, cfg.image_limits, use_cv_bridge=cfg.image_use_cv_bridge))

    def _on_compressed_image(self, msg: CompressedImage) -> None:
        self._receive_frame(lambda cfg: convert.frame_from_compressed(msg, cfg.image_limits))

    def _receive_frame(self, make: Callable[[AgentConfig], convert.DecodedFrame]) -> None:
        start = time.perf_counter()
        self._stats.incr("images.received")
        config = self._config
        if config is None:
            self._stats.incr("images.rejected")
            return
        try:
            frame = make(config)
        except ImageDecodeError as exc:
            self._stats.incr("images.rejected")
            self._warn(f"image rejected: {exc}")
            return
        if self._frames.push(frame.stamp_ns, frame):
            self._stats.incr("frames.time_jumps")
            self.get_logger().warning(
                f"image stamp {format_ns(frame.stamp_ns)} jumped back more than "
                f"{config.frames_max_backward_jump_s:g} s: frame buffer cleared")
        self._image_frame_id = frame.frame_id
        self._stats.incr("images.buffered")
        self._stats.observe("receive", (time.perf_counter() - start) * 1e3)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._stats.incr("camera_info.received")
        try:
            self._camera = convert.camera_from_info(msg)
        except ValueError as exc:
            self._stats.incr("camera_info.rejected")
            self._warn(f"camera_info rejected: {exc}")

    def _on_task(self, msg: String) -> None:
        self._stats.incr("tasks.received")
        config = self._config
        text = msg.data.strip()
        if config is not None and len(text) > config.limits_max_question_chars:
            self._stats.incr("tasks.rejected")
            self._warn(f"task rejected: {len(text)} characters, the limit is "
                       f"{config.limits_max_question_chars} (limits.max_question_chars)")
            return
        if text != self._task:
            self.get_logger().info(f"task {'set to ' + repr(text) if text else 'cleared'}")
        self._task = text

    # -- detections ------------------------------------------------------------------------

    def _on_detections(self, msg: Any) -> None:
        self._stats.incr("detections.received")
        config = self._config
        if config is None or self._worker is None:
            self._stats.incr("detections.rejected")
            return
        stamp_ns = convert.time_to_ns(msg.header.stamp)
        where = f"detections at {format_ns(stamp_ns)}"
        if not msg.detections:
            self._stats.incr("detections.empty")
            self.get_logger().debug(f"{where}: empty, nothing to describe")
            return
        frame_id = msg.header.frame_id
        if frame_id and self._image_frame_id and frame_id != self._image_frame_id:
            self._stats.incr("detections.rejected")
            self._warn(f"{where} rejected: frame '{frame_id}' is not the camera frame "
                       f"'{self._image_frame_id}'")
            return
        regions: list[convert.DetectionRegion] = []
        errors: list[str] = []
        for index, detection in enumerate(msg.detections):
            try:
                regions.append(convert.detection_to_region(detection, index=index))
            except ValueError as exc:
                errors.append(str(exc))
        if errors:
            self._stats.incr("regions.rejected", len(errors))
            self._warn(f"{where}: {len(errors)} invalid detection(s), e.g. {errors[0]}")
        if not regions:
            self._stats.incr("detections.rejected")
            return
        regions.sort(key=lambda r: -r.score)
        cap = config.limits_max_regions_per_frame
        if len(regions) > cap:
            self._stats.incr("regions.overflow", len(regions) - cap)
            self._warn(f"{where}: {len(regions)} detections, answering the {cap} highest-scoring "
                       f"(limits.max_regions_per_frame); {len(regions) - cap} left out")
            regions = regions[:cap]
        request = PendingRequest(self._stats, "detections")
        job = Job("detections", lambda: self._answer_detections(request, stamp_ns, frame_id, regions),
                  lambda reason: self._drop(request, reason, where))
        self._worker.submit_stream(job)

    def _drop(self, request: PendingRequest, reason: str, where: str) -> None:
        if request.finish("dropped", Outcome(False, reason)):
            self._warn(f"{where} dropped: {reason}")

    def _answer_detections(self, request: PendingRequest, stamp_ns: int, frame_id: str,
                           detections: list[convert.DetectionRegion]) -> None:
        config = self._config
        where = f"detections at {format_ns(stamp_ns)}"
        if config is None:
            request.finish("failed", Outcome(False, "node not configured"))
            return
        match = self._frames.wait_match(stamp_ns, config.match_tolerance_ns, config.frames_wait_s)
        if not match.ok:
            request.finish("unmatched", Outcome(False, match.message))
            self._warn(f"{where}: no frame: {match.message}")
            return
        frame = match.frame.item
        size = (frame.width, frame.height)
        builder = self._builder
        instructions: list[ReferringInstruction] = []
        kept: list[convert.DetectionRegion] = []
        for det in detections:
            try:
                instructions.append(builder.describe_region(det.region, size))
                kept.append(det)
            except ValueError as exc:
                self._stats.incr("regions.rejected")
                self._warn(f"{where}: {exc}")
        if not instructions:
            request.finish("rejected", Outcome(False, "no valid region in the image"))
            return
        n_describe = len(instructions)
        task = self._task
        if task and config.task_suggest_on_detections:
            for det in kept[: config.task_max_detections]:
                try:
                    instructions.append(builder.suggest_actions(task, det.region, size))
                except ValueError as exc:
                    self._warn(f"{where}: no action suggestion: {exc}")
        result = self._run_model(request, frame, (frame.frame_id, frame.stamp_ns), instructions,
                                 config.generation_max_new_tokens, where)
        if result is None:
            return
        texts, elapsed_s = result
        header = convert.copy_header(frame.header)
        out = RegionDescriptionArray(header=header, inference_time_s=float(elapsed_s),
                                     model=self._model_info.get("model", ""))
        for det, instruction, text in zip(kept, instructions[:n_describe], texts[:n_describe]):
            out.descriptions.append(RegionDescription(
                region=convert.region_to_msg(instruction.regions[0]), label=det.label,
                instruction=instruction.text, text=text))
        self._publish("descriptions", out)
        for instruction, text in zip(instructions[n_describe:], texts[n_describe:]):
            self._publish_suggestion(header, instruction, task, text)
        self._stats.incr("regions.answered", n_describe)
        request.finish("answered", Outcome(True, "", tuple(texts), tuple(instructions), header))
        self._publish_debug(frame, [Annotation(i.regions[0], f"{d.label or d.region.id}: {t}")
                                    for d, i, t in zip(kept, instructions, texts)])

    # -- clicks ----------------------------------------------------------------------------

    def _on_click(self, msg: PointStamped) -> None:
        self._stats.incr("clicks.received")
        config = self._config
        if config is None or self._worker is None:
            self._stats.incr("clicks.rejected")
            return
        latest = self._frames.latest()
        if latest is None:
            self._stats.incr("clicks.unmatched")
            self._warn("click ignored: no image received yet")
            return
        frame = latest.item
        stamp_ns = convert.time_to_ns(msg.header.stamp)
        if stamp_ns:
            match = self._frames.match(stamp_ns, config.match_tolerance_ns)
            if match.ok:
                frame = match.frame.item
        try:
            u, v = self._click_to_pixel(msg, frame, config)
            region = convert.click_region(u, v, frame.width, frame.height, config.click_box_size)
            size = (frame.width, frame.height)
            builder = self._builder
            if config.click_question.strip():
                instructions = [builder.ask(config.click_question, [region], size)]
            else:
                instructions = [builder.describe_region(region, size)]
            task = self._task
            if task:
                instructions.append(builder.suggest_actions(task, region, size))
        except ValueError as exc:
            self._stats.incr("clicks.rejected")
            self._warn(f"click rejected: {exc}")
            return
        request = PendingRequest(self._stats, "clicks")
        job = Job("click", lambda: self._answer_click(request, frame, instructions, task),
                  lambda reason: self._drop(request, reason, "click"))
        if not self._worker.submit_request(job):
            request.finish("dropped", Outcome(False, "busy"))
            self._warn("click dropped: the request queue is full (queues.max_pending_requests)")

    def _click_to_pixel(self, msg: PointStamped, frame: convert.DecodedFrame,
                        config: AgentConfig) -> tuple[float, float]:
        """Pixel of a click; ValueError with the reason when it cannot be placed in the image."""
        p = msg.point
        frame_id = msg.header.frame_id
        if not all(math.isfinite(c) for c in (p.x, p.y, p.z)):
            raise ValueError(f"click ({p.x}, {p.y}, {p.z}) has a non-finite coordinate")
        camera = self._camera
        if frame_id in ("", frame.frame_id) and p.z == 0.0:
            return float(p.x), float(p.y)  # rqt_image_view mouse publishing: pixels
        if camera is not None and frame_id == (camera.frame_id or frame.frame_id):
            return camera.project((p.x, p.y, p.z), rectified=config.projection_rectified)
        if self._tf_buffer is not None and camera is not None:
            target = camera.frame_id or frame.frame_id
            try:
                stamped = self._tf_buffer.transform(
                    msg, target, timeout=RosDuration(seconds=config.tf_timeout_s))
            except TransformException as exc:
                raise ValueError(f"cannot transform the click from '{frame_id}' to '{target}': {exc}") from None
            q = stamped.point
            return camera.project((q.x, q.y, q.z), rectified=config.projection_rectified)
        if camera is None:
            raise ValueError(
                f"click in frame '{frame_id}' is not a pixel of the image frame '{frame.frame_id}' "
                f"(z must be 0) and no camera_info has been received to project a 3D point"
            )
        raise ValueError(
            f"click in frame '{frame_id}': only the image/camera frame '{camera.frame_id or frame.frame_id}' "
            "can be used without tf2 (tf2_ros is not installed)"
        )

    def _answer_click(self, request: PendingRequest, frame: convert.DecodedFrame,
                      instructions: list[ReferringInstruction], task: str) -> None:
        config = self._config
        if config is None:
            request.finish("failed", Outcome(False, "node not configured"))
            return
        result = self._run_model(request, frame, (frame.frame_id, frame.stamp_ns), instructions,
                                 config.generation_max_new_tokens, "click")
        if result is None:
            return
        texts, elapsed_s = result
        header = convert.copy_header(frame.header)
        describe = instructions[0]
        self._publish("descriptions", RegionDescriptionArray(
            header=header, inference_time_s=float(elapsed_s), model=self._model_info.get("model", ""),
            descriptions=[RegionDescription(region=convert.region_to_msg(describe.regions[0]),
                                            label="", instruction=describe.text, text=texts[0])]))
        if len(instructions) > 1:
            self._publish_suggestion(header, instructions[1], task, texts[1])
        request.finish("answered", Outcome(True, "", tuple(texts), tuple(instructions), header))
        self._publish_debug(frame, [Annotation(describe.regions[0], texts[0])])

    # ============================================================================ model

    def _run_model(self, request: PendingRequest, frame: convert.DecodedFrame, key: Any,
                   instructions: Sequence[ReferringInstruction], max_new_tokens: int, where: str,
                   on_token: Optional[Callable[[int, str], None]] = None,
                   ) -> Optional[tuple[list[str], float]]:
        """Run the model on one frame; on failure finish ``request`` as failed and return None."""
        from chatspot_ros.runtime import GenerationConfig

        config = self._config
        chatspot = self._chatspot
        if config is None or chatspot is None:
            request.finish("failed", Outcome(False, "node not configured"))
            return None
        if request.should_stop():
            request.finish("cancelled" if request.counter == "requests" else "failed",
                           Outcome(False, request.stop_reason or "stopped before it ran"))
            return None
        start = time.perf_counter()
        try:
            rgb = frame.rgb()
        except ImageDecodeError as exc:
            self._stats.incr("images.decode_failed")
            request.finish("failed", Outcome(False, f"cannot decode the image: {exc}"))
            self._warn(f"{where}: cannot decode the image: {exc}")
            return None
        converted = time.perf_counter()
        self._stats.observe("conversion", (converted - start) * 1e3)
        try:
            gen = GenerationConfig(
                max_new_tokens=int(max_new_tokens), temperature=config.generation_temperature,
                top_p=config.generation_top_p,
                seed=None if config.generation_seed < 0 else config.generation_seed,
            )
            with self._lock:
                self._active_requests.add(request)
            answers = chatspot.answer(rgb, key, list(instructions), gen, on_token=on_token,
                                      should_stop=request.should_stop)
        except Exception as exc:  # noqa: BLE001 - a model error fails this request, not the node
            self._model_failed(request, exc, where)
            return None
        finally:
            with self._lock:
                self._active_requests.discard(request)
        elapsed = time.perf_counter() - start
        self._stats.observe("vision", answers[0].vision_ms if answers else 0.0)
        prefill = sum(a.generation.prefill_ms for a in answers)
        decode = max((a.generation.decode_ms for a in answers), default=0.0)
        self._stats.observe("prefill", prefill)
        self._stats.observe("decode", decode)
        self._stats.observe("total", elapsed * 1e3)
        self._stats.observe_tokens(sum(a.generation.tokens for a in answers), decode)
        return [a.text for a in answers], elapsed

    def _model_failed(self, request: PendingRequest, exc: Exception, where: str) -> None:
        name = type(exc).__name__
        self._stats.incr("model.errors")
        if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
            self._stats.incr("model.oom")
            self._free_cuda_cache()
        message = f"model error: {name}: {exc}"
        request.finish("failed", Outcome(False, message))
        self.get_logger().error(f"{where}: {message}")

    def _free_cuda_cache(self) -> None:
        chatspot = self._chatspot
        if chatspot is not None:
            chatspot.runtime.clear_cache()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

    def _on_worker_error(self, job: Job, exc: Exception) -> None:
        # Jobs report their own failures; reaching here is a bug in the node, still not fatal.
        self._stats.incr("worker.errors")
        self.get_logger().error(f"internal error in a {job.kind} job: {type(exc).__name__}: {exc}")

    # ============================================================================ outputs

    def _publish(self, key: str, msg: Any) -> None:
        publisher = self._outputs.get(key)
        if publisher is not None:
            publisher.publish(msg)

    def _publish_suggestion(self, header: Header, instruction: ReferringInstruction, task: str,
                            text: str) -> None:
        self._publish("suggestions", ActionSuggestion(
            header=header, region=convert.region_to_msg(instruction.regions[0]), task=task,
            steps=parse_steps(text), text=text))

    def _wants(self, key: str) -> bool:
        publisher = self._outputs.get(key)
        return publisher is not None and publisher.get_subscription_count() > 0

    def _publish_debug(self, frame: convert.DecodedFrame, annotations: list[Annotation]) -> None:
        config = self._config
        if config is None:
            return
        if config.debug_image and self._wants("debug_image"):
            start = time.perf_counter()
            canvas = draw_annotations(frame.rgb(), annotations, max_width=config.debug_max_width)
            self._publish("debug_image", convert.rgb_to_image(canvas, frame.header))
            self._stats.observe("drawing", (time.perf_counter() - start) * 1e3)
        camera = self._camera
        if config.debug_markers and camera is not None and self._wants("markers"):
            self._publish("markers", make_markers(frame.header, camera, annotations,
                                                  config.debug_marker_depth, frame.width, frame.height))

    # ============================================================================ services

    def _resolve_frame(self, stamp: Any, image: Image, config: AgentConfig) -> tuple[convert.DecodedFrame, Any]:
        """The frame a request names: its own image, the latest, or the one with its stamp."""
        if not convert.image_is_empty(image):
            return convert.frame_from_image(image, config.image_limits,
                                            use_cv_bridge=config.image_use_cv_bridge), None
        if convert.is_zero_time(stamp):
            latest = self._frames.latest()
            if latest is None:
                raise ValueError(f"no image received yet on '{self._image_topic(config)}'")
            frame = latest.item
        else:
            match: MatchResult[convert.DecodedFrame] = self._frames.wait_match(
                convert.time_to_ns(stamp), config.match_tolerance_ns, config.frames_wait_s)
            if not match.ok:
                raise ValueError(f"no frame for stamp {format_ns(convert.time_to_ns(stamp))}: {match.message}")
            frame = match.frame.item
        return frame, (frame.frame_id, frame.stamp_ns)

    def _prepare_request(
        self, stamp: Any, image: Image, build: Callable[[InstructionBuilder, tuple[int, int]], list[ReferringInstruction]],
    ) -> tuple[PendingRequest, convert.DecodedFrame, Any, list[ReferringInstruction]]:
        """Checks shared by ask / suggest_actions / describe; ValueError when the request is refused."""
        config, builder = self._config, self._builder
        if config is None or builder is None:
            raise ValueError("the node is not configured")
        frame, key = self._resolve_frame(stamp, image, config)
        instructions = build(builder, (frame.width, frame.height))
        return PendingRequest(self._stats, "requests"), frame, key, instructions

    def _check_fields(self, stamp: Any, regions: Sequence[Any], question: str, max_new_tokens: int,
                      *, what: str = "question", require_question: bool = True) -> convert.RequestSpec:
        config = self._config
        if config is None:
            raise ValueError("the node is not configured")
        return convert.check_request(
            stamp, regions, question, max_new_tokens,
            max_regions=config.limits_max_regions_per_request,
            max_question_chars=config.limits_max_question_chars,
            max_new_tokens_limit=config.generation_max_new_tokens_limit,
            default_max_new_tokens=config.generation_max_new_tokens,
            what=what, require_question=require_question,
        )

    def _submit_and_wait(self, request: PendingRequest, frame: convert.DecodedFrame, key: Any,
                         instructions: list[ReferringInstruction], max_new_tokens: int, where: str,
                         on_token: Optional[Callable[[int, str], None]] = None) -> Outcome:
        config = self._config
        worker = self._worker
        if config is None or worker is None:
            self._stats.incr("requests.rejected")
            return Outcome(False, "the node is not active")

        def run() -> None:
            result = self._run_model(request, frame, key, instructions, max_new_tokens, where, on_token)
            if result is None:
                return
            texts, _ = result
            status = "served"
            message = ""
            if request.stop_reason is not None:
                status, message = "cancelled", request.stop_reason
            request.finish(status, Outcome(status == "served", message, tuple(texts), tuple(instructions),
                                           convert.copy_header(frame.header)))

        job = Job(where, run, lambda reason: request.finish("failed", Outcome(False, reason)))
        if not worker.submit_request(job):
            self._stats.incr("requests.rejected")
            if not worker.running:
                return Outcome(False, "the node is deactivating")
            return Outcome(False, f"busy: {config.queues_max_pending_requests} requests are already "
                                  "waiting (queues.max_pending_requests)")
        if not request.wait(config.queues_request_timeout_s):
            request.stop("timed out")
            request.finish("failed", Outcome(False, f"timed out after {config.queues_request_timeout_s:g} s "
                                                    "(queues.request_timeout_s)"))
        assert request.outcome is not None
        return request.outcome

    def _refuse(self, response: Any, exc: Exception, where: str) -> Any:
        self._stats.incr("requests.rejected")
        response.success = False
        response.message = str(exc)
        self.get_logger().warning(f"{where} refused: {exc}", throttle_duration_sec=_LOG_THROTTLE_S)
        return response

    def _on_ask_impl(self, request: AskRegion.Request, response: AskRegion.Response) -> AskRegion.Response:
        self._stats.incr("requests.received")
        try:
            spec = self._check_fields(request.stamp, request.regions, request.question, request.max_new_tokens)
            pending, frame, key, instructions = self._prepare_request(
                request.stamp, request.image,
                lambda b, size: [b.ask(spec.question, spec.regions, size)])
        except ValueError as exc:
            return self._refuse(response, exc, "ask")
        outcome = self._submit_and_wait(pending, frame, key, instructions, spec.max_new_tokens, "ask")
        response.success = outcome.success
        response.message = outcome.message
        if outcome.texts:
            response.answer = outcome.texts[0]
        response.instruction = instructions[0].text
        response.header = convert.copy_header(frame.header)
        if outcome.success:
            self._publish_debug(frame, [Annotation(r, outcome.texts[0]) for r in instructions[0].regions])
        return response

    def _on_suggest_actions_impl(self, request: SuggestActions.Request,
                            response: SuggestActions.Response) -> SuggestActions.Response:
        self._stats.incr("requests.received")
        try:
            regions = [request.region] if len(request.region.points) else []
            spec = self._check_fields(request.stamp, regions, request.task, 0, what="task")

            def build(b: InstructionBuilder, size: tuple[int, int]) -> list[ReferringInstruction]:
                region = spec.regions[0] if spec.regions else Region.box(0, 0, size[0], size[1], id="image")
                return [b.suggest_actions(spec.question, region, size)]

            pending, frame, key, instructions = self._prepare_request(request.stamp, request.image, build)
        except ValueError as exc:
            return self._refuse(response, exc, "suggest_actions")
        config = self._config
        outcome = self._submit_and_wait(pending, frame, key, instructions,
                                        config.generation_max_new_tokens if config else 64, "suggest_actions")
        response.success = outcome.success
        response.message = outcome.message
        text = outcome.texts[0] if outcome.texts else ""
        response.suggestion = ActionSuggestion(
            header=convert.copy_header(frame.header), region=convert.region_to_msg(instructions[0].regions[0]),
            task=spec.question, steps=parse_steps(text) if text else [], text=text)
        if outcome.success:
            self._publish("suggestions", response.suggestion)
        return response

    # -- describe action -------------------------------------------------------------------

    def _on_describe_accepted(self, goal_handle: Any) -> None:
        config = self._config
        if config is not None and config.describe_preempt:
            with self._lock:
                running = list(self._describe_goals)
            for request in running:
                request.stop("preempted by a newer goal")
        goal_handle.execute()

    def _execute_describe_impl(self, goal_handle: Any) -> Describe.Result:
        self._stats.incr("requests.received")
        goal = goal_handle.request
        result = Describe.Result()
        try:
            spec = self._check_fields(goal.stamp, goal.regions, goal.question, goal.max_new_tokens,
                                      require_question=False)

            def build(b: InstructionBuilder, size: tuple[int, int]) -> list[ReferringInstruction]:
                if spec.question:
                    return [b.ask(spec.question, spec.regions, size)]
                if len(spec.regions) == 1:
                    return [b.describe_region(spec.regions[0], size)]
                if not spec.regions:
                    return [b.describe_image(size)]
                return [b.ask("Describe these regions.", spec.regions, size)]

            pending, frame, key, instructions = self._prepare_request(goal.stamp, goal.image, build)
        except ValueError as exc:
            self._refuse(result, exc, "describe")
            goal_handle.abort()
            return result
        tokens = [0]

        def on_token(index: int, text: str) -> None:
            tokens[0] += 1
            goal_handle.publish_feedback(Describe.Feedback(partial=text, tokens=tokens[0]))

        pending._stop_check = lambda: "cancelled" if goal_handle.is_cancel_requested else None
        with self._lock:
            self._describe_goals.add(pending)
        try:
            outcome = self._submit_and_wait(pending, frame, key, instructions, spec.max_new_tokens,
                                            "describe", on_token)
        finally:
            with self._lock:
                self._describe_goals.discard(pending)
        result.success = outcome.success
        result.message = outcome.message
        result.answer = outcome.texts[0] if outcome.texts else ""
        result.instruction = instructions[0].text
        result.header = convert.copy_header(frame.header)
        if outcome.success:
            goal_handle.succeed()
        elif goal_handle.is_cancel_requested:
            goal_handle.canceled()
        else:
            goal_handle.abort()
        return result

    # Service / action entry points: counted while they run (see on_deactivate).

    def _on_ask(self, request: AskRegion.Request, response: AskRegion.Response) -> AskRegion.Response:
        self._enter()
        try:
            return self._on_ask_impl(request, response)
        finally:
            self._leave()

    def _on_suggest_actions(self, request: SuggestActions.Request,
                            response: SuggestActions.Response) -> SuggestActions.Response:
        self._enter()
        try:
            return self._on_suggest_actions_impl(request, response)
        finally:
            self._leave()

    def _execute_describe(self, goal_handle: Any) -> Describe.Result:
        self._enter()
        try:
            return self._execute_describe_impl(goal_handle)
        finally:
            self._leave()

    # ============================================================================ diagnostics

    def _publish_diagnostics(self) -> None:
        self._diag_pub.publish(self.diagnostics())

    def diagnostics(self) -> DiagnosticArray:
        counters = self._stats.counters()
        state = self._lifecycle_state()
        info = dict(self._model_info)
        worker = self._worker
        requests_pending, stream_pending, running = worker.depths() if worker else (0, 0, False)
        name = self.get_fully_qualified_name()
        hardware = info.get("device", "")

        def kv(pairs: dict[str, Any]) -> list[KeyValue]:
            return [KeyValue(key=k, value=str(v)) for k, v in pairs.items()]

        if self._last_error:
            model_level, model_msg = DiagnosticStatus.ERROR, self._last_error
        elif state == "active":
            model_level, model_msg = DiagnosticStatus.OK, f"active: {info.get('model', '')}"
        else:
            model_level, model_msg = DiagnosticStatus.WARN, state
        model = DiagnosticStatus(level=model_level, name=f"{name}: model", message=model_msg,
                                 hardware_id=hardware, values=kv({
                                     "state": state, "model": info.get("model", ""),
                                     "family": info.get("family", ""), "backend": info.get("backend", ""),
                                     "device": info.get("device", ""), "dtype": info.get("dtype", ""),
                                     "dialect": info.get("dialect", ""), "last_error": self._last_error,
                                 }))
        span = self._frames.span()
        input_keys = [f"{kind}.{o}" for kind in ("images", "detections", "clicks")
                      for o in ("received",) + OUTCOMES[kind]]
        input_keys += ["images.decode_failed", "frames.time_jumps", "camera_info.received", "camera_info.rejected",
                       "tasks.received", "tasks.rejected", "regions.answered", "regions.rejected",
                       "regions.overflow"]
        inputs_values = {k: counters.get(k, 0) for k in input_keys}
        inputs_values.update({
            "frames.buffered": len(self._frames), "frames.capacity": self._frames.capacity,
            "frames.newest_stamp": format_ns(span[1]) if span else "",
            "queue.detections": stream_pending, "task": self._task,
        })
        dropped = sum(counters.get(k, 0) for k in ("detections.dropped", "detections.unmatched",
                                                   "images.rejected", "clicks.dropped"))
        inputs = DiagnosticStatus(
            level=DiagnosticStatus.WARN if dropped else DiagnosticStatus.OK, name=f"{name}: inputs",
            message=f"{counters.get('images.buffered', 0)} frames, "
                    f"{counters.get('detections.answered', 0)} detection messages answered, "
                    f"{dropped} dropped/unmatched/rejected",
            hardware_id=hardware, values=kv(inputs_values))
        request_keys = ["requests.received"] + [f"requests.{o}" for o in OUTCOMES["requests"]]
        request_keys += ["model.errors", "model.oom", "worker.errors", "configure.failed"]
        request_values = {k: counters.get(k, 0) for k in request_keys}
        request_values.update({"queue.requests": requests_pending, "worker.busy": running})
        requests = DiagnosticStatus(
            level=DiagnosticStatus.WARN if counters.get("model.errors", 0) else DiagnosticStatus.OK,
            name=f"{name}: requests",
            message=f"{counters.get('requests.served', 0)} served, {counters.get('requests.failed', 0)} failed",
            hardware_id=hardware, values=kv(request_values))
        stages = self._stats.stages()
        latency_values: dict[str, Any] = {}
        for stage in ("receive",) + STAGES + ("drawing",):
            summary = stages.get(stage)
            if summary is not None:
                latency_values[f"{stage}.mean_ms"] = f"{summary.mean_ms:.2f}"
                latency_values[f"{stage}.max_ms"] = f"{summary.max_ms:.2f}"
                latency_values[f"{stage}.last_ms"] = f"{summary.last_ms:.2f}"
        tokens_per_s = self._stats.tokens_per_s()
        latency_values["tokens_per_s"] = f"{tokens_per_s:.1f}"
        total = stages.get("total")
        latency = DiagnosticStatus(
            level=DiagnosticStatus.OK, name=f"{name}: latency",
            message=(f"{total.mean_ms:.0f} ms per answer, {tokens_per_s:.1f} tokens/s" if total else "no answers yet"),
            hardware_id=hardware, values=kv(latency_values))
        array = DiagnosticArray(status=[model, inputs, requests, latency])
        array.header.stamp = self.get_clock().now().to_msg()
        return array


def make_markers(header: Header, camera: PinholeCamera, annotations: Sequence[Annotation], depth: float,
                 image_width: int, image_height: int) -> MarkerArray:
    """Region outlines and answer texts at ``depth`` metres along their rays, in the camera frame."""
    out = MarkerArray()
    out.markers.append(Marker(header=header, ns="chatspot", action=Marker.DELETEALL))
    sx = camera.width / float(image_width)
    sy = camera.height / float(image_height)
    frame_header = convert.copy_header(header)
    if camera.frame_id:
        frame_header.frame_id = camera.frame_id
    for i, ann in enumerate(annotations):
        r, g, b = PALETTE[i % len(PALETTE)]
        color = ColorRGBA(r=r / 255.0, g=g / 255.0, b=b / 255.0, a=1.0)
        pts = list(ann.region.points)
        if len(pts) == 2 and ann.region.kind.name == "BOX":
            (x0, y0), (x1, y1) = pts
            pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        rays = [camera.back_project(x * sx, y * sy, depth) for x, y in pts]
        outline = Marker(header=frame_header, ns="chatspot", id=2 * i, type=Marker.LINE_STRIP,
                         action=Marker.ADD, color=color, lifetime=Duration(sec=0))
        outline.pose.orientation.w = 1.0
        outline.scale.x = 0.005 * depth
        outline.points = [Point(x=x, y=y, z=z) for x, y, z in rays + rays[:1]] if len(rays) > 1 else []
        if len(rays) == 1:
            outline.type = Marker.SPHERE
            outline.pose.position = Point(x=rays[0][0], y=rays[0][1], z=rays[0][2])
            outline.scale.x = outline.scale.y = outline.scale.z = 0.02 * depth
        out.markers.append(outline)
        cx = sum(p[0] for p in rays) / len(rays)
        top = min(p[1] for p in rays)
        text = Marker(header=frame_header, ns="chatspot", id=2 * i + 1, type=Marker.TEXT_VIEW_FACING,
                      action=Marker.ADD, color=color, text=ann.text[:120])
        text.pose.position = Point(x=cx, y=top - 0.03 * depth, z=float(depth))
        text.pose.orientation.w = 1.0
        text.scale.z = 0.03 * depth
        out.markers.append(text)
    return out
