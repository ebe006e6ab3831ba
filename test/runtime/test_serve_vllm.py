"""scripts/serve_vllm.sh and the launch file's start_server plan, run against a stand-in for vLLM.

The stand-in venv's ``python`` records the command line and environment vLLM would get, so the
script's flags, the generated chat template and the work dir are checked without vLLM (the real
server is started by the same script in test/vllm).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatspot_ros.remote.serve import LOOPBACK, SERVER_STARTUP_WAIT_S, server_beside_node
from chatspot_ros.service.config import PARAMETERS_BY_NAME, AgentConfig

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "serve_vllm.sh"
# where colcon (scripts/setup.sh) installs it and the launch file's start_server runs it from
INSTALLED_SCRIPT = REPO / "install" / "chatspot_ros" / "lib" / "chatspot_ros" / "serve_vllm.sh"

STAND_IN = """#!/usr/bin/env bash
# "python" of a venv with vLLM: no GPU; the server records what it was given instead of serving
if [ "$1" = "-c" ]; then exit 1; fi
if [ "$1" = "-m" ] && [ "$2" = "vllm.entrypoints.openai.api_server" ]; then
  shift 2
  {{ printf 'arg %s\\n' "$@"; echo "env VLLM_CACHE_ROOT=$VLLM_CACHE_ROOT"; echo "cwd $PWD"; }} > {out}
  exit 0
fi
exit 3
"""


@pytest.fixture()
def vllm_venv(tmp_path: Path) -> Path:
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STAND_IN.format(out=tmp_path / "served.txt"))
    python.chmod(0o755)
    return python.parents[1]


def run_plan(plan, tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATSPOT_", "VLLM_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])  # as a sourced workspace has it
    done = subprocess.run(list(plan.command), env={**env, **plan.env}, capture_output=True, text=True, timeout=60)
    served = tmp_path / "served.txt"
    lines = served.read_text().splitlines() if served.exists() else []
    args = [line[4:] for line in lines if line.startswith("arg ")]
    facts = dict(line.split(" ", 1) for line in lines if not line.startswith("arg "))
    return done, args, facts


def test_the_plan_points_the_node_at_the_server_it_starts(tmp_path: Path) -> None:
    plan = server_beside_node("/models/tabletop", "8123", script="/opt/ros/lib/chatspot_ros/serve_vllm.sh",
                              work_dir="/w", python="/usr/bin/python3", venv="/opt/vllm",
                              flags=["--tensor-parallel-size", "2"])
    assert plan.command == ("bash", "/opt/ros/lib/chatspot_ros/serve_vllm.sh", "/models/tabletop", "8123",
                            "--", "--tensor-parallel-size", "2")
    assert plan.env == {"CHATSPOT_SERVE_HOST": LOOPBACK, "CHATSPOT_SERVE_WORK_DIR": "/w",
                        "CHATSPOT_PYTHON": "/usr/bin/python3", "CHATSPOT_VLLM_VENV": "/opt/vllm"}
    assert set(plan.node_parameters) <= set(PARAMETERS_BY_NAME)
    config = AgentConfig.defaults().replace({**plan.node_parameters, "model.path": "/models/tabletop"})
    assert (config.model_backend, config.server_url) == ("vllm", "http://127.0.0.1:8123")
    assert config.server_startup_wait_s == SERVER_STARTUP_WAIT_S
    no_flags = server_beside_node("/m", 8000, script="s", work_dir="/w", python="p")
    assert no_flags.command == ("bash", "s", "/m", "8000") and "CHATSPOT_VLLM_VENV" not in no_flags.env
    for port in ("x", 0, 70000, True):
        with pytest.raises(ValueError, match="server_port must be a TCP port"):
            server_beside_node("/m", port, script="s", work_dir="/w", python="p")
    with pytest.raises(ValueError, match="start_server needs model_path"):
        server_beside_node("", 8000, script="s", work_dir="/w", python="p")


@pytest.mark.parametrize("script", [SCRIPT, INSTALLED_SCRIPT], ids=["source", "installed"])
def test_the_script_serves_the_checkpoint_with_the_project_flags(script: Path, tiny_model_dir: Path,
                                                                 vllm_venv: Path, tmp_path: Path) -> None:
    assert script.exists(), f"{script} is missing: run scripts/setup.sh (colcon installs it)"
    work = tmp_path / "work"
    plan = server_beside_node(str(tiny_model_dir), 8123, script=str(script), work_dir=str(work),
                              python=sys.executable, venv=str(vllm_venv), flags=["--enforce-eager"])
    done, args, facts = run_plan(plan, tmp_path)
    assert done.returncode == 0, done.stderr
    name = tiny_model_dir.name
    template = work / "vllm-templates" / f"{name}.jinja"

    def value(flag: str) -> str:
        return args[args.index(flag) + 1]

    assert value("--model") == str(tiny_model_dir.resolve()) and value("--served-model-name") == name
    assert (value("--host"), value("--port"), value("--dtype")) == (LOOPBACK, "8123", "float32")
    assert value("--block-size") == "32" and "--enable-prefix-caching" in args
    assert value("--chat-template") == str(template) and "ASSISTANT:" in template.read_text()
    assert args[-1] == "--enforce-eager"
    assert facts["env"] == f"VLLM_CACHE_ROOT={work / 'vllm-cache'}" and (work / "vllm-cache").is_dir()
    assert f"{name} on http://{LOOPBACK}:8123" in done.stdout and "api key: none" in done.stdout


def test_the_script_refuses_what_it_cannot_serve(tiny_model_dir: Path, vllm_venv: Path, tmp_path: Path) -> None:
    def refused(model: str, venv: str) -> subprocess.CompletedProcess:
        plan = server_beside_node(model, 8123, script=str(SCRIPT), work_dir=str(tmp_path / "w"),
                                  python=sys.executable, venv=venv)
        done, args, _ = run_plan(plan, tmp_path)
        assert done.returncode == 2 and args == []
        return done

    assert "no such folder" in refused(str(tmp_path / "none"), str(vllm_venv)).stderr
    assert "set CHATSPOT_VLLM_VENV" in refused(str(tiny_model_dir), str(tmp_path / "no-venv")).stderr
    assert "has no config.json" in refused(str(tmp_path), str(vllm_venv)).stderr
