"""chatspot_ros: precise referring for robots, after ChatSpot (Zhao et al., 2023).

The ROS-free core (``chatspot_ros.referring``, ``chatspot_ros.runtime``, ``chatspot_ros.pipeline``)
imports without ROS. The generated interfaces (``chatspot_ros.msg``/``srv``/``action``) live in
the colcon install space; ``extend_path`` lets a source checkout on ``sys.path`` see them too.
"""
from pkgutil import extend_path

from chatspot_ros._version import __version__

__path__ = extend_path(__path__, __name__)

__all__ = ["__version__"]
