"""``studio:=true`` in launch/agent.launch.py lines up with chatspot-studio (no launch_ros here).

launch_ros is not on PyPI: as test/ros/test_launch_params.py does, the launch file is parsed, not
run, and its tables are checked against what they point at: the studio's options (through its own
argument parser), the installed executable, and the ROS command line the launch would give it.
"""
from __future__ import annotations

import re
from pathlib import Path

from chatspot_ros.cli.studio import build_parser, split_ros_args

from launch_tables import LAUNCH_FILE, launch_tables

REPO = Path(__file__).resolve().parents[2]


def test_studio_arguments_are_declared_and_map_to_options_the_studio_takes() -> None:
    tables = launch_tables()
    assert {"studio", "studio_host", "studio_port"} <= set(tables["ARGUMENT_HELP"])
    examples = {"--host": "0.0.0.0", "--port": "9000", "--transport": "compressed"}
    argv = ["--agent", tables["NODE_NAME"]]
    for argument, option in tables["STUDIO_ARGUMENTS"].items():
        assert argument in tables["ARGUMENT_HELP"], argument
        argv += [option, examples[option]]
    # what launch_ros appends to a Node's arguments
    ours, ros_args = split_ros_args(argv + ["--ros-args", "-r", "__node:=chatspot_studio", "-r", "__ns:=/robot1",
                                            "-r", "image:=/camera/image_raw"])
    args = build_parser().parse_args(ours)
    assert (args.host, args.port, args.transport, args.agent) == ("0.0.0.0", 9000, "compressed", "chatspot_agent")
    assert ros_args[-1] == "image:=/camera/image_raw" and args.model is None  # the ROS mode


def test_the_studio_executable_is_installed_next_to_the_agent() -> None:
    tables = launch_tables()
    script = REPO / "scripts" / tables["STUDIO_EXECUTABLE"]
    assert script.exists() and script.stat().st_mode & 0o111
    assert "from chatspot_ros.cli.studio import main" in script.read_text()
    installed = re.search(r"install\(PROGRAMS ([^\n]*)\n\s*DESTINATION lib/\$\{PROJECT_NAME\}",
                          (REPO / "CMakeLists.txt").read_text())
    assert installed and f"scripts/{tables['STUDIO_EXECUTABLE']}" in installed.group(1).split()
    source = LAUNCH_FILE.read_text()
    assert "executable=STUDIO_EXECUTABLE" in source and 'value["studio"]' in source
