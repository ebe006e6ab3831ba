"""chatspot_ros.service.projection: pinhole projection with CameraInfo numbers, checked against OpenCV."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from chatspot_ros.service.projection import PinholeCamera

K = (500.0, 0.0, 320.0, 0.0, 510.0, 240.0, 0.0, 0.0, 1.0)


def test_the_optical_axis_hits_the_principal_point_and_pixels_scale_with_depth() -> None:
    camera = PinholeCamera(640, 480, K)
    assert camera.project((0.0, 0.0, 2.0)) == (320.0, 240.0)
    assert camera.project((0.2, -0.1, 1.0)) == pytest.approx((420.0, 189.0))
    assert camera.project((0.4, -0.2, 2.0)) == pytest.approx((420.0, 189.0))
    assert camera.contains(420.0, 189.0) and not camera.contains(640.0, 10.0)
    x, y, z = camera.back_project(420.0, 189.0, 2.0)
    assert (x, y, z) == pytest.approx((0.4, -0.2, 2.0))


@pytest.mark.parametrize("model", ["plumb_bob", "rational_polynomial"])
def test_distortion_matches_opencv(model: str) -> None:
    d = (-0.28, 0.07, 0.001, -0.0005, 0.01) + ((0.002, -0.001, 0.0005) if model == "rational_polynomial" else ())
    camera = PinholeCamera(640, 480, K, d, model)
    points = np.array([[0.3, -0.2, 1.5], [-0.5, 0.4, 2.0], [0.01, 0.02, 0.7]])
    expected, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), np.array(K).reshape(3, 3), np.array(d))
    for point, pixel in zip(points, expected.reshape(-1, 2)):
        assert camera.project(point) == pytest.approx(tuple(pixel), abs=1e-6)


def test_equidistant_matches_opencv_fisheye() -> None:
    d = (0.05, -0.01, 0.002, -0.0003)
    camera = PinholeCamera(640, 480, K, d, "equidistant")
    points = np.array([[[0.3, -0.2, 1.5], [-0.5, 0.4, 2.0]]])
    expected, _ = cv2.fisheye.projectPoints(points, np.zeros(3), np.zeros(3), np.array(K).reshape(3, 3), np.array(d))
    for point, pixel in zip(points[0], expected.reshape(-1, 2)):
        assert camera.project(point) == pytest.approx(tuple(pixel), abs=1e-6)


def test_rectified_projection_uses_p_and_ignores_distortion() -> None:
    p = (450.0, 0.0, 330.0, 0.0, 0.0, 450.0, 235.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    camera = PinholeCamera(640, 480, K, (-0.3, 0.1, 0.0, 0.0, 0.0), "plumb_bob", p)
    assert camera.project((0.2, 0.1, 1.0), rectified=True) == pytest.approx((420.0, 280.0))
    no_p = PinholeCamera(640, 480, K, (), "plumb_bob", (0.0,) * 12)
    assert no_p.project((0.2, 0.1, 1.0), rectified=True) == pytest.approx((420.0, 291.0))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"k": (0.0,) * 9}, "not calibrated"),
        ({"k": (1.0,) * 8}, "9 values"),
        ({"p": (1.0,) * 5}, "12 values"),
        ({"d": (0.1,), "distortion_model": "kannala_brandt_x"}, "unsupported distortion model"),
        ({"k": (float("nan"),) + K[1:]}, "NaN"),
        ({"width": 0}, "empty"),
    ],
)
def test_bad_cameras_raise(kwargs, needle) -> None:
    args = {"width": 640, "height": 480, "k": K}
    args.update(kwargs)
    with pytest.raises(ValueError, match=needle):
        PinholeCamera(**args)


def test_points_behind_the_camera_or_not_finite_raise() -> None:
    camera = PinholeCamera(640, 480, K)
    with pytest.raises(ValueError, match="in front"):
        camera.project((0.0, 0.0, -1.0))
    with pytest.raises(ValueError, match="in front"):
        camera.project((0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="NaN"):
        camera.project((float("nan"), 0.0, 1.0))
