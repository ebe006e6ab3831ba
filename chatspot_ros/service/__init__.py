"""The agent without ROS: :class:`~chatspot_ros.service.agent_service.AgentService` and what it
owns (frame matching, instruction planning, request tracking, the model worker, statistics, the
agent's configuration and model choice). The ROS node (:mod:`chatspot_ros.ros.node`) adapts it."""
