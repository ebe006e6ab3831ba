"""Launch the chatspot_agent lifecycle node with config/agent.yaml.

    ros2 launch chatspot_ros agent.launch.py model_path:=/models/llava-1.5-7b-hf \
        image:=/camera/color/image_raw detections:=/detector/detections namespace:=robot1

Arguments (``ros2 launch chatspot_ros agent.launch.py --show-args``):
  params_file      parameter file (default: the package's config/agent.yaml)
  namespace        namespace of the node and its relative topics
  model_path, device, image_transport
                   override model.path / model.device / image.transport when not empty
  image, detections, camera_info, clicked_point, task
                   remap the node's input topics (image also remaps image/compressed)
  backend, server_url
                   override model.backend / server.url (a vLLM server elsewhere, docs/vllm.md)
  start_server     true: also start a vLLM server on this machine for model_path (scripts/serve_vllm.sh,
                   bound to 127.0.0.1:server_port) and point the node at it; its configure waits for
                   the server to load (server.startup_wait_s). vllm_venv: the venv with vLLM (default
                   $CHATSPOT_VLLM_VENV); server_flags: extra vLLM flags, e.g. "--tensor-parallel-size 2"

    ros2 launch chatspot_ros agent.launch.py model_path:=/models/llava-1.5-7b-hf start_server:=true \
        vllm_venv:=/opt/vllm-venv server_flags:="--max-num-seqs 64"
  studio           true: also start chatspot-studio (click-to-ask in the browser, docs/studio.md) beside
                   the node, in its namespace and with its image/detections remappings;
                   studio_host (default 127.0.0.1), studio_port (default 8765)

    ros2 launch chatspot_ros agent.launch.py studio:=true    # then open http://127.0.0.1:8765/

Where ``ros2 launch`` is not available (the PyPI wheels) the same node starts with
``python -m chatspot_ros.agent --ros-args --params-file config/agent.yaml -p model.path:=...``.
"""
from __future__ import annotations

import os
import shlex
import sys

from ament_index_python.packages import get_package_prefix, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from chatspot_ros.remote.serve import server_beside_node

# Launch argument -> node parameter it overrides when it is not empty.
PARAMETER_ARGUMENTS = {
    "model_path": "model.path",
    "device": "model.device",
    "image_transport": "image.transport",
    "backend": "model.backend",
    "server_url": "server.url",
}
# Launch argument -> the node's topic (relative name) it remaps when it is not empty.
REMAP_ARGUMENTS = {
    "image": "image",
    "detections": "detections",
    "camera_info": "camera_info",
    "clicked_point": "clicked_point",
    "task": "task",
}
ARGUMENT_HELP = {
    "params_file": "Parameter file of the node.",
    "namespace": "Namespace of the node and its relative topics.",
    "model_path": "Local checkpoint folder (overrides model.path).",
    "device": "cpu, cuda or cuda:N (overrides model.device).",
    "image_transport": "raw or compressed (overrides image.transport).",
    "image": "Camera image topic (image/compressed follows it).",
    "detections": "vision_msgs/Detection2DArray topic.",
    "camera_info": "CameraInfo topic.",
    "clicked_point": "PointStamped clicks (rviz Publish Point, rqt_image_view).",
    "task": "std_msgs/String with the planner's current task.",
    "backend": "local or vllm (overrides model.backend).",
    "server_url": "vLLM server URL, e.g. http://gpu-server:8000 (overrides server.url).",
    "start_server": "true: start a vLLM server for model_path beside the node and use it.",
    "server_port": "Port of the server start_server starts (default 8000, on 127.0.0.1).",
    "vllm_venv": "Venv with vLLM for start_server (default $CHATSPOT_VLLM_VENV).",
    "server_flags": "Extra vLLM flags for start_server, e.g. --tensor-parallel-size 2.",
    "studio": "true: also start chatspot-studio, the click-to-ask page (docs/studio.md).",
    "studio_host": "Address chatspot-studio binds (default 127.0.0.1: this machine only).",
    "studio_port": "Port of chatspot-studio (default 8765).",
}
# Launch argument -> the chatspot-studio option it sets when it is not empty.
STUDIO_ARGUMENTS = {
    "studio_host": "--host",
    "studio_port": "--port",
    "image_transport": "--transport",
}
STUDIO_EXECUTABLE = "chatspot_studio"  # installed next to EXECUTABLE
NODE_NAME = "chatspot_agent"
EXECUTABLE = "chatspot_agent"
SERVE_SCRIPT = "serve_vllm.sh"  # installed next to EXECUTABLE
DEFAULT_SERVER_PORT = 8000


def _server(value: dict[str, str]):
    """The ExecuteProcess of start_server:=true, and the node parameters that point at it."""
    plan = server_beside_node(
        value["model_path"], value["server_port"] or DEFAULT_SERVER_PORT,
        script=os.path.join(get_package_prefix("chatspot_ros"), "lib", "chatspot_ros", SERVE_SCRIPT),
        work_dir=os.path.join(os.environ.get("ROS_HOME", os.path.expanduser("~/.ros")), "chatspot_ros", "vllm"),
        python=sys.executable, venv=value["vllm_venv"] or os.environ.get("CHATSPOT_VLLM_VENV", ""),
        flags=shlex.split(value["server_flags"]))
    process = ExecuteProcess(cmd=list(plan.command), additional_env=plan.env, name="vllm_server",
                             output="screen", emulate_tty=True)
    return process, plan.node_parameters


def _node(context, *args, **kwargs):
    value = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENT_HELP}
    params_file = value["params_file"] or os.path.join(
        get_package_share_directory("chatspot_ros"), "config", "agent.yaml")
    actions, overrides = [], {}
    if value["start_server"].lower() in ("true", "1", "yes"):
        process, overrides = _server(value)
        actions.append(process)
    overrides.update({param: value[arg] for arg, param in PARAMETER_ARGUMENTS.items() if value[arg]})
    remappings = [(topic, value[arg]) for arg, topic in REMAP_ARGUMENTS.items() if value[arg]]
    if value["image"]:
        remappings.append(("image/compressed", value["image"].rstrip("/") + "/compressed"))
    if value["studio"].lower() in ("true", "1", "yes"):
        studio_args = ["--agent", NODE_NAME]
        for arg, option in STUDIO_ARGUMENTS.items():
            if value[arg]:
                studio_args += [option, value[arg]]
        # the same topic remappings as the agent's: the studio shows what the agent sees
        actions.append(Node(package="chatspot_ros", executable=STUDIO_EXECUTABLE, name="chatspot_studio",
                            namespace=value["namespace"], arguments=studio_args, remappings=remappings,
                            output="screen", emulate_tty=True))
    return actions + [LifecycleNode(
        package="chatspot_ros", executable=EXECUTABLE, name=NODE_NAME, namespace=value["namespace"],
        parameters=[params_file, overrides] if overrides else [params_file],
        remappings=remappings, output="screen", emulate_tty=True,
    )]


def generate_launch_description() -> LaunchDescription:
    arguments = [DeclareLaunchArgument(name, default_value="", description=text)
                 for name, text in ARGUMENT_HELP.items()]
    return LaunchDescription(arguments + [OpaqueFunction(function=_node)])
