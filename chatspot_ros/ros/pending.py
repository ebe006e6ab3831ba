"""Moved to :mod:`chatspot_ros.requests` (ROS-free); kept so existing imports keep working."""
from __future__ import annotations

from chatspot_ros.requests import Outcome, PendingRequest, RequestKind, RequestTracker

__all__ = ["Outcome", "PendingRequest", "RequestKind", "RequestTracker"]
