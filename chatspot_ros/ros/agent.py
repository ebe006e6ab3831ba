"""Entry point of the ``chatspot_agent`` node (``chatspot_ros.agent`` is a shim to it).

    python -m chatspot_ros.agent --ros-args --params-file config/agent.yaml -p model.path:=/models/x
    python -m chatspot_ros.agent --help            (the parameters: names, defaults, descriptions)
    chatspot-agent --ros-args ...                  (console script)
    ros2 run chatspot_ros chatspot_agent ...       (in a ROS workspace)

With ``autostart`` (the default) the node configures and activates itself; otherwise drive it
with lifecycle transitions (``ros2 lifecycle set /chatspot_agent configure``).
"""
from __future__ import annotations

import faulthandler
import signal
import sys
import textwrap
import traceback
from types import FrameType
from typing import Any, Callable, Optional, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn

try:  # rclpy >= Humble; older ones install their own SIGINT handler (the context may then be gone)
    from rclpy.signals import SignalHandlerOptions
except ImportError:  # pragma: no cover - depends on the install
    SignalHandlerOptions = None  # type: ignore[assignment,misc]

from chatspot_ros.cli.threads import prepare_environment
from chatspot_ros.ros.allocator import tune_allocator
from chatspot_ros.ros.node import NODE_NAME, ChatSpotAgentNode
from chatspot_ros.service.config import PARAMETERS, ParamSpec


def executor_threads(max_pending_requests: int) -> int:
    """Service and action callbacks block while they wait for the model: one thread for each
    queued request and the running one, plus one each for the sensor, click and diagnostics
    callback groups and the default group (lifecycle and parameter services, tf)."""
    return max(5, min(64, int(max_pending_requests) + 5))


def spin_until_shutdown(executor: Any, context: Any, logger: Any, *, timeout_sec: float = 0.5,
                        on_error: Optional[Callable[[BaseException], None]] = None) -> int:
    """Spin ``executor`` until ``context`` shuts down; returns the number of rounds that raised.

    One exception must not end the node: a callback that raised (the multi-threaded executor
    re-raises it from a later ``spin_once``) or the executor's own race on an entity destroyed
    while it builds a wait set (``InvalidHandle``, ros2/rclpy#1206, #1284) is logged with its
    traceback, counted (once) through ``on_error``, and the loop goes on. ``spin_once`` with a timeout
    rather than ``spin()``: Python runs the SIGINT handler only when the main thread gets back
    to bytecode, so the loop wakes up every ``timeout_sec``.
    """
    errors = 0
    last: Optional[BaseException] = None
    while context.ok():
        try:
            executor.spin_once(timeout_sec=timeout_sec)
        except (KeyboardInterrupt, ExternalShutdownException):
            raise
        except Exception as exc:  # noqa: BLE001 - logged, counted, and the node keeps serving
            if exc is last:  # rclpy re-raises a callback's exception from more than one round
                continue
            last = exc
            errors += 1
            if on_error is not None:
                on_error(exc)
            if errors <= 10 or errors % 100 == 0:  # a storm of the same error must not flood the log
                logger.error(f"executor: {type(exc).__name__}: {exc} (error {errors} of this process; "
                             f"the node keeps serving)\n{traceback.format_exc()}")
    return errors


def _parameter_help(spec: ParamSpec) -> str:
    notes = [f"default: {spec.default!r}"]
    if spec.choices:
        notes.append("one of " + ", ".join(spec.choices))
    if spec.minimum is not None or spec.maximum is not None:
        notes.append(f"range [{'' if spec.minimum is None else f'{spec.minimum:g}'}, "
                     f"{'' if spec.maximum is None else f'{spec.maximum:g}'}]")
    if spec.applies:
        notes.append(spec.applies)
    body = textwrap.fill(f"{spec.description} ({'; '.join(notes)})", width=96, initial_indent="      ",
                         subsequent_indent="      ")
    return f"  {spec.name}\n{body}"


def usage() -> str:
    """``--help``: how to start the node and every parameter (the one table, service/config.py)."""
    lines = [
        "usage: python -m chatspot_ros.agent [--help] [--ros-args -p NAME:=VALUE ... --params-file FILE]",
        "",
        f"The {NODE_NAME} lifecycle node: region descriptions, answers and action suggestions from a",
        "multimodal LLM (docs/node.md). Set parameters with ROS arguments, e.g.",
        "  python -m chatspot_ros.agent --ros-args --params-file config/agent.yaml -p model.path:=/models/x",
        "",
        "parameters:",
    ]
    return "\n".join(lines + [_parameter_help(spec) for spec in PARAMETERS]) + "\n"


def wants_help(args: Sequence[str]) -> bool:
    """-h / --help before any --ros-args (after it, arguments belong to ROS)."""
    for arg in args[1:]:
        if arg == "--ros-args":
            return False
        if arg in ("-h", "--help"):
            return True
    return False


def _raise_keyboard_interrupt(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv if argv is None else argv)
    if wants_help(args):
        sys.stdout.write(usage())
        return 0
    # Before torch is imported (on configure): OpenMP threads sleep while they wait, so a busy
    # machine slows the node in proportion (on the shared 2-core machine the spinning default
    # answered about 10x slower than with PASSIVE: docs/replay.md's throughput comparison).
    prepare_environment()
    tune_allocator()  # decoded frames reuse heap memory instead of page-faulting (ros/allocator.py)
    # `kill -USR1 <pid>` prints every thread's Python stack to stderr: where a stuck node waits.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Handle SIGINT/SIGTERM ourselves (KeyboardInterrupt) so that the context is still valid
    # when the node shuts down through its lifecycle and frees the model.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    # A process started in the background by a non-interactive shell inherits SIGINT ignored, and
    # Python then keeps it ignored: install the handler explicitly so SIGINT always stops the node.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if SignalHandlerOptions is not None:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    else:  # pragma: no cover
        rclpy.init(args=args)
    node: Optional[ChatSpotAgentNode] = None
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
        spin_until_shutdown(executor, node.context, node.get_logger(), on_error=node.note_executor_error)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    # A failed autostart is not an exit: the node stays up for lifecycle transitions (see above).
    return 0


if __name__ == "__main__":
    sys.exit(main())
