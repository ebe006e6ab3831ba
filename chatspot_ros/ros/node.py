"""The ``chatspot_agent`` lifecycle node: the ROS 2 adapter of the agent service.

Everything a non-ROS caller would also need (which model, which frame, request limits and
timeouts, planning, the worker, counting) is :class:`chatspot_ros.service.agent_service.AgentService`.
This node only adapts it:

* ``__init__`` declares every parameter of :data:`chatspot_ros.service.config.PARAMETERS` (with
  descriptors) and starts ``/diagnostics`` (so a failed configure is visible);
* ``on_configure`` -> ``service.configure`` (a failure is logged with its reason: FAILURE);
* ``on_activate`` -> ``service.start`` and the subscriptions, services and the action;
* ``on_deactivate`` -> ``service.stop`` (pending work fails with "node deactivated"), then the
  servers go once their responses were sent;
* ``on_cleanup`` -> ``service.release`` (the model and its GPU memory).

Callbacks convert messages (:mod:`chatspot_ros.ros.convert`, which checks them) and call the
service; its results come back through plain callbacks and are published here.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

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
from chatspot_ros.msg import ActionSuggestion, RegionDescriptionArray
from chatspot_ros.ros import convert
from chatspot_ros.ros.allocator import trim_heap
from chatspot_ros.ros.diagnostics import NodeSnapshot, build_statuses
from chatspot_ros.ros.drawing import Annotation, draw_annotations
from chatspot_ros.service.agent_service import (AgentService, Annotations, Answer, ConfigureError, Descriptions,
                                                FrameLike, Outputs, Query, Suggestion)
from chatspot_ros.service.config import PARAMETERS, AgentConfig
from chatspot_ros.service.projection import PinholeCamera
from chatspot_ros.service.stats import Stats
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
# See on_deactivate: the most it waits for rclpy to send responses and results of handlers that
# returned; reached only when a goal's client never asked for its result.
_RESPONSE_WAIT_S = 2.0
# How often detections waiting for their frame are looked up again (besides on each new frame),
# so that one whose frame never comes is answered "unmatched" at most this late after frames.wait_s.
_AWAITING_PERIOD_S = 0.05


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


def _header(frame: FrameLike) -> Header:
    """A copy of the header of a frame this node made (every frame it hands the service is one)."""
    assert isinstance(frame, convert.DecodedFrame), f"not a frame of this node: {type(frame).__name__}"
    return convert.copy_header(frame.header)


class ChatSpotAgentNode(LifecycleNode):
    """See the module docstring and docs/node.md."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, convert.parameter_descriptor(spec))
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.service = AgentService(log=self.get_logger(), outputs=Outputs(
            descriptions=self._publish_descriptions, suggestion=self._publish_suggestion,
            annotations=self._publish_debug))
        self._camera: Optional[PinholeCamera] = None
        self._tf_buffer: Any = None
        self._tf_listener: Any = None

        # Images, camera_info, detections and the task in one group (they share the frame buffer
        # state); clicks in their own, since placing a 3D click may wait for tf (tf.timeout_s).
        self._sensor_group = MutuallyExclusiveCallbackGroup()
        self._click_group = MutuallyExclusiveCallbackGroup()
        self._request_group = ReentrantCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self._subscriptions_active: list[Any] = []
        self._servers: list[Any] = []
        self._action_server: Optional[ActionServer] = None
        self._awaiting_timer: Any = None
        self._outputs: dict[str, Any] = {}

        # /diagnostics: a plain (not lifecycle) publisher, so that it reports in every state.
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        period = float(self.get_parameter("diagnostics.period_s").value)
        self._diag_timer = self.create_timer(period, self._publish_diagnostics, callback_group=self._diag_group)

    # ============================================================================ parameters

    def _parameter_values(self) -> dict[str, Any]:
        return {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}

    @property
    def config(self) -> Optional[AgentConfig]:
        return self.service.config

    @property
    def stats(self) -> Stats:
        return self.service.stats

    def _lifecycle_state(self) -> str:
        return self._state_machine.current_state[1]

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in {s.name for s in PARAMETERS}}
        reason = self.service.reconfigure(changes, state=self._lifecycle_state(), current=self._parameter_values())
        return SetParametersResult(successful=reason is None, reason=reason or "")

    # ============================================================================ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            config = self.service.configure(self._parameter_values())
        except ConfigureError:  # logged with its reason by the service
            return TransitionCallbackReturn.FAILURE
        self._create_outputs(config)
        return TransitionCallbackReturn.SUCCESS

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

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        config = self.service.config
        assert config is not None
        if Detection2DArray is None:
            self.get_logger().warning("vision_msgs is not installed: the detections input is off")
        self.service.start()
        try:
            self._create_interfaces(config)
        except Exception as exc:  # noqa: BLE001 - e.g. an invalid remapped name; fail the transition
            self._destroy_interfaces()
            self.service.stop("activation failed")
            self.service.last_error = f"activation failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(self.service.last_error)
            return TransitionCallbackReturn.FAILURE
        if abs(self._diag_timer.timer_period_ns / 1e9 - config.diagnostics_period_s) > 1e-9:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(config.diagnostics_period_s, self._publish_diagnostics,
                                                 callback_group=self._diag_group)
        self.get_logger().info(
            f"active: {'compressed' if config.image_transport == 'compressed' else 'raw'} images on "
            f"'{self._image_topic(config)}', detections on '{config.topics_detections}', "
            f"services 'ask', 'suggest_actions', action 'describe'")
        return super().on_activate(state)

    @staticmethod
    def _image_topic(config: AgentConfig) -> str:
        base = config.topics_image
        return f"{base}/compressed" if config.image_transport == "compressed" else base

    def _subscribe(self, msg_type: Any, topic: str, callback: Callable[[Any], None], qos: QoSProfile,
                   group: Any) -> None:
        events = SubscriptionEventCallbacks(
            incompatible_qos=lambda event, t=topic: self.get_logger().warning(
                f"'{t}': a publisher's QoS is incompatible with this subscription "
                f"(policy {event.last_policy_kind}); check qos.* parameters"))
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
        sent = self.service.tracker.sent
        self._servers = [
            _report_sent(self.create_service(AskRegion, "ask", self._on_ask, callback_group=self._request_group),
                         sent),
            _report_sent(self.create_service(SuggestActions, "suggest_actions", self._on_suggest_actions,
                                             callback_group=self._request_group), sent),
        ]
        self._action_server = _TrackedActionServer(
            self, Describe, "describe", self._execute_describe, on_result_sent=sent,
            callback_group=self._request_group, goal_callback=lambda goal: GoalResponse.ACCEPT,
            cancel_callback=lambda goal_handle: CancelResponse.ACCEPT)
        # Detections waiting for their frame are looked up again on each frame and on this timer
        # (in the sensor group: it runs between image and detection callbacks, never beside them).
        self._awaiting_timer = self.create_timer(_AWAITING_PERIOD_S, self.service.poll, callback_group=sensors)
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
        self.service.stop("node deactivated")
        self._wait_responses(10.0)
        self._destroy_interfaces()
        self.get_logger().info("inactive: subscriptions, services and the action are stopped")
        return super().on_deactivate(state)

    def _wait_responses(self, timeout: float) -> None:
        """Before the servers go: wait until every handler returned (its request was failed or
        answered), then until rclpy has sent those responses and results (the tracker counts each
        send, see _report_sent and _TrackedActionServer); at most _RESPONSE_WAIT_S for the sends,
        which only a goal whose client never asked for its result uses up."""
        tracker = self.service.tracker
        if not tracker.wait_idle(timeout):
            self.get_logger().warning(f"{len(tracker)} request callback(s) still running")
        forgotten = tracker.wait_sent(_RESPONSE_WAIT_S)
        if forgotten:
            self.get_logger().warning(f"{forgotten} response(s) not sent within {_RESPONSE_WAIT_S:g} s "
                                      "(a client that never asked for its result?)")

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_outputs()
        self._release_model()
        self._camera = None
        self.get_logger().info("cleaned up: model released")
        return TransitionCallbackReturn.SUCCESS

    def _release_model(self) -> None:
        self.service.release()
        trim_heap()  # freed model memory goes back to the system (glibc's raised trim threshold, allocator.py)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().info(f"shutting down from '{state.label}'")
        if state.label == "active":
            self.service.stop("node shutting down")
            self._wait_responses(5.0)
            self._destroy_interfaces()
        if state.label in ("active", "inactive"):
            self._destroy_outputs()
            self._release_model()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error during a transition from '{state.label}': releasing everything")
        self._destroy_interfaces()
        self.service.abort("node error")
        self._destroy_outputs()
        trim_heap()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        state = self._lifecycle_state()
        if state in ("active", "inactive"):
            if self.context.ok():
                self.trigger_shutdown()
            else:  # the context is gone: no transition is possible, release directly
                self.on_shutdown(LifecycleState(state_id=0, label=state))
        super().destroy_node()

    def note_executor_error(self, exc: BaseException) -> None:
        """The executor loop (ros.agent.spin_until_shutdown) caught ``exc`` and logged it: counted,
        so the requests status in /diagnostics warns (the model itself is fine)."""
        self.service.stats.incr("executor.errors")

    # ============================================================================ inputs

    def _on_image(self, msg: Image) -> None:
        self.service.push_frame(lambda cfg: convert.frame_from_image(
            msg, cfg.image_limits, use_cv_bridge=cfg.image_use_cv_bridge))

    def _on_compressed_image(self, msg: CompressedImage) -> None:
        self.service.push_frame(lambda cfg: convert.frame_from_compressed(
            msg, cfg.image_limits, self._reduction_for(cfg)))

    def _reduction_for(self, config: AgentConfig) -> Optional[Callable[[int, int], int]]:
        """JPEG decode scale: the largest 1/r at which the model's input is still fully covered."""
        builder = self.service.builder
        if not config.image_reduced_decode or builder is None:
            return None
        return builder.geometry.max_reduction

    def _on_camera_info(self, msg: CameraInfo) -> None:
        stats = self.service.stats
        stats.incr("camera_info.received")
        try:
            self._camera = convert.camera_from_info(msg)
        except ValueError as exc:
            stats.incr("camera_info.rejected")
            self.service.warn("camera_info.rejected", f"camera_info rejected: {exc}")

    def _on_task(self, msg: String) -> None:
        self.service.set_task(msg.data)

    def _on_detections(self, msg: Any) -> None:
        config = self.service.config
        regions: Sequence[convert.DetectionRegion] = ()
        errors: Sequence[str] = ()
        overflow = 0
        if config is not None and msg.detections:
            regions, errors, overflow = convert.detections_to_regions(msg.detections,
                                                                      config.limits_max_regions_per_frame)
        self.service.submit_detections(convert.time_to_ns(msg.header.stamp), msg.header.frame_id, regions,
                                       invalid=errors, overflow=overflow)

    def _on_click(self, msg: PointStamped) -> None:
        def to_pixel(frame: FrameLike) -> tuple[float, float]:
            config = self.service.config
            assert config is not None  # the service asks only while configured
            p = msg.point
            return convert.click_to_pixel((p.x, p.y, p.z), msg.header.frame_id, frame.frame_id, self._camera,
                                          rectified=config.projection_rectified,
                                          transform=self._tf_transform(msg, config.tf_timeout_s))

        self.service.click(convert.time_to_ns(msg.header.stamp), to_pixel)

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

    # ============================================================================ services and the action

    @staticmethod
    def _query(config: AgentConfig, stamp: Any, regions: Sequence[Any], question: str, max_new_tokens: int,
               image: Image, *, what: str = "question", require_question: bool = True) -> Query:
        """A request's fields as a Query (ValueError when one is invalid; the service counts it)."""
        spec = convert.check_request(
            stamp, regions, question, max_new_tokens, max_regions=config.limits_max_regions_per_request,
            max_question_chars=config.limits_max_question_chars,
            max_new_tokens_limit=config.generation_max_new_tokens_limit,
            default_max_new_tokens=config.generation_max_new_tokens, what=what, require_question=require_question)
        frame = None if convert.image_is_empty(image) else convert.frame_from_image(
            image, config.image_limits, use_cv_bridge=config.image_use_cv_bridge)
        return Query(spec.question, spec.regions, spec.stamp_ns, frame, spec.max_new_tokens)

    def _on_ask(self, request: AskRegion.Request, response: AskRegion.Response) -> AskRegion.Response:
        answer = self.service.ask(lambda cfg: self._query(cfg, request.stamp, request.regions, request.question,
                                                          request.max_new_tokens, request.image))
        self._fill(response, answer)
        return response

    def _on_suggest_actions(self, request: SuggestActions.Request,
                            response: SuggestActions.Response) -> SuggestActions.Response:
        regions = [request.region] if len(request.region.points) else []
        answer = self.service.suggest(lambda cfg: self._query(cfg, request.stamp, regions, request.task, 0,
                                                              request.image, what="task"))
        response.success, response.message = answer.success, answer.message
        if answer.instruction is not None and answer.frame is not None:
            response.suggestion = convert.action_suggestion(_header(answer.frame), answer.instruction.regions[0],
                                                            answer.question, answer.text)
        return response

    def _execute_describe(self, goal_handle: Any) -> Describe.Result:
        goal = goal_handle.request
        tokens = [0]

        def on_token(index: int, text: str) -> None:
            tokens[0] += 1
            goal_handle.publish_feedback(Describe.Feedback(partial=text, tokens=tokens[0]))

        answer = self.service.describe(
            lambda cfg: self._query(cfg, goal.stamp, goal.regions, goal.question, goal.max_new_tokens, goal.image,
                                    require_question=False),
            on_token, should_cancel=lambda: goal_handle.is_cancel_requested)
        result = Describe.Result()
        self._fill(result, answer)
        if answer.success:
            goal_handle.succeed()
        elif goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif goal_handle.is_active:
            goal_handle.abort()
        return result

    @staticmethod
    def _fill(out: Any, answer: Answer) -> None:
        """An AskRegion response or a Describe result from the service's answer."""
        out.success, out.message, out.answer = answer.success, answer.message, answer.text
        if answer.instruction is not None and answer.frame is not None:
            out.instruction = answer.instruction.text
            out.header = _header(answer.frame)

    # ============================================================================ outputs

    def _publish(self, key: str, msg: Any) -> None:
        publisher = self._outputs.get(key)
        if publisher is not None:
            publisher.publish(msg)

    def _wants(self, key: str) -> bool:
        publisher = self._outputs.get(key)
        return publisher is not None and publisher.get_subscription_count() > 0

    def _publish_descriptions(self, described: Descriptions) -> None:
        """``inference_time_s`` is the wall time of the model call (image decode, vision encoder,
        prefill, generation)."""
        self._publish("descriptions", convert.region_descriptions(
            _header(described.frame), described.elapsed_s, described.model,
            [(d.label, d.instruction, d.text) for d in described.items]))

    def _publish_suggestion(self, suggestion: Suggestion) -> None:
        self._publish("suggestions", convert.action_suggestion(_header(suggestion.frame), suggestion.region,
                                                               suggestion.task, suggestion.text))

    def _publish_debug(self, annotated: Annotations) -> None:
        """Worker: debug/image and debug/markers, built only while someone subscribes."""
        config, frame = self.service.config, annotated.frame
        if config is None:
            return
        annotations = [Annotation(region, text) for region, text in annotated.items]
        if config.debug_image and self._wants("debug_image"):
            start = time.perf_counter()
            canvas = draw_annotations(frame.rgb(), annotations, max_width=config.debug_max_width,
                                      region_scale=frame.rgb_scale)
            self._publish("debug_image", convert.rgb_to_image(canvas, _header(frame)))
            self.service.stats.observe("drawing", (time.perf_counter() - start) * 1e3)
        camera = self._camera
        if config.debug_markers and camera is not None and self._wants("markers"):
            self._publish("markers", convert.markers_from_annotations(
                _header(frame), camera, annotations, config.debug_marker_depth, frame.width, frame.height))

    # ============================================================================ diagnostics

    def _publish_diagnostics(self) -> None:
        self._diag_pub.publish(self.diagnostics())

    def diagnostics(self) -> DiagnosticArray:
        status = self.service.status()
        server = {f"server.{k}": str(v) for k, v in status.server.items()}  # the vllm backend's live figures
        snapshot = NodeSnapshot(
            name=self.get_fully_qualified_name(), state=self._lifecycle_state(),
            model_info=dict(status.model_info, **server), last_error=status.last_error,
            counters=status.counters, stages=status.stages, tokens_per_s=status.tokens_per_s,
            frames_buffered=status.frames_buffered, frames_capacity=status.frames_capacity,
            newest_stamp_ns=status.newest_stamp_ns, queue_requests=status.queue_requests,
            queue_detections=status.queue_detections, worker_busy=status.worker_busy, task=status.task,
            awaiting_frame=status.awaiting_frame)
        array = DiagnosticArray(status=build_statuses(snapshot))
        array.header.stamp = self.get_clock().now().to_msg()
        return array
