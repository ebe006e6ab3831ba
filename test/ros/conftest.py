"""Fixtures for the node tests: one agent process and one client (its own rclpy Context) per test module.

A client per module, not per test: each new DDS participant costs a discovery round with the agent
(about a second on 2 cores), and the tests do not depend on each other's clients. The next module's
agent starts while the current module runs, and agents stop in the background (``_AgentPool``).

A module sets ``AGENT_PARAMS = {...}`` to start its agent with extra ``-p name:=value`` and
``AGENT_WAIT_FOR = None`` when the agent is not expected to become active by itself.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ros_harness import AgentProcess, RosClient  # noqa: E402
from chatspot_ros.srv import AskRegion  # noqa: E402

# On a loaded machine (a training run beside the tests) set CHATSPOT_TEST_TIMEOUT_SCALE > 1: it
# stretches the agent's start-up and stop timeouts (ros_harness.TIMEOUT_SCALE).
STARTUP_TIMEOUT_S = 90.0 * float(os.environ.get("CHATSPOT_TEST_TIMEOUT_SCALE", "1"))


def _modules_in_order(items: list[pytest.Item]) -> tuple[list[ModuleType], set[ModuleType]]:
    """Every module of the session in run order, and those whose tests use the agent."""
    order: list[ModuleType] = []
    with_agent: set[ModuleType] = set()
    for item in items:
        module = getattr(item, "module", None)
        if module is None:
            continue
        if module not in order:
            order.append(module)
        if "agent" in getattr(item, "fixturenames", ()):
            with_agent.add(module)
    return order, with_agent


def _start_agent(module: ModuleType, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AgentProcess:
    name = module.__name__.rsplit(".", 1)[-1]
    log_path = tmp_path_factory.mktemp("agent") / f"{name}.log"
    return AgentProcess(model_dir, log_path, "/" + name, dict(getattr(module, "AGENT_PARAMS", {})))


class _AgentPool:
    """Agents started ahead of their module, and agents told to stop whose exit is checked at the end.

    Both take an agent's start-up and shut-down (seconds each, mostly in its own process) off the
    suite's critical path; every agent still serves one module only.
    """

    def __init__(self) -> None:
        self.prestarted: dict[str, AgentProcess] = {}
        self.stopping: list[AgentProcess] = []

    def close(self) -> list[str]:
        for proc in self.prestarted.values():  # modules the session did not reach (-x, a failure)
            proc.request_stop()
            self.stopping.append(proc)
        failures = []
        for proc in self.stopping:
            code = proc.stop()
            if code != 0:
                failures.append(f"agent {proc.namespace} exited with {code}; log: {proc.log_path}")
        return failures


@pytest.fixture(scope="session")
def _agent_pool() -> Iterator[_AgentPool]:
    pool = _AgentPool()
    yield pool
    failures = pool.close()
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="module", autouse=True)
def _prestart_next_agent(request: pytest.FixtureRequest, tiny_model_dir: Path,
                         tmp_path_factory: pytest.TempPathFactory,
                         _agent_pool: _AgentPool) -> None:
    """Start the next module's agent while this module's tests run.

    An agent's start-up (importing torch and transformers, loading the model: about 7 s on 2 cores)
    is almost all CPU in its own process, while the tests mostly wait on DDS; overlapping the two
    takes the start-ups off the suite's critical path. Each agent still serves one module only, in
    that module's namespace, with that module's parameters.
    """
    order, with_agent = _modules_in_order(request.session.items)
    if request.module not in order:
        return
    later = [m for m in order[order.index(request.module) + 1:] if m in with_agent]
    if later and later[0].__name__ not in _agent_pool.prestarted:
        _agent_pool.prestarted[later[0].__name__] = _start_agent(later[0], tiny_model_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory,
          _agent_pool: _AgentPool) -> Iterator[AgentProcess]:
    module = request.module
    proc = _agent_pool.prestarted.pop(module.__name__, None) or _start_agent(module, tiny_model_dir, tmp_path_factory)
    try:
        if getattr(module, "AGENT_WAIT_FOR", "ask") == "ask":
            with RosClient(proc.namespace) as client:
                client_ask = client.node.create_client(AskRegion, "ask")
                ready = client.spin_until(lambda: client_ask.service_is_ready() or not proc.alive(),
                                          STARTUP_TIMEOUT_S)
                assert ready and proc.alive(), f"agent did not come up:\n{proc.log()}"
        yield proc
        assert proc.alive(), f"agent {proc.namespace} died during its module; log: {proc.log_path}"
    finally:
        proc.request_stop()  # its exit code is checked when the session ends (_AgentPool.close)
        _agent_pool.stopping.append(proc)
        if request.session.testsfailed:
            sys.stderr.write(f"\n---- agent log ({proc.log_path}) ----\n{proc.log_path.read_text(errors='replace')}\n")


@pytest.fixture(scope="module")
def client(agent: AgentProcess) -> Iterator[RosClient]:
    with RosClient(agent.namespace) as c:
        yield c
