"""The package's public contract: interfaces, versions, package metadata, DDS on loopback."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_version_has_one_source() -> None:
    from catkin_pkg.package import parse_package

    from chatspot_ros import __version__

    assert parse_package(str(REPO / "package.xml")).version == __version__
    setup_py = (REPO / "setup.py").read_text()
    assert "_version.py" in setup_py and not re.search(r'version="\d', setup_py)


def test_package_xml_declares_every_ros_dependency() -> None:
    from catkin_pkg.package import parse_package

    package = parse_package(str(REPO / "package.xml"))
    package.validate()
    assert package.get_build_type() == "ament_cmake"
    keys = {d.name for d in package.build_depends + package.exec_depends + package.buildtool_depends}
    for needed in ("rclpy", "vision_msgs", "sensor_msgs", "geometry_msgs", "std_msgs", "visualization_msgs",
                   "diagnostic_msgs", "lifecycle_msgs", "rosidl_default_generators", "rosidl_default_runtime",
                   "launch_ros", "cv_bridge", "python3-numpy", "python3-opencv", "python3-yaml"):
        assert needed in keys, f"package.xml lacks a rosdep key for {needed}"


@pytest.mark.parametrize(
    ("module", "name", "fields"),
    [
        ("chatspot_ros.msg", "Region", {"type": "uint8", "points": "sequence<geometry_msgs/Point32>", "id": "string"}),
        ("chatspot_ros.msg", "RegionDescription",
         {"region": "chatspot_ros/Region", "label": "string", "instruction": "string", "text": "string"}),
        ("chatspot_ros.msg", "RegionDescriptionArray",
         {"header": "std_msgs/Header", "descriptions": "sequence<chatspot_ros/RegionDescription>",
          "inference_time_s": "float", "model": "string"}),
        ("chatspot_ros.msg", "ActionSuggestion",
         {"header": "std_msgs/Header", "region": "chatspot_ros/Region", "task": "string",
          "steps": "sequence<string>", "text": "string"}),
    ],
)
def test_messages_have_the_public_fields(module: str, name: str, fields: dict[str, str]) -> None:
    import importlib

    msg_type = getattr(importlib.import_module(module), name)
    assert msg_type.get_fields_and_field_types() == fields


def test_region_constants_match_the_core() -> None:
    from chatspot_ros.msg import Region

    assert (Region.POINT, Region.BOX, Region.POLYGON) == (0, 1, 2)


def test_services_and_action_have_the_public_fields() -> None:
    from chatspot_ros.action import Describe
    from chatspot_ros.srv import AskRegion, SuggestActions

    ask_request = AskRegion.Request.get_fields_and_field_types()
    assert ask_request == {
        "stamp": "builtin_interfaces/Time", "image": "sensor_msgs/Image",
        "regions": "sequence<chatspot_ros/Region>", "question": "string", "max_new_tokens": "uint32",
    }
    assert AskRegion.Response.get_fields_and_field_types() == {
        "success": "boolean", "message": "string", "answer": "string", "instruction": "string",
        "header": "std_msgs/Header",
    }
    assert SuggestActions.Request.get_fields_and_field_types() == {
        "stamp": "builtin_interfaces/Time", "image": "sensor_msgs/Image", "region": "chatspot_ros/Region",
        "task": "string",
    }
    assert set(SuggestActions.Response.get_fields_and_field_types()) == {"success", "message", "suggestion"}
    assert Describe.Goal.get_fields_and_field_types() == ask_request
    assert {"success", "message", "answer", "instruction"} <= set(Describe.Result.get_fields_and_field_types())
    assert Describe.Feedback.get_fields_and_field_types() == {"partial": "string", "tokens": "uint32"}


def test_vision_msgs_detection_array_round_trips() -> None:
    from rclpy.serialization import deserialize_message, serialize_message
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    detection = Detection2D(id="cup_7")
    detection.header.frame_id = "camera_optical"
    detection.bbox.center.position.x = 320.5
    detection.bbox.center.position.y = 240.25
    detection.bbox.center.theta = 0.1
    detection.bbox.size_x, detection.bbox.size_y = 64.0, 48.0
    hypothesis = ObjectHypothesisWithPose()
    hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = "cup", 0.93
    hypothesis.pose.pose.position.z = 1.5
    detection.results = [hypothesis]
    array = Detection2DArray(detections=[detection, Detection2D(id="empty")])
    array.header.stamp.sec, array.header.stamp.nanosec = 12, 345

    assert deserialize_message(serialize_message(array), Detection2DArray) == array


def test_vision_msgs_fields_are_those_of_vision_msgs_4() -> None:
    from vision_msgs.msg import BoundingBox2D, Detection2D, ObjectHypothesisWithPose, Pose2D

    assert Detection2D.get_fields_and_field_types() == {
        "header": "std_msgs/Header", "results": "sequence<vision_msgs/ObjectHypothesisWithPose>",
        "bbox": "vision_msgs/BoundingBox2D", "id": "string",
    }
    assert BoundingBox2D.get_fields_and_field_types() == {
        "center": "vision_msgs/Pose2D", "size_x": "double", "size_y": "double"}
    assert Pose2D.get_fields_and_field_types() == {"position": "vision_msgs/Point2D", "theta": "double"}
    assert ObjectHypothesisWithPose.get_fields_and_field_types() == {
        "hypothesis": "vision_msgs/ObjectHypothesis", "pose": "geometry_msgs/PoseWithCovariance"}


def test_env_script_keeps_dds_on_loopback() -> None:
    out = subprocess.run(
        ["bash", "-c", f"source {REPO / 'scripts' / 'env.sh'} && echo $ROS_AUTOMATIC_DISCOVERY_RANGE"],
        capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert out.stdout.strip() == "LOCALHOST"


def test_cmake_path_fix_rewrites_only_the_wheel_builder_paths(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("fix_paths", REPO / "scripts" / "fix_ros_cmake_paths.py")
    fix_paths = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fix_paths)
    cmake = tmp_path / "share" / "rosidl_generator_py" / "cmake" / "x.cmake"
    cmake.parent.mkdir(parents=True)
    cmake.write_text(f'set(A "{fix_paths.WHEEL_BUILDER_INCLUDE}")\nset(B "{fix_paths.WHEEL_BUILDER_SITE_PACKAGES}/numpy")\n')
    assert fix_paths.rewrite(tmp_path, "/venv/include", "/venv/site") == 1
    assert cmake.read_text() == 'set(A "/venv/include")\nset(B "/venv/site/numpy")\n'
    assert fix_paths.rewrite(tmp_path, "/venv/include", "/venv/site") == 0
