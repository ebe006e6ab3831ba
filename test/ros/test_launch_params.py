"""config/agent.yaml, the launch file, docs/node.md and the node's parameters line up (no rclpy.init).

launch_ros is not on PyPI: the launch file is parsed, not run; its tables of arguments are
checked against the node's parameter table. Where launch_ros is installed, it is also built.
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from chatspot_ros.service.config import PARAMETERS, PARAMETERS_BY_NAME, AgentConfig

from launch_tables import LAUNCH_FILE, launch_tables

REPO = Path(__file__).resolve().parents[2]
PARAMS_FILE = REPO / "config" / "agent.yaml"
NODE_DOC = REPO / "docs" / "node.md"


def test_the_params_file_sets_exactly_the_declared_parameters_with_their_defaults() -> None:
    data = yaml.safe_load(PARAMS_FILE.read_text())
    assert list(data) == ["/**"]
    params = data["/**"]["ros__parameters"]
    assert set(params) == set(PARAMETERS_BY_NAME)
    for name, value in params.items():
        default = PARAMETERS_BY_NAME[name].default
        assert type(value) is type(default) and value == default, name
    config = AgentConfig.from_parameters(params)
    assert config == AgentConfig.defaults()


def test_the_node_doc_lists_every_parameter_with_its_default_and_when_it_applies() -> None:
    rows = {m.group(1): (m.group(2), m.group(3).strip(), m.group(4))
            for m in re.finditer(r"^\| `([^`]+)` \| `([^`]*)` \| ([^|]+) \| (.*) \|$", NODE_DOC.read_text(), re.M)}
    when = {"always": "at once", "activate": "next activation", "configure": "next configure",
            "startup": "start-up only"}
    assert set(rows) == set(PARAMETERS_BY_NAME)
    for spec in PARAMETERS:
        default, applies, description = rows[spec.name]
        assert default == json.dumps(spec.default), spec.name
        assert applies == when[spec.when], spec.name
        assert description.startswith(spec.description), spec.name


def test_the_launch_file_compiles_and_its_arguments_match_the_node() -> None:
    compile(LAUNCH_FILE.read_text(), str(LAUNCH_FILE), "exec")
    tables = launch_tables()
    for argument, parameter in tables["PARAMETER_ARGUMENTS"].items():
        assert parameter in PARAMETERS_BY_NAME, f"launch argument {argument} overrides unknown {parameter}"
        assert argument in tables["ARGUMENT_HELP"]
    topic_defaults = {spec.default for spec in PARAMETERS if spec.name.startswith("topics.")}
    for argument, topic in tables["REMAP_ARGUMENTS"].items():
        assert topic in topic_defaults, f"launch argument {argument} remaps {topic}, not a topic of the node"
        assert argument in tables["ARGUMENT_HELP"]
    assert {"params_file", "namespace", "model_path", "image", "detections"} <= set(tables["ARGUMENT_HELP"])
    assert tables["NODE_NAME"] == "chatspot_agent"
    assert (REPO / "scripts" / tables["EXECUTABLE"]).exists()
    # start_server: the serve script is installed next to the executable, where the launch file looks
    assert {"start_server", "server_port", "vllm_venv", "server_flags"} <= set(tables["ARGUMENT_HELP"])
    assert (REPO / "scripts" / tables["SERVE_SCRIPT"]).exists()
    installed = re.search(r"install\(PROGRAMS ([^\n]*)\n\s*DESTINATION lib/\$\{PROJECT_NAME\}",
                          (REPO / "CMakeLists.txt").read_text())
    assert installed and {f"scripts/{tables['EXECUTABLE']}", f"scripts/{tables['SERVE_SCRIPT']}"} <= set(
        installed.group(1).split())


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None, reason="launch_ros is not installed")
def test_the_launch_description_builds() -> None:  # pragma: no cover - needs a ROS install
    spec = importlib.util.spec_from_file_location("agent_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {a.name for a in description.entities if hasattr(a, "name")}
    assert {"params_file", "model_path", "image", "detections"} <= names
