"""The ROS 2 adapter: message conversion, the lifecycle node, diagnostics, debug drawing.

Only this package and ``chatspot_ros.agent`` import rclpy or ROS messages. Importing
``chatspot_ros.ros`` itself imports nothing from ROS; the submodules ``config``, ``drawing``,
``stats`` and ``worker`` are ROS-free too, ``convert`` needs only the message packages, and
``node`` needs rclpy.
"""
from __future__ import annotations
