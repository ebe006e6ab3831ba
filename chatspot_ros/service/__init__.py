"""The agent's ROS-free service layer: frame matching, instruction planning, request tracking,
the model worker, statistics and the agent's configuration. The ROS node adapts it."""
