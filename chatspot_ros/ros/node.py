"""The ``chatspot_agent`` lifecycle node: a thin adapter between ROS 2 and the ChatSpot core.

* ``__init__`` declares every parameter of :data:`chatspot_ros.service.config.PARAMETERS` and starts
  ``/diagnostics`` (so a failed configure is visible);
* ``on_configure`` validates them into an :class:`AgentConfig` and loads the model (a failure is
  logged with its reason and returns FAILURE);
* ``on_activate`` starts the inference worker, the subscriptions, the services and the action;
* ``on_deactivate`` stops them (pending work fails with "node deactivated");
* ``on_cleanup`` frees the model and its GPU memory.

Callbacks only check input (with the ROS-free helpers of :mod:`chatspot_ros.ros.convert`) and
enqueue work; the model runs on one worker thread (:mod:`chatspot_ros.service.worker`). Every input
event ends in exactly one counted outcome (see :mod:`chatspot_ros.service.stats`).
"""
from __future__ import annotations


import dataclasses
import gc
import threading
import time
import traceback
from typing import Any, Callable, NamedTuple, Optional, Sequence

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.duration import Duration as RosDuration
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String
from visualization_msgs.msg import MarkerArray

from chatspot_ros.action import Describe
from chatspot_ros.service.frames import Arrival, FrameMatcher, MatchPolicy, MatchResult, format_ns
from chatspot_ros.service.imaging import ImageDecodeError
from chatspot_ros.models import shipped_model
from chatspot_ros.msg import ActionSuggestion, RegionDescriptionArray
from chatspot_ros.service.planning import InstructionPlanner, Plan, Role
from chatspot_ros.service.requests import Outcome, PendingRequest, RequestKind, RequestTracker
from chatspot_ros.service.projection import PinholeCamera
from chatspot_ros.referring import InstructionBuilder, ReferringInstruction
from chatspot_ros.ros import convert
from chatspot_ros.ros.allocator import trim_heap
from chatspot_ros.service.config import PARAMETERS, PARAMETERS_BY_NAME, AgentConfig, changes_allowed
from chatspot_ros.ros.diagnostics import NodeSnapshot, build_statuses
from chatspot_ros.ros.drawing import Annotation, draw_annotations
from chatspot_ros.service.stats import LogLimiter, Stats
from chatspot_ros.runtime.errors import ModelOutOfMemory, as_model_error
from chatspot_ros.service.worker import InferenceWorker, Job
from chatspot_ros.srv import AskRegion, SuggestActions

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
# See on_deactivate: the most it waits for rclpy to send responses and results of handlers that
# returned; reached only when a goal's client never asked for its result.
_RESPONSE_WAIT_S = 2.0
# How often detections waiting for their frame are looked up again (besides on each new frame),
# so that one whose frame never comes is answered "unmatched" at most this late after frames.wait_s.
_AWAITING_PERIOD_S = 0.05

# Makes a request's instructions once its frame (and so the image size) is known.
BuildInstructions = Callable[[InstructionBuilder, tuple[int, int]], list[ReferringInstruction]]


class _AwaitingDetections(NamedTuple):
    """A checked detection message, submitted to the FrameMatcher until its frame is settled."""
    request: PendingRequest
    regions: list[convert.DetectionRegion]
    where: str


class _TrackedActionServer(ActionServer):
    """An ActionServer that reports each result it hands to the middleware (see on_deactivate).

    rclpy sends a goal's result from an executor task scheduled after the execute callback
    returned; ``_send_result_response`` is that task in Humble through Kilted. Where it is
    missing, on_deactivate falls back to waiting ``_RESPONSE_WAIT_S``."""

    def __init__(self, *args: Any, on_result_sent: Callable[[], None], **kwargs: Any) -> None:
        self._on_result_sent = on_result_sent
        super().__init__(*args, **kwargs)

    if hasattr(ActionServer, "_send_result_response"):
        def _send_result_response(self, *args: Any, **kwargs: Any) -> None:
            try:
                super()._send_result_response(*args, **kwargs)  # type: ignore[misc]
            finally:
                self._on_result_sent()


def _report_sent(service: Any, sent: Callable[[], None]) -> Any:
    """Wrap ``service.send_response`` (the executor calls it right after the callback returned)."""
    send = service.send_response

    def send_response(*args: Any, **kwargs: Any) -> Any:
        try:
            return send(*args, **kwargs)
        finally:
            sent()

    service.send_response = send_response
    return service


class ChatSpotAgentNode(LifecycleNode):
    """See the module docstring and docs/node.md."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, convert.parameter_descriptor(spec))
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._stats = Stats()
        self._log_limiter = LogLimiter(_LOG_THROTTLE_S)
        self._lock = threading.RLock()
        self._config: Optional[AgentConfig] = None
        self._chatspot: Any = None  # chatspot_ros.pipeline.ChatSpot
        self._model_info: dict[str, str] = {}
        self._last_error = ""
        self._worker: Optional[InferenceWorker] = None
        # Frames by stamp, and detection messages waiting for theirs (not on a thread); the one
        # wait rule (frames.match_tolerance_s, frames.wait_s) also serves service requests.
        self._matcher: FrameMatcher[convert.DecodedFrame, _AwaitingDetections] = FrameMatcher(1)
        self._awaiting_timer: Any = None
        self._image_frame_id = ""
        self._camera: Optional[PinholeCamera] = None
        self._task = ""
        self._active_requests: set[PendingRequest] = set()
        self._describe_goals: set[PendingRequest] = set()
        self._tf_buffer: Any = None
        self._tf_listener: Any = None
        self._tracker = RequestTracker()  # service / action handlers running (deactivate waits on it)

        # Images, camera_info, detections and the task in one group (they share the frame buffer
        # state); clicks in their own, since placing a 3D click may wait for tf (tf.timeout_s).
        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._click_group = MutuallyExclusiveCallbackGroup()
        self._request_group = ReentrantCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self._subscriptions_active: list[Any] = []
        self._servers: list[Any] = []
        self._action_server: Optional[ActionServer] = None
        self._outputs: dict[str, Any] = {}

        # /diagnostics: a plain (not lifecycle) publisher, so that it reports in every state.
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
            evicted = self._configure_matcher(config)
            if self._worker is not None:
                self._worker.set_limits(config.queues_max_pending_requests,
                                        config.queues_max_pending_detections,
                                        config.queues_requests_per_detection)
            if self._chatspot is not None:
                self._set_builder_limits(config)
        for waiting in evicted:
            self._drop(waiting.request, "queue limit lowered", waiting.where)

    # ============================================================================ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            config = AgentConfig.from_parameters(self._parameter_values())
            if not config.model_path.strip():
                if config.model_backend != "local":
                    raise ValueError("model.path is empty: with model.backend vllm set it to a local copy of "
                                     "the served checkpoint's config files")
                config = dataclasses.replace(config, model_path=str(shipped_model()))
                self.get_logger().warning(
                    f"model.path is empty: loading the shipped DEMO model {config.model_path}. It knows only "
                    "the synthetic tabletop world (coloured cubes, balls and triangles); set model.path to a "
                    "real checkpoint for your robot's scenes")
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
                self._set_builder_limits(config)
            except ValueError as exc:
                self._release_model()
                return self._configure_failed(f"invalid referring settings: {exc}")
            self._matcher.clear()
            self._configure_matcher(config)  # nothing waits while unconfigured: drops nothing
            self._worker = self._new_worker(config)
        self._create_outputs(config)
        self._last_error = ""
        self.get_logger().info(
            f"configured: model {self._model_info.get('model')} ({self._model_info.get('family')}) on "
            f"{config.model_device}/{config.model_dtype}, vision backend "
            f"{self._model_info.get('backend')}, dialect {self._model_info.get('dialect')}, "
            f"templates {self._model_info.get('templates')}, "
            f"loaded in {time.perf_counter() - start:.1f} s"
        )
        return TransitionCallbackReturn.SUCCESS

    def _configure_matcher(self, config: AgentConfig) -> tuple[_AwaitingDetections, ...]:
        return self._matcher.configure(
            capacity=config.frames_buffer_size,
            policy=MatchPolicy(config.match_tolerance_ns, config.frames_wait_s),
            max_waiting=config.queues_max_pending_detections,
            max_backward_jump_ns=int(config.frames_max_backward_jump_s * 1e9))

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        self._last_error = reason
        self._stats.incr("configure.failed")
        self.get_logger().error(f"configure failed: {reason}")
        return TransitionCallbackReturn.FAILURE

    def _new_worker(self, config: AgentConfig) -> InferenceWorker:
        return InferenceWorker(config.queues_max_pending_requests, config.queues_max_pending_detections,
                               self._on_worker_error, requests_per_detection=config.queues_requests_per_detection,
                               on_share_turn=lambda: self._stats.incr("detections.share_turns"))

    def _create_outputs(self, config: AgentConfig) -> None:
        """Lifecycle publishers (they publish only while active). Answers are reliable, so that
        both reliable and best-effort subscribers connect; debug/image keeps only the newest."""
        reliable = QoSProfile(depth=config.qos_output_depth, reliability=ReliabilityPolicy.RELIABLE,
                              history=HistoryPolicy.KEEP_LAST)
        newest_only = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self._outputs = {
            "descriptions": self.create_lifecycle_publisher(RegionDescriptionArray, "region_descriptions", reliable),
            "suggestions": self.create_lifecycle_publisher(ActionSuggestion, "action_suggestions", reliable),
            "debug_image": self.create_lifecycle_publisher(Image, "debug/image", newest_only),
            "markers": self.create_lifecycle_publisher(MarkerArray, "debug/markers", reliable),
        }

    def _destroy_outputs(self) -> None:
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = {}

    def _load_model(self, config: AgentConfig) -> Any:
        from chatspot_ros.pipeline import ChatSpot, default_templates_file, load_templates
        from chatspot_ros.runtime import RuntimeConfig

        templates = load_templates(config.referring_templates)  # before minutes of loading
        templates_file = config.referring_templates or str(default_templates_file() or "built-in defaults")

        options = dict(dialect=config.referring_format or None,
                       precision=None if config.referring_precision < 0 else config.referring_precision,
                       templates=templates)
        if config.model_backend == "vllm":  # the served model; health and model name checked here
            from chatspot_ros.remote import ServerConfig

            server = ServerConfig(
                url=config.server_url, model_config=config.server_model_config or config.model_path,
                model=config.server_model, timeout_s=config.server_timeout_s,
                max_concurrency=config.server_max_concurrency, image_format=config.server_image_format,
                feature_cache_size=config.model_feature_cache_size, startup_wait_s=config.server_startup_wait_s,
            )
            chatspot = ChatSpot.from_server(server, **options)
        else:
            runtime_config = RuntimeConfig(
                model_path=config.model_path, device=config.model_device, dtype=config.model_dtype,
                vision_backend=config.vision_backend, engine_dir=config.vision_engine_dir,
                feature_cache_size=config.model_feature_cache_size,
                trust_remote_code=config.model_trust_remote_code,
                decoder=config.generation_decoder, compile=config.generation_compile,
                sync_every=config.generation_sync_every, quantization=config.model_quantization,
            )
            chatspot = ChatSpot.from_config(runtime_config, **options)
        runtime = chatspot.runtime
        self._model_info = {
            "model": str(runtime.model_name), "family": str(runtime.family),
            "backend": str(runtime.backend_name), "device": config.model_device,
            "dtype": config.model_dtype,
            "dialect": config.referring_format or str(runtime.default_dialect),
            "templates": templates_file,
        }
        if config.model_backend == "vllm":
            self._model_info.update({"device": "server", "dtype": "server", "server": server.display_url})
        return chatspot

    @property
    def _builder(self) -> Optional[InstructionBuilder]:
        """The ChatSpot core's InstructionBuilder (owned there, one per loaded model)."""
        chatspot = self._chatspot
        return chatspot.builder if chatspot is not None else None

    def _set_builder_limits(self, config: AgentConfig) -> None:
        self._chatspot.set_limits(
            max_question_chars=config.limits_max_question_chars,
            max_regions=max(config.limits_max_regions_per_request, config.limits_max_regions_per_frame),
            max_outside=config.referring_max_outside,
        )

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        config = self._config
        assert config is not None and self._worker is not None
        if Detection2DArray is None:
            self.get_logger().warning("vision_msgs is not installed: the detections input is off")
        self._matcher.reopen()
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

    def _subscribe(self, msg_type: Any, topic: str, callback: Callable[[Any], None], qos: QoSProfile,
                   group: Any) -> None:
        events = SubscriptionEventCallbacks(
            incompatible_qos=lambda event, t=topic: self.get_logger().warning(
                f"'{t}': a publisher's QoS is incompatible with this subscription "
                f"(policy {event.last_policy_kind}); check qos.* parameters"
            )
        )
        self._subscriptions_active.append(self.create_subscription(
            msg_type, topic, callback, qos, callback_group=group, event_callbacks=events))

    def _create_interfaces(self, config: AgentConfig) -> None:
        # Camera input: sensor data (best effort by default, shallow, keep last).
        sensor_qos = QoSProfile(depth=config.qos_image_depth, history=HistoryPolicy.KEEP_LAST,
                                reliability=_RELIABILITY[config.qos_image_reliability])
        # Detections and clicks: each message matters (reliable by default).
        input_qos = QoSProfile(depth=config.qos_detections_depth, history=HistoryPolicy.KEEP_LAST,
                               reliability=_RELIABILITY[config.qos_detections_reliability])
        # The task is state, not a stream: the newest only; transient_local receives a latched one.
        task_qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                              reliability=_RELIABILITY[config.qos_detections_reliability],
                              durability=_DURABILITY[config.qos_task_durability])
        sensors = self._sensor_group
        if config.image_transport == "compressed":
            self._subscribe(CompressedImage, self._image_topic(config), self._on_compressed_image, sensor_qos, sensors)
        else:
            self._subscribe(Image, config.topics_image, self._on_image, sensor_qos, sensors)
        if config.camera_info_enabled:
            self._subscribe(CameraInfo, config.topics_camera_info, self._on_camera_info, sensor_qos, sensors)
        if Detection2DArray is not None:
            self._subscribe(Detection2DArray, config.topics_detections, self._on_detections, input_qos, sensors)
        self._subscribe(PointStamped, config.topics_clicked_point, self._on_click, input_qos, self._click_group)
        self._subscribe(String, config.topics_task, self._on_task, task_qos, sensors)
        sent = self._tracker.sent
        self._servers = [
            _report_sent(self.create_service(AskRegion, "ask", self._on_ask,
                                             callback_group=self._request_group), sent),
            _report_sent(self.create_service(SuggestActions, "suggest_actions", self._on_suggest_actions,
                                             callback_group=self._request_group), sent),
        ]
        self._action_server = _TrackedActionServer(
            self, Describe, "describe", self._execute_describe, on_result_sent=sent,
            callback_group=self._request_group,
            goal_callback=lambda goal: GoalResponse.ACCEPT,
            handle_accepted_callback=self._on_describe_accepted,
            cancel_callback=lambda goal_handle: CancelResponse.ACCEPT,
        )
        # Detections waiting for their frame are looked up again on each frame and on this timer
        # (in the sensor group: it runs between image and detection callbacks, never beside them).
        self._awaiting_timer = self.create_timer(_AWAITING_PERIOD_S, self._release_awaiting,
                                                 callback_group=sensors)
        if TfBuffer is not None and self._tf_buffer is None:
            self._tf_buffer = TfBuffer()
            self._tf_listener = TransformListener(self._tf_buffer, self)

    def _destroy_interfaces(self) -> None:
        if self._awaiting_timer is not None:
            self.destroy_timer(self._awaiting_timer)
            self._awaiting_timer = None
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
        self._stop_work("node deactivated")
        self._wait_responses(10.0)
        self._destroy_interfaces()
        self.get_logger().info("inactive: subscriptions, services and the action are stopped")
        return super().on_deactivate(state)

    def _drop_awaiting(self, reason: str) -> None:
        """Drop (and count) every detection waiting for its frame; refuse new ones until activate."""
        for waiting in self._matcher.close():
            self._drop(waiting.request, reason, waiting.where)

    def _stop_work(self, reason: str) -> None:
        self._drop_awaiting(reason)
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
            self._worker = self._new_worker(config)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_outputs()
        self._release_model()
        self._matcher.clear()
        self._camera = None
        self.get_logger().info("cleaned up: model released")
        return TransitionCallbackReturn.SUCCESS

    def _release_model(self) -> None:
        with self._lock:
            chatspot, self._chatspot = self._chatspot, None
            self._config = None
            self._worker = None
            self._model_info = {}
            self._describe_goals.clear()
            self._active_requests.clear()
        if chatspot is not None:
            chatspot.close()
            del chatspot
        # Freed model memory goes back to the system: cycles of the model and the jobs that held
        # frames are collected, and glibc's raised trim threshold (allocator.py) is undone once.
        gc.collect()
        trim_heap()

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().info(f"shutting down from '{state.label}'")
        if state.label == "active":
            self._stop_work("node shutting down")
            self._wait_responses(5.0)
            self._destroy_interfaces()
        if state.label in ("active", "inactive"):
            self._destroy_outputs()
            self._release_model()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error during a transition from '{state.label}': releasing everything")
        self._destroy_interfaces()
        self._drop_awaiting("node error")
        if self._worker is not None:
            self._worker.stop("node error", timeout=5.0)
        self._destroy_outputs()
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

    def _wait_responses(self, timeout: float) -> None:
        """Before the servers go: wait until every handler returned (its request was failed or
        answered), then until rclpy has sent those responses and results (the tracker counts each
        send, see _report_sent and _TrackedActionServer); at most _RESPONSE_WAIT_S for the sends,
        which only a goal whose client never asked for its result uses up."""
        if not self._tracker.wait_idle(timeout):
            self.get_logger().warning(f"{len(self._tracker)} request callback(s) still running")
        forgotten = self._tracker.wait_sent(_RESPONSE_WAIT_S)
        if forgotten:
            self.get_logger().warning(f"{forgotten} response(s) not sent within {_RESPONSE_WAIT_S:g} s "
                                      "(a client that never asked for its result?)")

    def _warn(self, key: str, message: str) -> None:
        """A warning about a counted event; at most one per _LOG_THROTTLE_S for each ``key`` (the
        event's counter), so that a flood of one kind does not hide the others."""
        held = self._log_limiter.allow(key)
        if held is not None:
            self.get_logger().warning(message + (f" (and {held} more like it since the last report)" if held else ""))

    def _on_image(self, msg: Image) -> None:
        self._receive_frame(lambda cfg: convert.frame_from_image(
            msg, cfg.image_limits, use_cv_bridge=cfg.image_use_cv_bridge))

    def _on_compressed_image(self, msg: CompressedImage) -> None:
        self._receive_frame(lambda cfg: convert.frame_from_compressed(
            msg, cfg.image_limits, self._reduction_for(cfg)))

    def _reduction_for(self, config: AgentConfig) -> Optional[Callable[[int, int], int]]:
        """JPEG decode scale: the largest 1/r at which the model's input is still fully covered."""
        builder = self._builder
        if not config.image_reduced_decode or builder is None:
            return None
        return builder.geometry.max_reduction

    def _receive_frame(self, make: Callable[[AgentConfig], convert.DecodedFrame]) -> None:
        """Check a frame's header and buffer it; the pixels are decoded when a request needs them."""
        start = time.perf_counter()
        self._stats.incr("images.received")
        config = self._config
        if config is None:
            self._stats.incr("images.rejected")
            self._warn("images.rejected", "image rejected: the node is not configured")
            return
        try:
            frame = make(config)
        except ImageDecodeError as exc:
            self._stats.incr("images.rejected")
            self._warn("images.rejected", f"image rejected: {exc}")
            return
        pushed = self._matcher.push(frame.stamp_ns, frame)  # stamp lookups only: nothing is decoded
        if pushed.time_jump:
            self._stats.incr("frames.time_jumps")
            self.get_logger().warning(
                f"image stamp {format_ns(frame.stamp_ns)} jumped back more than "
                f"{config.frames_max_backward_jump_s:g} s: frame buffer cleared")
        self._image_frame_id = frame.frame_id
        self._stats.incr("images.buffered")
        self._stats.observe("receive", (time.perf_counter() - start) * 1e3)
        for released in pushed.released:
            self._dispatch_detections(released.item, released.result)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._stats.incr("camera_info.received")
        try:
            self._camera = convert.camera_from_info(msg)
        except ValueError as exc:
            self._stats.incr("camera_info.rejected")
            self._warn("camera_info.rejected", f"camera_info rejected: {exc}")

    def _on_task(self, msg: String) -> None:
        self._stats.incr("tasks.received")
        config = self._config
        text = msg.data.strip()
        if config is not None and len(text) > config.limits_max_question_chars:
            self._stats.incr("tasks.rejected")
            self._warn("tasks.rejected", f"task rejected: {len(text)} characters, the limit is "
                                         f"{config.limits_max_question_chars} (limits.max_question_chars)")
            return
        if text != self._task:
            self.get_logger().info(f"task {'set to ' + repr(text) if text else 'cleared'}")
        self._task = text

    def _drop(self, request: PendingRequest, reason: str, where: str) -> None:
        if request.finish("dropped", Outcome(False, reason)):
            self._warn(f"{request.counter}.dropped", f"{where} dropped: {reason}")

    def _fail(self, request: PendingRequest, reason: str, where: str) -> None:
        if request.finish("failed", Outcome(False, reason)):
            self._warn(f"{request.counter}.failed", f"{where} failed: {reason}")

    # -- detections ------------------------------------------------------------------------

    def _on_detections(self, msg: Any) -> None:
        self._stats.incr("detections.received")
        config, worker = self._config, self._worker
        stamp_ns = convert.time_to_ns(msg.header.stamp)
        where = f"detections at {format_ns(stamp_ns)}"
        if config is None or worker is None:
            self._stats.incr("detections.rejected")
            self._warn("detections.rejected", f"{where} rejected: the node is not configured")
            return
        if not msg.detections:
            self._stats.incr("detections.empty")
            self.get_logger().debug(f"{where}: empty, nothing to describe")
            return
        frame_id = msg.header.frame_id
        if frame_id and self._image_frame_id and frame_id != self._image_frame_id:
            self._stats.incr("detections.rejected")
            self._warn("detections.rejected", f"{where} rejected: frame '{frame_id}' is not the camera "
                                              f"frame '{self._image_frame_id}'")
            return
        cap = config.limits_max_regions_per_frame
        regions, errors, overflow = convert.detections_to_regions(msg.detections, cap)
        if errors:
            self._stats.incr("regions.rejected", len(errors))
            self._warn("regions.rejected", f"{where}: {len(errors)} invalid detection(s), e.g. {errors[0]}")
        if overflow:
            self._stats.incr("regions.overflow", overflow)
            self._warn("regions.overflow", f"{where}: {len(regions) + overflow} detections, answering the "
                                           f"{cap} highest-scoring (limits.max_regions_per_frame); "
                                           f"{overflow} left out")
        if not regions:
            self._stats.incr("detections.rejected")
            return
        detections = _AwaitingDetections(PendingRequest(self._stats, RequestKind.DETECTIONS), regions, where)
        # Matched without blocking: a frame that has not arrived yet is waited for in the
        # matcher (released on a later frame or by _release_awaiting), never on a thread.
        submitted = self._matcher.submit(stamp_ns, detections)
        for old in submitted.evicted:
            self._drop(old.request, "too many detection messages waiting for their frame "
                                    "(queues.max_pending_detections): a newer message replaced it", old.where)
        if submitted.arrival is Arrival.REFUSED:
            self._drop(detections.request, "stopped", where)
        elif submitted.arrival is not Arrival.WAITING:
            assert submitted.result is not None
            self._dispatch_detections(detections, submitted.result)

    def _release_awaiting(self) -> None:
        """Detections waiting for their frame: queue those whose frame has arrived, and finish as
        unmatched those whose lookup failed for good or that waited frames.wait_s in vain."""
        for released in self._matcher.poll():
            self._dispatch_detections(released.item, released.result)

    def _dispatch_detections(self, detections: _AwaitingDetections,
                             match: MatchResult[convert.DecodedFrame]) -> None:
        """Queue matched detections for the worker; else count them unmatched, with the reason."""
        request, where = detections.request, detections.where
        if not match.ok:
            if request.finish("unmatched", Outcome(False, match.message)):
                self._warn("detections.unmatched", f"{where}: no frame: {match.message}")
            return
        worker = self._worker
        if worker is None:
            self._drop(request, "the node is not configured", where)
            return
        frame, regions = match.frame.item, detections.regions
        worker.submit_stream(Job("detections", lambda: self._answer_detections(request, frame, regions, where),
                                 lambda reason: self._drop(request, reason, where),
                                 lambda reason: self._fail(request, reason, where)))

    def _answer_detections(self, request: PendingRequest, frame: convert.DecodedFrame,
                           detections: list[convert.DetectionRegion], where: str) -> None:
        """Worker: describe each detection on its matched frame (and suggest actions for the task)."""
        config, builder = self._config, self._builder
        if config is None or builder is None:
            request.finish("failed", Outcome(False, "node not configured"))
            return
        task = self._task if config.task_suggest_on_detections else ""
        plan = InstructionPlanner(builder).for_detections(
            [d.region for d in detections], (frame.width, frame.height), task=task,
            suggest_for=config.task_max_detections)
        for _, reason in plan.rejected:
            self._stats.incr("regions.rejected")
            self._warn("regions.rejected", f"{where}: {reason}")
        for _, reason in plan.suggestions_rejected:
            self._stats.incr("suggestions.rejected")
            self._warn("suggestions.rejected", f"{where}: no action suggestion: {reason}")
        if plan.first(Role.DESCRIBE) is None:
            request.finish("rejected", Outcome(False, "no valid region in the image"))
            return
        result = self._run_model(request, frame, (frame.frame_id, frame.stamp_ns), plan.instructions,
                                 config.generation_max_new_tokens, where)
        if result is None:
            return
        texts, elapsed_s = result
        header = convert.copy_header(frame.header)
        described = plan.by_role(texts, Role.DESCRIBE)
        self._publish_descriptions(header, elapsed_s, [(detections[a.source].label, a.instruction, a.text)
                                                       for a in described])
        for suggestion in plan.by_role(texts, Role.SUGGEST):
            self._publish_suggestion(header, suggestion.instruction, task, suggestion.text)
        self._stats.incr("regions.answered", len(described))
        request.finish("answered", Outcome(True, "", tuple(texts), tuple(plan.instructions), header))
        self._publish_debug(frame, [Annotation(a.instruction.regions[0],
                                               f"{detections[a.source].label or detections[a.source].region.id}: "
                                               f"{a.text}") for a in described])

    # -- clicks ----------------------------------------------------------------------------

    def _on_click(self, msg: PointStamped) -> None:
        self._stats.incr("clicks.received")
        config, worker, builder = self._config, self._worker, self._builder
        if config is None or worker is None or builder is None:
            self._stats.incr("clicks.rejected")
            self._warn("clicks.rejected", "click rejected: the node is not configured")
            return
        frame = self._click_frame(msg, config)
        if frame is None:
            self._stats.incr("clicks.unmatched")
            self._warn("clicks.unmatched", "click ignored: no image received yet")
            return
        task = self._task
        size = (frame.width, frame.height)
        try:
            p = msg.point
            u, v = convert.click_to_pixel(
                (p.x, p.y, p.z), msg.header.frame_id, frame.frame_id, self._camera,
                rectified=config.projection_rectified, transform=self._tf_transform(msg, config.tf_timeout_s))
            region = convert.click_region(u, v, frame.width, frame.height, config.click_box_size)
            plan = InstructionPlanner(builder).for_click(region, size, question=config.click_question, task=task)
        except ValueError as exc:
            self._stats.incr("clicks.rejected")
            self._warn("clicks.rejected", f"click rejected: {exc}")
            return
        request = PendingRequest(self._stats, RequestKind.CLICK)
        job = Job("click", lambda: self._answer_click(request, frame, plan, task),
                  lambda reason: self._drop(request, reason, "click"),
                  lambda reason: self._fail(request, reason, "click"))
        if not worker.submit_request(job):
            request.finish("dropped", Outcome(False, "busy"))
            self._warn("clicks.dropped", "click dropped: the request queue is full "
                                         "(queues.max_pending_requests)")

    def _click_frame(self, msg: PointStamped, config: AgentConfig) -> Optional[convert.DecodedFrame]:
        """The frame with the click's stamp, else the latest (rviz stamps clicks with 'now');
        None when no frame has arrived."""
        stamp_ns = convert.time_to_ns(msg.header.stamp)
        if stamp_ns:
            match = self._matcher.lookup(stamp_ns)
            if match.ok:
                return match.frame.item
        latest = self._matcher.latest()
        return latest.item if latest is not None else None

    def _tf_transform(self, msg: PointStamped,
                      timeout_s: float) -> Optional[Callable[[str], tuple[float, float, float]]]:
        """A function that moves the click into a target frame with tf2 (None without tf2)."""
        buffer = self._tf_buffer
        if buffer is None:
            return None

        def transform(target: str) -> tuple[float, float, float]:
            try:
                stamped = buffer.transform(msg, target, timeout=RosDuration(seconds=timeout_s))
            except TransformException as exc:
                raise ValueError(f"cannot transform the click from '{msg.header.frame_id}' to "
                                 f"'{target}': {exc}") from None
            return stamped.point.x, stamped.point.y, stamped.point.z

        return transform

    def _answer_click(self, request: PendingRequest, frame: convert.DecodedFrame, plan: Plan, task: str) -> None:
        config = self._config
        if config is None:
            request.finish("failed", Outcome(False, "node not configured"))
            return
        result = self._run_model(request, frame, (frame.frame_id, frame.stamp_ns), plan.instructions,
                                 config.generation_max_new_tokens, "click")
        if result is None:
            return
        texts, elapsed_s = result
        header = convert.copy_header(frame.header)
        answers = plan.answers(texts)
        about = [a for a in answers if a.role is not Role.SUGGEST]  # the description or the answer
        self._publish_descriptions(header, elapsed_s, [("", a.instruction, a.text) for a in about])
        for suggestion in plan.by_role(texts, Role.SUGGEST):
            self._publish_suggestion(header, suggestion.instruction, task, suggestion.text)
        request.finish("answered", Outcome(True, "", tuple(texts), tuple(plan.instructions), header))
        self._publish_debug(frame, [Annotation(a.instruction.regions[0], a.text) for a in about])

    # ============================================================================ model

    def _run_model(self, request: PendingRequest, frame: convert.DecodedFrame, key: Any,
                   instructions: Sequence[ReferringInstruction], max_new_tokens: int, where: str,
                   on_token: Optional[Callable[[int, str], None]] = None,
                   ) -> Optional[tuple[list[str], float]]:
        """Worker: run the model on one frame; on failure finish ``request`` as failed and return None."""
        from chatspot_ros.runtime import GenerationConfig

        config = self._config
        chatspot = self._chatspot
        if config is None or chatspot is None:
            request.finish("failed", Outcome(False, "node not configured"))
            return None
        if request.should_stop():
            request.finish(request.kind.stopped_status,
                           Outcome(False, request.stop_reason or "stopped before it ran"))
            return None
        start = time.perf_counter()
        try:
            rgb = frame.rgb()
        except ImageDecodeError as exc:
            self._stats.incr("images.decode_failed")
            request.finish("failed", Outcome(False, f"cannot decode the image: {exc}"))
            self._warn("images.decode_failed", f"{where}: cannot decode the image: {exc}")
            return None
        self._stats.observe("conversion", (time.perf_counter() - start) * 1e3)
        try:
            gen = GenerationConfig(
                max_new_tokens=int(max_new_tokens), temperature=config.generation_temperature,
                top_p=config.generation_top_p,
                seed=None if config.generation_seed < 0 else config.generation_seed,
            )
            with self._lock:
                self._active_requests.add(request)
            result = chatspot.answer_frame(rgb, key, list(instructions), gen, on_token=on_token,
                                           should_stop=request.should_stop)
        except Exception as exc:  # noqa: BLE001 - a model error fails this request (counted), not the node
            self._model_failed(request, as_model_error(exc), where)
            return None
        finally:
            with self._lock:
                self._active_requests.discard(request)
        elapsed_s = time.perf_counter() - start
        self._observe(result, elapsed_s)
        if request.stop_reason is not None and not request.kind.is_service:
            # A detection or click stopped mid-generation (deactivation, shutdown): its partial
            # answers are not published. (Service calls and goals return theirs as "cancelled".)
            request.finish("failed", Outcome(False, request.stop_reason))
            self._warn(f"{request.counter}.failed", f"{where}: stopped: {request.stop_reason}")
            return None
        return result.texts, elapsed_s

    def _observe(self, result: Any, elapsed_s: float) -> None:
        """Stage latencies of one ChatSpot.answer_frame call (a FrameAnswers): the core reports the
        vision time once (0 on a cache hit) and each decode batch once."""
        self._stats.observe("vision", result.vision_ms)
        self._stats.observe("prefill", result.prefill_ms)
        self._stats.observe("decode", result.decode_ms)
        self._stats.observe("total", elapsed_s * 1e3)
        self._stats.observe_tokens(result.tokens, result.decode_ms)

    def _model_failed(self, request: PendingRequest, error: Exception, where: str) -> None:
        """A typed model error (the runtime already dropped its caches after running out of memory)."""
        self._stats.incr("model.errors")
        if isinstance(error, ModelOutOfMemory):
            self._stats.incr("model.oom")
        message = f"model error: {error}"
        request.finish("failed", Outcome(False, message))
        self.get_logger().error(f"{where}: {message}")

    def _on_worker_error(self, job: Job, exc: Exception) -> None:
        # Jobs report their own failures; reaching here is a bug in the node. The job still fails
        # with the reason (Job.fail), so its request is answered and counted; the node keeps going.
        self._stats.incr("worker.errors")
        self.get_logger().error(f"internal error in a {job.kind} job: {type(exc).__name__}: {exc}\n"
                                + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))

    # ============================================================================ outputs

    def _publish(self, key: str, msg: Any) -> None:
        publisher = self._outputs.get(key)
        if publisher is not None:
            publisher.publish(msg)

    def _publish_descriptions(self, header: Header, elapsed_s: float,
                              items: Sequence[tuple[str, ReferringInstruction, str]]) -> None:
        """(label, instruction, answer) per region; ``inference_time_s`` is the wall time of the
        model call (decode of the image, vision encoder, prefill, generation)."""
        self._publish("descriptions", convert.region_descriptions(
            header, elapsed_s, self._model_info.get("model", ""), items))

    def _publish_suggestion(self, header: Header, instruction: ReferringInstruction, task: str,
                            text: str) -> None:
        self._publish("suggestions", convert.action_suggestion(header, instruction.regions[0], task, text))

    def _wants(self, key: str) -> bool:
        publisher = self._outputs.get(key)
        return publisher is not None and publisher.get_subscription_count() > 0

    def _publish_debug(self, frame: convert.DecodedFrame, annotations: list[Annotation]) -> None:
        """Worker: debug/image and debug/markers, built only while someone subscribes."""
        config = self._config
        if config is None:
            return
        if config.debug_image and self._wants("debug_image"):
            start = time.perf_counter()
            canvas = draw_annotations(frame.rgb(), annotations, max_width=config.debug_max_width,
                                      region_scale=frame.rgb_scale)
            self._publish("debug_image", convert.rgb_to_image(canvas, frame.header))
            self._stats.observe("drawing", (time.perf_counter() - start) * 1e3)
        camera = self._camera
        if config.debug_markers and camera is not None and self._wants("markers"):
            self._publish("markers", convert.markers_from_annotations(
                frame.header, camera, annotations, config.debug_marker_depth, frame.width, frame.height))

    # ============================================================================ services

    def _resolve_frame(self, stamp: Any, image: Image, config: AgentConfig) -> tuple[convert.DecodedFrame, Any]:
        """The frame a request names: its own image, the latest, or the one with its stamp."""
        if not convert.image_is_empty(image):
            return convert.frame_from_image(image, config.image_limits,
                                            use_cv_bridge=config.image_use_cv_bridge), None
        if convert.is_zero_time(stamp):
            latest = self._matcher.latest()
            if latest is None:
                raise ValueError(f"no image received yet on '{self._image_topic(config)}'")
            frame = latest.item
        else:
            # The same wait rule as detections (frames.wait_s), blocking this service thread.
            match: MatchResult[convert.DecodedFrame] = self._matcher.wait(convert.time_to_ns(stamp))
            if not match.ok:
                raise ValueError(f"no frame for stamp {format_ns(convert.time_to_ns(stamp))}: {match.message}")
            frame = match.frame.item
        return frame, (frame.frame_id, frame.stamp_ns)

    def _prepare_request(self, stamp: Any, image: Image, build: BuildInstructions,
                         ) -> tuple[convert.DecodedFrame, Any, list[ReferringInstruction]]:
        """Checks shared by ask / suggest_actions / describe; ValueError when the request is refused."""
        config, builder = self._config, self._builder
        if config is None or builder is None:
            raise ValueError("the node is not configured")
        frame, key = self._resolve_frame(stamp, image, config)
        return frame, key, build(builder, (frame.width, frame.height))

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
        """Queue the request for the worker and wait for its outcome (or the request timeout)."""
        config = self._config
        worker = self._worker
        if config is None or worker is None:
            request.finish("rejected", Outcome(False, "the node is not active"))
            return request.outcome or Outcome(False, "the node is not active")

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
            if not worker.running:
                message = "the node is deactivating"
            else:
                message = (f"busy: {config.queues_max_pending_requests} requests are already waiting "
                           "(queues.max_pending_requests)")
            request.finish("rejected", Outcome(False, message))
        elif not request.wait(config.queues_request_timeout_s):
            request.stop("timed out")
            request.finish("failed", Outcome(False, f"timed out after {config.queues_request_timeout_s:g} s "
                                                    "(queues.request_timeout_s)"))
        assert request.outcome is not None
        return request.outcome

    def _refuse(self, request: PendingRequest, response: Any, exc: Exception, where: str) -> Any:
        request.finish("rejected", Outcome(False, str(exc)))
        response.success = False
        response.message = str(exc)
        self._warn("requests.rejected", f"{where} refused: {exc}")
        return response

    def _on_ask_impl(self, pending: PendingRequest, request: AskRegion.Request,
                     response: AskRegion.Response) -> AskRegion.Response:
        try:
            spec = self._check_fields(request.stamp, request.regions, request.question, request.max_new_tokens)
            frame, key, instructions = self._prepare_request(
                request.stamp, request.image,
                lambda b, size: InstructionPlanner(b).for_ask(spec.question, spec.regions, size).instructions)
        except ValueError as exc:
            return self._refuse(pending, response, exc, "ask")
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

    def _on_suggest_actions_impl(self, pending: PendingRequest, request: SuggestActions.Request,
                                 response: SuggestActions.Response) -> SuggestActions.Response:
        try:
            regions = [request.region] if len(request.region.points) else []
            spec = self._check_fields(request.stamp, regions, request.task, 0, what="task")

            frame, key, instructions = self._prepare_request(
                request.stamp, request.image,
                lambda b, size: InstructionPlanner(b).for_suggest(
                    spec.question, spec.regions[0] if spec.regions else None, size).instructions)
        except ValueError as exc:
            return self._refuse(pending, response, exc, "suggest_actions")
        outcome = self._submit_and_wait(pending, frame, key, instructions, spec.max_new_tokens, "suggest_actions")
        response.success = outcome.success
        response.message = outcome.message
        text = outcome.texts[0] if outcome.texts else ""
        response.suggestion = convert.action_suggestion(frame.header, instructions[0].regions[0], spec.question, text)
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

    def _execute_describe_impl(self, pending: PendingRequest, goal_handle: Any) -> Describe.Result:
        goal = goal_handle.request
        result = Describe.Result()
        try:
            spec = self._check_fields(goal.stamp, goal.regions, goal.question, goal.max_new_tokens,
                                      require_question=False)
            frame, key, instructions = self._prepare_request(
                goal.stamp, goal.image,
                lambda b, size: InstructionPlanner(b).for_describe(spec.question, spec.regions, size).instructions)
        except ValueError as exc:
            self._refuse(pending, result, exc, "describe")
            goal_handle.abort()
            return result
        tokens = [0]

        def on_token(index: int, text: str) -> None:
            tokens[0] += 1
            goal_handle.publish_feedback(Describe.Feedback(partial=text, tokens=tokens[0]))

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

    def note_executor_error(self, exc: BaseException) -> None:
        """The executor loop (agent.spin_until_shutdown) caught ``exc`` and logged it: counted, so
        the requests status in /diagnostics warns (the model itself is fine)."""
        self._stats.incr("executor.errors")

    # -- entry points: counted while they run (see on_deactivate); a bug fails the request only

    def _serve(self, where: str, pending: PendingRequest, handler: Callable[[], Any], response: Any,
               on_internal_error: Optional[Callable[[], None]] = None) -> Any:
        """Run a service / action handler. Every request is counted once: received, then one
        outcome (the handler's, or ``failed`` with the reason when the handler raised)."""
        self._stats.incr("requests.received")
        self._tracker.enter(pending)
        try:
            return handler()
        except Exception as exc:  # noqa: BLE001 - a bug answers success=false with the reason, counted
            message = f"internal error: {type(exc).__name__}: {exc}"
            self._stats.incr("internal.errors")
            pending.stop(message)
            pending.finish("failed", Outcome(False, message))
            self.get_logger().error(f"{where}: {message}\n{traceback.format_exc()}")
            response.success = False
            response.message = message
            if on_internal_error is not None:
                on_internal_error()
            return response
        finally:
            self._tracker.leave(pending)

    def _on_ask(self, request: AskRegion.Request, response: AskRegion.Response) -> AskRegion.Response:
        pending = PendingRequest(self._stats, RequestKind.ASK)
        return self._serve("ask", pending, lambda: self._on_ask_impl(pending, request, response), response)

    def _on_suggest_actions(self, request: SuggestActions.Request,
                            response: SuggestActions.Response) -> SuggestActions.Response:
        pending = PendingRequest(self._stats, RequestKind.SUGGEST)
        return self._serve("suggest_actions", pending,
                           lambda: self._on_suggest_actions_impl(pending, request, response), response)

    def _execute_describe(self, goal_handle: Any) -> Describe.Result:
        pending = PendingRequest(self._stats, RequestKind.DESCRIBE,
                                 stop_check=lambda: "cancelled" if goal_handle.is_cancel_requested else None)

        def abort_if_active() -> None:
            if goal_handle.is_active:
                goal_handle.abort()

        return self._serve("describe", pending, lambda: self._execute_describe_impl(pending, goal_handle),
                           Describe.Result(), abort_if_active)

    # ============================================================================ diagnostics

    def _publish_diagnostics(self) -> None:
        self._diag_pub.publish(self.diagnostics())

    def _server_status(self) -> dict[str, str]:
        """The vllm backend's live figures (server URL without credentials, requests, errors, latency)."""
        chatspot = self._chatspot
        status = getattr(chatspot.runtime, "status", None) if chatspot is not None else None
        return {f"server.{k}": str(v) for k, v in status().items()} if callable(status) else {}

    def diagnostics(self) -> DiagnosticArray:
        worker = self._worker
        queue_requests, queue_detections, busy = worker.depths() if worker else (0, 0, False)
        span = self._matcher.span()
        snapshot = NodeSnapshot(
            name=self.get_fully_qualified_name(), state=self._lifecycle_state(),
            model_info=dict(self._model_info, **self._server_status()), last_error=self._last_error,
            counters=self._stats.counters(), stages=self._stats.stages(), tokens_per_s=self._stats.tokens_per_s(),
            frames_buffered=self._matcher.frames_buffered, frames_capacity=self._matcher.capacity,
            newest_stamp_ns=span[1] if span else None, queue_requests=queue_requests,
            queue_detections=queue_detections, worker_busy=busy, task=self._task,
            awaiting_frame=self._matcher.waiting,
        )
        array = DiagnosticArray(status=build_statuses(snapshot))
        array.header.stamp = self.get_clock().now().to_msg()
        return array

