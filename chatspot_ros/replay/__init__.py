"""Robot recordings through the pipeline (docs/replay.md): read a rosbag2 / MCAP / ROS 1 bag with
``rosbags`` (no ROS install needed), answer its detections and clicks as the node would, write the
answers as a new MCAP plus JSONL/CSV and a summary; or play a recording into DDS for a live node."""
