"""Fixtures for the node tests: one agent process per test module, one rclpy Context per test.

A module sets ``AGENT_PARAMS = {...}`` to start its agent with extra ``-p name:=value`` and
``AGENT_WAIT_FOR = None`` when the agent is not expected to become active by itself.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ros_harness import AgentProcess, RosClient  # noqa: E402
from chatspot_ros.srv import AskRegion  # noqa: E402

# On a loaded machine (a training run beside the tests) set CHATSPOT_TEST_TIMEOUT_SCALE > 1: it
# stretches the agent's start-up and stop timeouts (ros_harness.TIMEOUT_SCALE).
STARTUP_TIMEOUT_S = 90.0 * float(os.environ.get("CHATSPOT_TEST_TIMEOUT_SCALE", "1"))


@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest, tiny_model_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    module = request.module.__name__.rsplit(".", 1)[-1]
    namespace = "/" + module
    params = dict(getattr(request.module, "AGENT_PARAMS", {}))
    log_path = tmp_path_factory.mktemp("agent") / f"{module}.log"
    proc = AgentProcess(tiny_model_dir, log_path, namespace, params)
    try:
        if getattr(request.module, "AGENT_WAIT_FOR", "ask") == "ask":
            with RosClient(namespace) as client:
                client_ask = client.node.create_client(AskRegion, "ask")
                ready = client.spin_until(lambda: client_ask.service_is_ready() or not proc.alive(),
                                          STARTUP_TIMEOUT_S)
                assert ready and proc.alive(), f"agent did not come up:\n{proc.log()}"
        yield proc
    finally:
        code = proc.stop()
        if request.session.testsfailed:
            sys.stderr.write(f"\n---- agent log ({log_path}) ----\n{log_path.read_text(errors='replace')}\n")
        assert code == 0, f"agent exited with {code}; log: {log_path}"


@pytest.fixture()
def client(agent: AgentProcess) -> Iterator[RosClient]:
    with RosClient(agent.namespace) as c:
        yield c
