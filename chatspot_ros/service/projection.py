"""Pinhole projection of 3D points into a camera image, from sensor_msgs/CameraInfo numbers.

No ROS: :class:`PinholeCamera` holds the CameraInfo fields (``k``, ``d``, ``p``, distortion model,
size, frame id). Points are in the camera's optical frame (x right, y down, z forward, metres).

``project(point)`` maps to pixels of the **raw** image with ``K`` and the lens distortion
(plumb_bob / rational_polynomial / equidistant), as rviz's camera display and image_geometry's
``project3dToPixel`` on an unrectified image expect; ``project(point, rectified=True)`` uses ``P``
for a rectified image (``image_rect``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")


@dataclass(frozen=True)
class PinholeCamera:
    width: int
    height: int
    k: tuple[float, ...]  # 3x3 row-major intrinsics
    d: tuple[float, ...] = ()  # distortion coefficients
    distortion_model: str = "plumb_bob"
    p: tuple[float, ...] = ()  # 3x4 row-major projection (rectified); empty = use K
    frame_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", tuple(float(v) for v in self.k))
        object.__setattr__(self, "d", tuple(float(v) for v in self.d))
        object.__setattr__(self, "p", tuple(float(v) for v in self.p))
        if len(self.k) != 9:
            raise ValueError(f"camera K must have 9 values, got {len(self.k)}")
        if self.p and len(self.p) != 12:
            raise ValueError(f"camera P must have 12 values, got {len(self.p)}")
        if not all(math.isfinite(v) for v in self.k + self.d + self.p):
            raise ValueError("camera K, D or P holds a NaN or infinite value")
        fx, fy = self.k[0], self.k[4]
        if fx <= 0.0 or fy <= 0.0:
            raise ValueError(
                f"camera K has no focal length (fx={fx}, fy={fy}): the camera is not calibrated"
            )
        if self.p and (self.p[0] <= 0.0 or self.p[5] <= 0.0):
            object.__setattr__(self, "p", ())  # an all-zero P is "not set": fall back to K
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"camera size {self.width}x{self.height} is empty")
        if self.has_distortion and self.distortion_model not in DISTORTION_MODELS:
            raise ValueError(
                f"unsupported distortion model {self.distortion_model!r}; "
                f"supported: {', '.join(DISTORTION_MODELS)}"
            )

    @property
    def has_distortion(self) -> bool:
        return any(v != 0.0 for v in self.d)

    def project(self, point: Sequence[float], *, rectified: bool = False) -> tuple[float, float]:
        """Pixel (u, v) of a 3D point in the optical frame; ValueError when behind the camera."""
        if len(point) != 3:
            raise ValueError(f"expected a 3D point, got {len(point)} values")
        x, y, z = (float(v) for v in point)
        if not all(math.isfinite(v) for v in (x, y, z)):
            raise ValueError(f"point ({x}, {y}, {z}) has a NaN or infinite coordinate")
        if z <= 0.0:
            raise ValueError(f"point ({x:.3f}, {y:.3f}, {z:.3f}) is not in front of the camera (z <= 0)")
        if rectified and self.p:
            p = self.p
            u = p[0] * x + p[1] * y + p[2] * z + p[3]
            v = p[4] * x + p[5] * y + p[6] * z + p[7]
            w = p[8] * x + p[9] * y + p[10] * z + p[11]
            if w <= 0.0:
                raise ValueError("point projects behind the rectified camera")
            return u / w, v / w
        xn, yn = x / z, y / z
        if self.has_distortion and not rectified:
            xn, yn = self._distort(xn, yn)
        k = self.k
        return k[0] * xn + k[1] * yn + k[2], k[4] * yn + k[5]

    def _distort(self, x: float, y: float) -> tuple[float, float]:
        d = self.d + (0.0,) * max(0, 8 - len(self.d))
        if self.distortion_model == "equidistant":
            k1, k2, k3, k4 = d[:4]
            r = math.hypot(x, y)
            if r == 0.0:
                return x, y
            theta = math.atan(r)
            t2 = theta * theta
            theta_d = theta * (1 + k1 * t2 + k2 * t2**2 + k3 * t2**3 + k4 * t2**4)
            return x * theta_d / r, y * theta_d / r
        k1, k2, p1, p2, k3, k4, k5, k6 = d[:8]
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
        if self.distortion_model == "rational_polynomial":
            radial /= 1 + k4 * r2 + k5 * r2**2 + k6 * r2**3
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return xd, yd

    def contains(self, u: float, v: float) -> bool:
        """Whether pixel (u, v) lies inside the image."""
        return 0.0 <= u < self.width and 0.0 <= v < self.height

    def back_project(self, u: float, v: float, depth: float) -> tuple[float, float, float]:
        """The 3D point at ``depth`` metres along pixel (u, v)'s ray (distortion ignored)."""
        k = self.k
        yn = (v - k[5]) / k[4]
        xn = (u - k[2] - k[1] * yn) / k[0]
        return xn * depth, yn * depth, float(depth)
