"""The agent's executor loop (agent.spin_until_shutdown): one raising round does not end the node.

Real rclpy, one process: a multi-threaded executor re-raises a callback's exception from a later
``spin_once``, which is how an error escaped ``spin()`` and killed the node before. Entities are
also destroyed from another thread while the loop spins (the teardown path of ``cleanup``).
"""
from __future__ import annotations

import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from chatspot_ros.agent import spin_until_shutdown  # noqa: E402


class _Logger:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, message: str) -> None:
        self.errors.append(message)


@pytest.fixture()
def context():
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        rclpy.try_shutdown(context=ctx)


def test_a_raising_callback_is_logged_counted_and_the_loop_goes_on(context) -> None:
    node = rclpy.create_node("spin_loop_test", context=context)
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(node)
    calls: list[int] = []
    seen: list[BaseException] = []

    def tick() -> None:
        calls.append(1)
        if len(calls) in (2, 4):
            raise RuntimeError(f"boom {len(calls)}")
        if len(calls) >= 8:
            context.try_shutdown()

    node.create_timer(0.01, tick)
    logger = _Logger()
    start = time.monotonic()
    errors = spin_until_shutdown(executor, context, logger, timeout_sec=0.05, on_error=seen.append)
    executor.shutdown()
    assert time.monotonic() - start < 30
    assert len(calls) >= 8  # the timer kept firing after both errors
    assert errors == 2 and [str(e) for e in seen] == ["boom 2", "boom 4"]
    assert len(logger.errors) == 2 and "RuntimeError: boom 2" in logger.errors[0]
    assert "keeps serving" in logger.errors[0] and "Traceback" in logger.errors[0]


def test_entities_destroyed_from_another_thread_while_the_loop_spins(context) -> None:
    node = rclpy.create_node("spin_loop_teardown", context=context)
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(node)
    node.create_timer(0.001, lambda: None)  # keeps the executor rebuilding its wait set
    logger = _Logger()
    result: dict[str, int] = {}
    loop = threading.Thread(target=lambda: result.update(errors=spin_until_shutdown(
        executor, context, logger, timeout_sec=0.05)))
    loop.start()
    try:
        for i in range(100):
            subs = [node.create_subscription(String, f"spin_loop_{i}_{k}", lambda _msg: None, 1) for k in range(4)]
            time.sleep(0.001)
            for sub in subs:
                node.destroy_subscription(sub)
        assert loop.is_alive()  # whatever the race did, the loop is still serving
    finally:
        context.try_shutdown()
        loop.join(timeout=10)
        executor.shutdown()
    assert not loop.is_alive() and "errors" in result
    assert result["errors"] == len(logger.errors)  # every error it met was logged (0 on most runs)
