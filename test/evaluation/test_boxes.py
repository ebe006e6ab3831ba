"""IoU and Acc@0.5 against hand-computed goldens; the box-noise rule checked statistically."""
from __future__ import annotations

import math

import numpy as np
import pytest

from chatspot_ros.evaluation.boxes import accuracy_at_iou, box_iou, jitter_box, xywh_to_xyxy, xyxy_to_xywh


@pytest.mark.parametrize("a, b, expected", [
    ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
    ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
    ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges share no area
    ((0, 0, 2, 2), (1, 1, 3, 3), 1 / 7),  # inter 1, union 4 + 4 - 1
    ((0, 0, 4, 4), (1, 1, 3, 3), 4 / 16),  # one inside the other
    ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
    ((0, 0, 10, 20), (0, 10, 10, 30), 100 / 300),
    ((2.5, 2.5, 7.5, 7.5), (0, 0, 10, 10), 25 / 100),
    ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # both empty
    ((0, 0, 10, 0), (0, 0, 10, 10), 0.0),  # a line has no area
])
def test_iou_goldens(a, b, expected) -> None:
    assert box_iou(a, b) == pytest.approx(expected, abs=1e-12)
    assert box_iou(b, a) == pytest.approx(expected, abs=1e-12)


def test_acc_at_0_5_goldens() -> None:
    # IoU exactly 0.5 counts (>=); an unparsed answer (None) counts as wrong.
    assert accuracy_at_iou([0.5, 0.49, None, 0.9]) == 0.5
    assert accuracy_at_iou([None, None]) == 0.0
    assert accuracy_at_iou([]) == 0.0
    # (0,0,10,10) vs (0,0,10,20): IoU 0.5 exactly; vs (0,0,10,21): just below.
    ious = [box_iou((0, 0, 10, 10), (0, 0, 10, 20)), box_iou((0, 0, 10, 10), (0, 0, 10, 21))]
    assert ious[0] == 0.5 and ious[1] < 0.5
    assert accuracy_at_iou(ious) == 0.5


def test_box_formats() -> None:
    assert xywh_to_xyxy([1, 2, 3, 4]) == (1.0, 2.0, 4.0, 6.0)
    assert xyxy_to_xywh((1, 2, 4, 6)) == [1.0, 2.0, 3.0, 4.0]
    for bad in ([0, 0, -1, 2], [0, 0, 1], [0, 0, float("nan"), 1]):
        with pytest.raises(ValueError):
            xywh_to_xyxy(bad)


N_DRAWS = 20000


def _displacements(scale: float, seed: int = 0) -> np.ndarray:
    """(N, 4) edge moves of a box far from the image border, in units of the box side of that axis."""
    rng = np.random.default_rng(seed)
    box = (300.0, 400.0, 400.0, 450.0)  # width 100, height 50: x and y edges scale differently
    moved = np.array([jitter_box(box, scale, rng, (2000, 2000)) for _ in range(N_DRAWS)])
    sides = np.array([100.0, 50.0, 100.0, 50.0])
    return (moved - np.array(box)) / sides


@pytest.mark.parametrize("scale", [0.1, 0.3])
def test_noise_is_uniform_per_edge_in_units_of_the_box_side(scale: float) -> None:
    d = _displacements(scale)
    assert np.all(np.abs(d) <= scale + 1e-12)
    assert np.all(np.abs(d).max(axis=0) > 0.99 * scale)  # the support reaches +-scale on every edge
    sigma = scale / math.sqrt(3)  # standard deviation of U(-s, s)
    assert np.all(np.abs(d.mean(axis=0)) < 4 * sigma / math.sqrt(N_DRAWS))
    # Variance s^2/3; the sample variance's sd is s^2 sqrt(4 / (45 N)) for a uniform.
    tolerance = 4 * scale**2 * math.sqrt(4 / (45 * N_DRAWS))
    assert np.all(np.abs(d.var(axis=0) - sigma**2) < tolerance)
    # Kolmogorov-Smirnov against U(-s, s) on every edge, 1% critical value.
    for edge in range(4):
        x = np.sort(d[:, edge])
        cdf = (x + scale) / (2 * scale)
        i = np.arange(1, N_DRAWS + 1)
        ks = max(np.max(i / N_DRAWS - cdf), np.max(cdf - (i - 1) / N_DRAWS))
        assert ks < 1.63 / math.sqrt(N_DRAWS), (edge, ks)
    # The four edges move independently.
    corr = np.corrcoef(d.T)
    assert np.all(np.abs(corr[np.triu_indices(4, 1)]) < 4 / math.sqrt(N_DRAWS))


def test_a_normal_or_wrongly_scaled_noise_would_fail_the_checks() -> None:
    """The statistics above can tell the rule apart from near misses."""
    rng = np.random.default_rng(0)
    normal = rng.normal(0, 0.1 / math.sqrt(3), N_DRAWS)  # same variance, wrong shape
    x = np.sort(normal)
    cdf = np.clip((x + 0.1) / 0.2, 0, 1)
    i = np.arange(1, N_DRAWS + 1)
    assert max(np.max(i / N_DRAWS - cdf), np.max(cdf - (i - 1) / N_DRAWS)) > 1.63 / math.sqrt(N_DRAWS)


def test_noise_is_clipped_to_the_image() -> None:
    rng = np.random.default_rng(1)
    corner = [jitter_box((0.0, 0.0, 50.0, 50.0), 0.3, rng, (100, 80)) for _ in range(4000)]
    arr = np.array(corner)
    assert arr.min() >= 0.0 and arr[:, [0, 2]].max() <= 100.0 and arr[:, [1, 3]].max() <= 80.0
    # Half of the left-edge moves go left of x = 0 and are clipped onto it.
    assert abs(np.mean(arr[:, 0] == 0.0) - 0.5) < 0.05
    assert np.all(arr[:, 2] > arr[:, 0]) and np.all(arr[:, 3] > arr[:, 1])  # edges never cross below 0.5


def test_noise_is_seeded_and_validated() -> None:
    box = (10.0, 10.0, 60.0, 40.0)
    a = jitter_box(box, 0.2, np.random.default_rng(5), (100, 100))
    assert a == jitter_box(box, 0.2, np.random.default_rng(5), (100, 100))
    assert a != jitter_box(box, 0.2, np.random.default_rng(6), (100, 100))
    assert jitter_box(box, 0.0, np.random.default_rng(5), (100, 100)) == box
    for bad in (0.5, -0.1, 0.7):
        with pytest.raises(ValueError):
            jitter_box(box, bad, np.random.default_rng(0), (100, 100))
