"""Publishing recorded (or generated) messages into DDS for a live node; the only rclpy user of
chatspot_ros.replay, imported lazily. Messages are published as their CDR bytes (rclpy publishes
serialized data as is), so the header stamps are the recorded ones.

Every process started here keeps DDS on this machine unless told otherwise:
``ROS_AUTOMATIC_DISCOVERY_RANGE`` defaults to LOCALHOST.
"""
from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from chatspot_ros.cli.errors import UsageError


class DdsPublisher:
    """One rclpy context and node with a reliable publisher per (topic, type), publishing CDR bytes."""

    def __init__(self, name: str = "chatspot_player") -> None:
        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        try:
            import rclpy
            from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        except ImportError as err:
            raise UsageError(f"publishing needs rclpy (a ROS 2 install or the ros-rclpy wheels): {err}") from None
        self._rclpy = rclpy
        self._qos = QoSProfile(depth=50, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node(f"{name}_{os.getpid()}", context=self.context)
        self._publishers: dict[tuple[str, str], Any] = {}
        self.published = 0

    def publisher(self, topic: str, msgtype: str) -> Any:
        key = (topic, msgtype)
        if key not in self._publishers:
            package, _, name = msgtype.split("/")
            try:
                cls = getattr(importlib.import_module(f"{package}.msg"), name)
            except (ImportError, AttributeError) as err:
                raise UsageError(f"cannot publish {msgtype} on {topic}: its Python message package is not "
                                 f"installed ({err})") from None
            self._publishers[key] = self.node.create_publisher(cls, topic, self._qos)
        return self._publishers[key]

    def wait_for_subscribers(self, keys: Iterable[tuple[str, str]], timeout_s: float) -> list[str]:
        """Wait until each (topic, type) has a subscriber; returns the topics that still have none.
        Then half a second more, for the subscribers to discover this publisher in turn."""
        pubs = [(t, self.publisher(t, m)) for t, m in keys]
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and any(p.get_subscription_count() == 0 for _, p in pubs):
            time.sleep(0.05)
        time.sleep(0.5)
        return [t for t, p in pubs if p.get_subscription_count() == 0]

    def publish(self, topic: str, msgtype: str, cdr: bytes) -> None:
        self.publisher(topic, msgtype).publish(bytes(cdr))
        self.published += 1

    def close(self, ack_timeout_s: float = 30.0) -> list[str]:
        """Wait until the subscribers acknowledged every message (a reliable writer destroyed
        earlier loses what it has not delivered yet), then leave; returns the topics not acknowledged."""
        from rclpy.duration import Duration

        end = time.monotonic() + ack_timeout_s
        unacked = [topic for (topic, _), pub in self._publishers.items()
                   if not pub.wait_for_all_acked(Duration(seconds=max(0.0, end - time.monotonic())))]
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)
        return unacked


def play(args: Any) -> int:
    """``chatspot-replay BAG --play``: the recording's inputs onto the node's topics at the recorded pace."""
    from chatspot_ros.cli.replay import PROG, _window, build_parser, load_config
    from chatspot_ros.replay import recording as rec

    if not args.rate > 0:
        raise UsageError("--rate must be > 0")
    if args.loop < 1:
        raise UsageError("--loop must be >= 1")
    config = load_config(args, build_parser())
    topics = rec.parse_topic_mapping(args.topics, rec.default_topics(config, args.namespace), args.namespace)
    target_ns = args.namespace if args.target_namespace is None else args.target_namespace
    node_topics = rec.default_topics(config, target_ns)
    reader = rec.open_reader(args.bag)
    try:
        selected = rec.select_inputs(reader, topics, prefer_compressed=config.image_transport == "compressed")
        start_ns, stop_ns = _window(reader, args)
        targets = {key: node_topics[key] for key in selected.topics}  # recorded topic -> the node's topic
        types = {key: conns[0].msgtype for key, conns in selected.connections.items()}
        to_cdr = rec.CdrConverter(reader)
        dds = DdsPublisher()
        read = rec.ReadStats({}, {})
        try:
            waiting = [k for k in ("image", "image_compressed", "detections", "clicked_point") if k in targets]
            missing = dds.wait_for_subscribers([(targets[k], types[k]) for k in waiting], args.wait_subscribers)
            if missing:
                print(f"{PROG}: warning: no subscriber on {', '.join(missing)} after {args.wait_subscribers:g} s; "
                      "publishing anyway", file=sys.stderr)
            for _ in range(args.loop):
                first, wall0 = None, time.monotonic()
                for key, conn, time_ns, raw, _msg in rec.iter_messages(reader, selected, read, start_ns=start_ns,
                                                                         stop_ns=stop_ns):
                    first = time_ns if first is None else first
                    delay = wall0 + (time_ns - first) / 1e9 / args.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    dds.publish(targets[key], conn.msgtype, to_cdr(conn.msgtype, raw))
        finally:
            dds.close()
    finally:
        reader.close()
    print(f"published {dds.published} messages ({', '.join(f'{n} {k}' for k, n in read.messages.items())}) "
          f"onto {', '.join(sorted(set(targets.values())))}", flush=True)
    if read.read_error:
        print(f"{PROG}: warning: the recording is damaged, stopped reading: {read.read_error}", file=sys.stderr)
        return 1
    return 0
