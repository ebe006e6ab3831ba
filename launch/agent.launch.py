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

Where ``ros2 launch`` is not available (the PyPI wheels) the same node starts with
``python -m chatspot_ros.agent --ros-args --params-file config/agent.yaml -p model.path:=...``.
"""
from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

# Launch argument -> node parameter it overrides when it is not empty.
PARAMETER_ARGUMENTS = {
    "model_path": "model.path",
    "device": "model.device",
    "image_transport": "image.transport",
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
}
NODE_NAME = "chatspot_agent"
EXECUTABLE = "chatspot_agent"


def _node(context, *args, **kwargs):
    value = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENT_HELP}
    params_file = value["params_file"] or os.path.join(
        get_package_share_directory("chatspot_ros"), "config", "agent.yaml")
    overrides = {param: value[arg] for arg, param in PARAMETER_ARGUMENTS.items() if value[arg]}
    remappings = [(topic, value[arg]) for arg, topic in REMAP_ARGUMENTS.items() if value[arg]]
    if value["image"]:
        remappings.append(("image/compressed", value["image"].rstrip("/") + "/compressed"))
    return [LifecycleNode(
        package="chatspot_ros", executable=EXECUTABLE, name=NODE_NAME, namespace=value["namespace"],
        parameters=[params_file, overrides] if overrides else [params_file],
        remappings=remappings, output="screen", emulate_tty=True,
    )]


def generate_launch_description() -> LaunchDescription:
    arguments = [DeclareLaunchArgument(name, default_value="", description=text)
                 for name, text in ARGUMENT_HELP.items()]
    return LaunchDescription(arguments + [OpaqueFunction(function=_node)])
