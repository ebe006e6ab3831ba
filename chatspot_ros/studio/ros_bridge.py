"""The studio's own ROS 2 node: the agent's public interfaces, bridged to the server's event loop.

The node spins a single-threaded executor on a background thread. Its callbacks only hand
messages over (a frame into the server's latest-frame slot, an overlay or a diagnostics summary
through ``loop.call_soon_threadsafe``) and return: the ROS side never waits on a browser, and the
event loop never waits on ROS (service and action futures are bridged into asyncio futures).

A question is a ``describe`` goal (partial text as feedback, cancellable); task steps are a
``suggest_actions`` call. Both name the frozen frame by its stamp while fewer than
``stamp_max_frames`` camera frames have come after it (the agent keeps the last
``frames.buffer_size``, 30 by default); after that its pixels go in the request's ``image`` field,
so the answer is always about the frame drawn on.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Optional

import rclpy
from action_msgs.msg import GoalStatus
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.action import ActionClient
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from chatspot_ros.action import Describe
from chatspot_ros.msg import Region as RegionMsg
from chatspot_ros.msg import RegionDescriptionArray
from chatspot_ros.ros import convert
from chatspot_ros.service import imaging
from chatspot_ros.srv import AskRegion, SuggestActions
from chatspot_ros.studio.backend import Answer, Backend, FrameSink, PartialCallback
from chatspot_ros.studio.hub import Counters, HeldFrame, SourceFrame
from chatspot_ros.studio.protocol import AskMessage, SuggestMessage, region_to_json

try:  # a wire-compatible copy is built here when the real one is missing (compat/vision_msgs)
    from vision_msgs.msg import Detection2DArray
except ImportError:  # pragma: no cover - without vision_msgs there is no detections overlay
    Detection2DArray = None

REFER_MODES = ("auto", "stamp", "pixels")
# /diagnostics keys the page shows, by status (docs/node.md, "Diagnostics")
STATUS_KEYS = {
    "model": ("state", "model", "backend", "device", "dtype", "last_error"),
    "requests": ("queue.requests", "worker.busy", "requests.served", "requests.failed", "requests.cancelled"),
    "latency": ("total.mean_ms", "tokens_per_s"),
    "inputs": ("images.received", "frames.buffered"),
}


class RosBackend(Backend):
    mode = "ros"

    def __init__(self, counters: Counters, *, ros_args: list[str], agent: str = "chatspot_agent",
                 transport: str = "raw", refer: str = "auto", stamp_max_frames: int = 10,
                 answer_timeout_s: float = 120.0) -> None:
        if transport not in ("raw", "compressed"):
            raise ValueError(f"transport must be raw or compressed, got {transport!r}")
        if refer not in REFER_MODES:
            raise ValueError(f"refer must be one of {', '.join(REFER_MODES)}, got {refer!r}")
        self.counters = counters
        self.transport, self.refer = transport, refer
        self.stamp_max_frames, self.answer_timeout_s = stamp_max_frames, answer_timeout_s
        self._received = 0  # camera frames taken (the executor thread writes, others read)
        self.context = rclpy.Context()
        rclpy.init(args=["chatspot_studio", "--ros-args", *ros_args] if ros_args else None, context=self.context)
        self.node = rclpy.create_node("chatspot_studio", context=self.context)
        ns = self.node.get_namespace().rstrip("/")
        self.agent_name = agent if agent.startswith("/") else f"{ns}/{agent}"
        self._sink: Optional[FrameSink] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._status: dict[str, str] = {"state": f"waiting for /diagnostics of {self.agent_name}"}
        self._status_time = 0.0
        self._lock = threading.Lock()
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name="studio-ros", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, sink: FrameSink, loop: asyncio.AbstractEventLoop) -> None:
        self._sink, self._loop = sink, loop
        node = self.node
        sensor = QoSProfile(depth=2, reliability=ReliabilityPolicy.BEST_EFFORT)
        sensor.history = qos_profile_sensor_data.history
        if self.transport == "raw":
            node.create_subscription(Image, "image", self._on_image, sensor)
        else:
            node.create_subscription(CompressedImage, "image/compressed", self._on_compressed, sensor)
        if Detection2DArray is not None:
            node.create_subscription(Detection2DArray, "detections", self._on_detections, 5)
        node.create_subscription(RegionDescriptionArray, "region_descriptions", self._on_descriptions, 5)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self._describe = ActionClient(node, Describe, "describe")
        self._suggest = node.create_client(SuggestActions, "suggest_actions")
        self._ask = node.create_client(AskRegion, "ask")
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except (ExternalShutdownException, KeyboardInterrupt):
            pass

    def close(self) -> None:
        self.executor.shutdown()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    # -- callbacks (executor thread: hand over and return) --------------------------------------

    def _on_image(self, msg: Image) -> None:
        try:
            imaging.check_raw(msg.encoding, msg.width, msg.height, msg.step, len(msg.data), bool(msg.is_bigendian))
        except imaging.ImageDecodeError as err:
            self._reject_image(err)
            return
        self._offer(msg, msg.width, msg.height)

    def _on_compressed(self, msg: CompressedImage) -> None:
        try:
            _, width, height = imaging.inspect_compressed(msg.data, msg.format)
        except imaging.ImageDecodeError as err:
            self._reject_image(err)
            return
        self._offer(msg, width, height)

    def _reject_image(self, err: Exception) -> None:
        self.counters.add("frames.rejected")
        if self.counters.get("frames.rejected") <= 10:
            self.node.get_logger().warning(f"camera frame refused: {err}")

    def _offer(self, msg: Any, width: int, height: int) -> None:
        self.counters.add("frames.received")
        self._received += 1
        if self._sink is not None:
            stamp = msg.header.stamp
            self._sink.offer_frame(SourceFrame(stamp.sec, stamp.nanosec, msg.header.frame_id, int(width),
                                               int(height), msg, seq=self._received))

    def _on_detections(self, msg: Any) -> None:
        regions, _errors, _overflow = convert.detections_to_regions(msg.detections, 64)
        self._overlay(msg.header.stamp, "detections", [
            dict(region_to_json(r.region), id=r.region.id, label=r.label, text="") for r in regions])

    def _on_descriptions(self, msg: RegionDescriptionArray) -> None:
        items = []
        for d in msg.descriptions:
            try:
                region = convert.region_from_msg(d.region)
            except ValueError:
                continue
            items.append(dict(region_to_json(region), id=d.region.id, label=d.label, text=d.text))
        self._overlay(msg.header.stamp, "region_descriptions", items)

    def _overlay(self, stamp: Time, source: str, regions: list[dict[str, Any]]) -> None:
        if self._sink is not None:
            self._sink.offer_overlay({"source": source, "stamp": {"sec": stamp.sec, "nanosec": stamp.nanosec},
                                      "regions": regions})

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        mine = {}
        for status in msg.status:
            name, _, part = status.name.partition(":")
            if name.strip() != self.agent_name:
                continue
            part = part.strip()
            values = {kv.key: kv.value for kv in status.values}
            for key in STATUS_KEYS.get(part, ()):
                if key in values:
                    mine[key] = values[key]
            if part == "latency":
                mine["latency"] = status.message
        if mine:
            with self._lock:
                self._status, self._status_time = mine, time.monotonic()

    # -- frames ---------------------------------------------------------------------------------

    def to_jpeg(self, frame: SourceFrame, quality: int) -> bytes:
        msg = frame.payload
        if isinstance(msg, CompressedImage):
            codec, _, _ = imaging.inspect_compressed(msg.data, msg.format)
            if codec == "jpeg":
                return bytes(msg.data)  # already what the page shows
            rgb = imaging.decode_compressed(msg.data, msg.format)
        else:
            rgb = imaging.decode_raw(msg.encoding, msg.width, msg.height, msg.step, msg.data, bool(msg.is_bigendian))
        return imaging.encode_compressed(rgb, "jpeg", quality)

    def _frame_fields(self, frame: HeldFrame) -> tuple[Time, Image, str]:
        """The request's stamp and image: the stamp alone while the agent still holds the frame."""
        source = frame.source
        stamp = Time(sec=source.stamp_sec, nanosec=source.stamp_nanosec)
        old = self._received - source.seq > self.stamp_max_frames
        if self.refer == "stamp" or (self.refer == "auto" and not old):
            return stamp, Image(), "stamp"
        msg = source.payload
        if isinstance(msg, CompressedImage):
            msg = convert.rgb_to_image(imaging.decode_compressed(msg.data, msg.format), msg.header)
        return stamp, msg, "pixels"

    # -- questions ------------------------------------------------------------------------------

    async def ask(self, frame: HeldFrame, msg: AskMessage, on_partial: PartialCallback,
                  cancel: asyncio.Event) -> Answer:
        if not self._describe.server_is_ready():
            if self._ask.service_is_ready():  # an agent without the action: the whole answer at once
                return await self._ask_once(frame, msg, cancel)
            return Answer(ok=False, message=f"the agent's describe action is not available "
                                            f"({self.node.resolve_topic_name('describe')}): is the agent active?")
        loop = asyncio.get_running_loop()
        goal = Describe.Goal()
        goal.stamp, goal.image, referred_by = await loop.run_in_executor(None, self._frame_fields, frame)
        goal.regions = [convert.region_to_msg(msg.region)] if msg.region is not None else []
        goal.question, goal.max_new_tokens = msg.question, msg.max_new_tokens

        def feedback(fb: Any) -> None:  # executor thread
            loop.call_soon_threadsafe(on_partial, fb.feedback.partial, int(fb.feedback.tokens))

        goal_future = self._describe.send_goal_async(goal, feedback_callback=feedback)
        try:
            handle = await asyncio.wait_for(self._bridge(goal_future), 10.0)
        except asyncio.TimeoutError:
            # Nobody will read a goal accepted after this: cancel it then, so the agent does not
            # spend a whole answer on it.
            goal_future.add_done_callback(_cancel_if_accepted)
            return Answer(ok=False, message="the agent did not take the describe goal within 10 s",
                          referred_by=referred_by)
        if not handle.accepted:
            return Answer(ok=False, message="the agent rejected the describe goal", referred_by=referred_by)
        result_future = self._bridge(handle.get_result_async())
        cancelled = asyncio.ensure_future(cancel.wait())
        try:
            done, _ = await asyncio.wait({result_future, cancelled}, timeout=self.answer_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not result_future.done():
                try:  # an agent that died answers neither the cancel nor the result: never wait unbounded
                    await asyncio.wait_for(self._bridge(handle.cancel_goal_async()), 10.0)
                    await asyncio.wait_for(asyncio.shield(result_future), 10.0)
                except asyncio.TimeoutError:
                    return Answer(ok=False, cancelled=cancel.is_set(), message="the agent did not end the goal")
                if not done:
                    return Answer(ok=False, message=f"no answer within {self.answer_timeout_s:g} s (cancelled)",
                                  referred_by=referred_by)
        finally:
            cancelled.cancel()
        response = result_future.result()
        result = response.result
        stamp = {"sec": result.header.stamp.sec, "nanosec": result.header.stamp.nanosec}
        if response.status == GoalStatus.STATUS_CANCELED:
            return Answer(ok=False, cancelled=True, text=result.answer, message="cancelled",
                          instruction=result.instruction, stamp=stamp, referred_by=referred_by)
        return Answer(ok=bool(result.success), text=result.answer, message=result.message,
                      instruction=result.instruction, stamp=stamp, referred_by=referred_by)

    async def _ask_once(self, frame: HeldFrame, msg: AskMessage, cancel: asyncio.Event) -> Answer:
        """The ``ask`` service: no partial text, and cancel only stops waiting (a service runs to its end)."""
        if not msg.question:
            return Answer(ok=False, message="this agent offers no describe action, and its ask service needs a "
                                            "question: type one (or pick a preset other than Describe)")
        request = AskRegion.Request()
        request.stamp, request.image, referred_by = await asyncio.get_running_loop().run_in_executor(
            None, self._frame_fields, frame)
        request.regions = [convert.region_to_msg(msg.region)] if msg.region is not None else []
        request.question = msg.question
        request.max_new_tokens = msg.max_new_tokens
        response = await self._call(self._ask, request, cancel)
        if isinstance(response, Answer):
            return Answer(ok=False, cancelled=response.cancelled, message=response.message, referred_by=referred_by)
        return Answer(ok=bool(response.success), text=response.answer, message=response.message,
                      instruction=response.instruction, referred_by=referred_by,
                      stamp={"sec": response.header.stamp.sec, "nanosec": response.header.stamp.nanosec})

    async def _call(self, client: Any, request: Any, cancel: asyncio.Event) -> Any:
        """A service response, or an Answer saying it was cancelled or timed out (the late response is dropped)."""
        future = self._bridge(client.call_async(request))
        cancelled = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait({future, cancelled}, timeout=self.answer_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
        if future.done():
            return future.result()
        future.cancel()
        return Answer(ok=False, cancelled=cancel.is_set(),
                      message="cancelled" if cancel.is_set() else f"no answer within {self.answer_timeout_s:g} s")

    async def suggest(self, frame: HeldFrame, msg: SuggestMessage, cancel: asyncio.Event) -> Answer:
        if not self._suggest.service_is_ready():
            return Answer(ok=False,
                          message="the agent's suggest_actions service is not available: is the agent active?")
        request = SuggestActions.Request()
        request.stamp, request.image, referred_by = await asyncio.get_running_loop().run_in_executor(
            None, self._frame_fields, frame)  # may decode a compressed frame: off the event loop
        request.region = convert.region_to_msg(msg.region) if msg.region is not None else RegionMsg(type=RegionMsg.BOX)
        request.task = msg.task
        response = await self._call(self._suggest, request, cancel)
        if isinstance(response, Answer):
            return Answer(ok=False, cancelled=response.cancelled, message=response.message, referred_by=referred_by)
        s = response.suggestion
        return Answer(ok=bool(response.success), text=s.text, message=response.message, steps=list(s.steps),
                      stamp={"sec": s.header.stamp.sec, "nanosec": s.header.stamp.nanosec}, referred_by=referred_by)

    def _bridge(self, future: Any) -> asyncio.Future:
        """An asyncio future on the server's loop, done when the rclpy future is (from any thread)."""
        loop = asyncio.get_running_loop()
        out: asyncio.Future = loop.create_future()

        def settle(f: Any) -> None:
            if out.done():
                return
            exc = f.exception()
            if exc is not None:
                out.set_exception(exc)
            else:
                out.set_result(f.result())

        future.add_done_callback(lambda f: loop.call_soon_threadsafe(settle, f))
        return out

    # -- state ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            status, age = dict(self._status), time.monotonic() - self._status_time
        if self._status_time and age > 5.0:
            status["state"] = f"no /diagnostics for {age:.0f} s (last: {status.get('state', '?')})"
        status["agent"] = self.agent_name
        status["describe"] = ("ready" if self._describe.server_is_ready()
                              else "not available (ask service)" if self._ask.service_is_ready() else "not available")
        return status


def _cancel_if_accepted(goal_future: Any) -> None:
    """Done-callback of a describe goal given up on: cancel it if the agent accepted it late."""
    if goal_future.exception() is None:
        handle = goal_future.result()
        if handle is not None and handle.accepted:
            handle.cancel_goal_async()
