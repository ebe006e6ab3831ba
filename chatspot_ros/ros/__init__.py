"""The ROS 2 adapter of :mod:`chatspot_ros.service`: message conversion, the lifecycle node, its
entry point, diagnostics, debug drawing.

Importing ``chatspot_ros.ros`` itself imports nothing from ROS; ``drawing`` and ``allocator`` are
ROS-free, ``convert`` and ``diagnostics`` need only the message packages, ``node`` and ``agent``
need rclpy.
"""
from __future__ import annotations
