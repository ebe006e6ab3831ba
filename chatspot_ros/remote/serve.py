"""A vLLM server started beside the node: the command, its environment and the node's parameters.

The launch file's ``start_server:=true`` runs ``scripts/serve_vllm.sh`` (installed next to the
node's executable) for the node's own checkpoint and points the node at it. What to run is decided
here, without ``launch``, so it is tested where launch_ros is not installed (the PyPI wheels).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# How long the node's configure waits for the server it was launched with: loading and compiling a
# 7B model takes minutes on a GPU server, and the CPU build takes about a minute for a tiny one.
SERVER_STARTUP_WAIT_S = 900.0
LOOPBACK = "127.0.0.1"  # a server started beside the node serves this machine only


@dataclass(frozen=True)
class ServerBesideNode:
    command: tuple[str, ...]
    env: dict[str, str]  # added to the launch environment
    node_parameters: dict[str, Any]  # the node's parameters that point it at this server


def server_beside_node(model_dir: str, port: int | str, *, script: str, work_dir: str, python: str, venv: str = "",
                       flags: Sequence[str] = ()) -> ServerBesideNode:
    """``script MODEL_DIR PORT [-- flags]`` with the venv, work dir and chat-template Python set, and
    the node's ``model.backend: vllm`` at ``http://127.0.0.1:PORT``, waiting for it at configure."""
    if not model_dir:
        raise ValueError("start_server needs model_path: the checkpoint folder to serve (the node reads its "
                         "config files too)")
    try:
        number = int(port)  # a launch argument is a string
    except (TypeError, ValueError):
        number = 0
    if isinstance(port, bool) or not 1 <= number <= 65535:
        raise ValueError(f"server_port must be a TCP port (1-65535), got {port!r}")
    command = ("bash", script, model_dir, str(number)) + (("--", *flags) if flags else ())
    env = {"CHATSPOT_SERVE_HOST": LOOPBACK, "CHATSPOT_SERVE_WORK_DIR": work_dir, "CHATSPOT_PYTHON": python}
    if venv:
        env["CHATSPOT_VLLM_VENV"] = venv
    parameters = {"model.backend": "vllm", "server.url": f"http://{LOOPBACK}:{number}",
                  "server.startup_wait_s": SERVER_STARTUP_WAIT_S}
    return ServerBesideNode(command, env, parameters)
