"""Entry point of the ``chatspot_agent`` node.

    python -m chatspot_ros.agent --ros-args --params-file config/agent.yaml -p model.path:=/models/x
    chatspot-agent --ros-args ...                  (console script)
    ros2 run chatspot_ros chatspot_agent ...       (in a ROS workspace)

With ``autostart`` (the default) the node configures and activates itself; otherwise drive it
with lifecycle transitions (``ros2 lifecycle set /chatspot_agent configure``).
"""
from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Optional, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions

from chatspot_ros.ros.allocator import tune_allocator
from chatspot_ros.ros.node import ChatSpotAgentNode


def executor_threads(max_pending_requests: int) -> int:
    """Service and action callbacks block while they wait for the model: one thread each, plus
    threads for the sensor group, diagnostics and lifecycle services."""
    return max(4, min(64, int(max_pending_requests) + 4))


def _raise_keyboard_interrupt(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv if argv is None else argv)
    tune_allocator()  # decoded frames reuse heap memory instead of page-faulting (ros/allocator.py)
    # Handle SIGINT/SIGTERM ourselves (KeyboardInterrupt) so that the context is still valid
    # when the node shuts down through its lifecycle and frees the model.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except TypeError:  # pragma: no cover - an rclpy without signal_handler_options
        rclpy.init(args=args)
    node: Optional[ChatSpotAgentNode] = None
    status = 0
    try:
        node = ChatSpotAgentNode()
        threads = executor_threads(node.get_parameter("queues.max_pending_requests").value)
        executor = MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error(
                    "autostart: configure failed (see above); the node stays unconfigured and "
                    "accepts lifecycle transitions")
            elif node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error("autostart: activate failed (see above)")
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
