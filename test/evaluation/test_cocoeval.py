"""AP through pycocotools: a hand-made GT/result pair whose AP is known, and equality with COCOeval itself."""
from __future__ import annotations

import pytest
from eval_helpers import cocoeval_from_files

from chatspot_ros.evaluation.cocoeval import coco_box_ap

# Image 1: two boxes of category 1 (one small, one medium); image 2: one large box of category 2.
GT = {
    "images": [{"id": 1, "width": 100, "height": 100, "file_name": "1.png"},
               {"id": 2, "width": 100, "height": 100, "file_name": "2.png"}],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400.0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 40, 40], "area": 1600.0, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 100, 100], "area": 10000.0, "iscrowd": 0},
    ],
}
RESULTS = [
    {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},  # finds the small box
    {"image_id": 1, "category_id": 1, "bbox": [60, 0, 10, 10], "score": 0.8},  # a false positive
    {"image_id": 2, "category_id": 2, "bbox": [0, 0, 100, 100], "score": 0.7},  # finds the large box
]
# Category 1: precision 1 up to recall 0.5, then nothing: 51 of COCO's 101 recall points -> 51/101.
# Category 2: 1.0. Small: only category 1's small box, found first -> 1.0. Medium: category 1's medium
# box is never found -> 0.0. Large: category 2 -> 1.0. Boxes are exact, so AP50 = AP75 = AP.
AP_A = 51 / 101
KNOWN = {"ap": (AP_A + 1) / 2, "ap50": (AP_A + 1) / 2, "ap75": (AP_A + 1) / 2, "aps": 1.0, "apm": 0.0, "apl": 1.0}


def test_known_ap() -> None:
    got = coco_box_ap(GT, RESULTS)
    for key, value in KNOWN.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_equals_cocoeval_on_files(tmp_path) -> None:
    stats = cocoeval_from_files(tmp_path, GT, RESULTS)
    got = coco_box_ap(GT, RESULTS)
    assert [got[k] for k in ("ap", "ap50", "ap75", "aps", "apm", "apl")] == pytest.approx(stats, abs=1e-12)


def test_image_subset_and_missing_area_ranges(tmp_path) -> None:
    # Only image 2: category 1 has no GT there (excluded), its false positive is on image 1 (not evaluated).
    got = coco_box_ap(GT, RESULTS, image_ids=[2])
    assert got["ap"] == pytest.approx(1.0) and got["apl"] == pytest.approx(1.0)
    assert got["aps"] is None and got["apm"] is None
    stats = cocoeval_from_files(tmp_path, GT, RESULTS, image_ids=[2])
    assert stats[3] == -1 and stats[4] == -1


def test_a_wrong_category_costs_ap() -> None:
    wrong = [dict(r) for r in RESULTS]
    wrong[2]["category_id"] = 1  # the large box called "a": category 2 is missed, category 1 gets a FP
    assert coco_box_ap(GT, wrong)["ap"] < KNOWN["ap"] - 0.2


@pytest.mark.parametrize("image_ids", [None, [1], [2]])
def test_no_results_equal_cocoeval_with_results_that_match_nothing(tmp_path, image_ids) -> None:
    # pycocotools cannot load an empty list; one far-away, zero-score box matches nothing and
    # gives COCOeval's answer for "no correct result", which the empty case must equal.
    dummy = [{"image_id": 1, "category_id": 2, "bbox": [99, 99, 0.5, 0.5], "score": 0.0}]
    stats = cocoeval_from_files(tmp_path, GT, dummy, image_ids)
    got = coco_box_ap(GT, [], image_ids)
    expected = [None if s < 0 else s for s in stats]
    assert [got[k] for k in ("ap", "ap50", "ap75", "aps", "apm", "apl")] == expected
