"""The category matchers: exact (synonyms, longest match, no match) and clip:DIR on a tiny CLIP."""
from __future__ import annotations

import json

import pytest

from chatspot_ros.evaluation.matching import (
    COCO_SYNONYMS,
    Category,
    ClipMatcher,
    ExactMatcher,
    load_synonyms,
    make_matcher,
    with_synonyms,
)

COCO_80 = (
    "person bicycle car motorcycle airplane bus train truck boat|traffic light|fire hydrant|stop sign|parking meter|"
    "bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee "
    "skis snowboard|sports ball|kite|baseball bat|baseball glove|skateboard surfboard|tennis racket|bottle|"
    "wine glass|cup fork knife spoon bowl banana apple sandwich orange broccoli carrot|hot dog|pizza donut cake "
    "chair couch|potted plant|bed|dining table|toilet tv laptop mouse remote keyboard|cell phone|microwave oven "
    "toaster sink refrigerator book clock vase scissors|teddy bear|hair drier|toothbrush"
)


def _coco_names() -> list[str]:
    names = []
    for chunk in COCO_80.split("|"):
        chunk = chunk.strip()
        if " " in chunk and chunk in ("traffic light", "fire hydrant", "stop sign", "parking meter", "sports ball",
                                      "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog",
                                      "potted plant", "dining table", "cell phone", "teddy bear", "hair drier"):
            names.append(chunk)
        else:
            names.extend(chunk.split())
    return names


@pytest.fixture(scope="module")
def coco_categories() -> list[Category]:
    names = _coco_names()
    assert len(names) == 80
    return with_synonyms([Category(i + 1, n) for i, n in enumerate(names)], COCO_SYNONYMS, strict=False)


@pytest.fixture(scope="module")
def world_categories() -> list[Category]:
    from chatspot_ros.world.scene import CATEGORIES

    return [Category(i + 1, n) for i, n in enumerate(CATEGORIES)]


def _name(categories, cid):
    return None if cid is None else next(c.name for c in categories if c.id == cid)


@pytest.mark.parametrize("answer, expected", [
    ("A red cube.", "red cube"),
    ("In this region there is a Red Cube", "red cube"),
    ("a small red cube next to the blue ball", "red cube"),  # equal length: the earliest wins
    ("the blue ball, left of a red cube", "blue ball"),
    ("two red cubes", "red cube"),  # plural of the last word
    ("a red", None),
    ("a cube", None),  # the shape alone is not the category
    ("a red ball-shaped thing", "red ball"),
    ("nothing here", None),
    ("", None),
])
def test_exact_on_world_categories(world_categories, answer, expected) -> None:
    matcher = ExactMatcher(world_categories)
    assert _name(world_categories, matcher.match_one(answer)) == expected


@pytest.mark.parametrize("answer, expected", [
    ("A man riding a horse", "person"),  # synonym; equal length, earliest
    ("a horse with a man on it", "horse"),
    ("a hot dog on a plate", "hot dog"),  # longest match: "hot dog" beats "dog"
    ("a dog eating a hot dog", "hot dog"),  # more words beats earlier
    ("a baseball bat", "baseball bat"),
    ("some people walking", "person"),
    ("a sofa", "couch"),
    ("two dogs", "dog"),
    ("three buses", "bus"),
    ("a television set", "tv"),
    ("a cellphone", "cell phone"),
    ("a wine glass", "wine glass"),  # the name beats its synonym "glass" (longer)
    ("a glass", "wine glass"),
    ("a doughnut", "donut"),
    ("purple clouds", None),
    ("a catalog", None),  # "cat" only as a whole word
])
def test_exact_on_coco_with_synonyms(coco_categories, answer, expected) -> None:
    matcher = ExactMatcher(coco_categories)
    assert _name(coco_categories, matcher.match_one(answer)) == expected


def test_coco_synonyms_name_real_categories_without_clashes(coco_categories) -> None:
    assert set(COCO_SYNONYMS) <= set(_coco_names())
    ExactMatcher(coco_categories)  # raises when a synonym names two categories


def test_exact_rejects_ambiguous_and_empty_names() -> None:
    with pytest.raises(ValueError, match="names both"):
        ExactMatcher([Category(1, "cup"), Category(2, "mug", ("cup",))])
    with pytest.raises(ValueError, match="normalizes to nothing"):
        ExactMatcher([Category(1, "the")])
    with pytest.raises(ValueError):
        ExactMatcher([])


def test_synonym_files(tmp_path) -> None:
    path = tmp_path / "syn.json"
    path.write_text(json.dumps({"red cube": ["red block"]}))
    cats = with_synonyms([Category(1, "red cube"), Category(2, "blue ball")], load_synonyms(path))
    assert ExactMatcher(cats).match(["a red block", "a blue ball", "a block"]) == [1, 2, None]
    with pytest.raises(ValueError, match="does not have"):
        with_synonyms([Category(1, "red cube")], {"green cone": ["cone"]})
    path.write_text(json.dumps({"red cube": "block"}))
    with pytest.raises(ValueError, match="lists of strings"):
        load_synonyms(path)


def test_clip_matcher_embeds_and_picks_the_most_similar(clip_dir, world_categories) -> None:
    matcher = make_matcher(f"clip:{clip_dir}", world_categories)
    assert isinstance(matcher, ClipMatcher) and matcher.name == f"clip:{clip_dir}"
    names = [c.name for c in world_categories]
    # An answer equal to a category name embeds exactly like it: cosine 1, the maximum.
    assert matcher.match(names) == [c.id for c in world_categories]
    # Any non-empty answer gets the category of highest cosine similarity; empty ones get none.
    answers = ["it is a shiny green ball on the table", "   ", "xyz"]
    got = matcher.match(answers)
    assert got[1] is None and got[0] is not None and got[2] is not None
    sims = matcher.embed([answers[0]]) @ matcher.embed(names).T
    assert got[0] == world_categories[int(sims.argmax())].id
    # Batched and single embeddings agree (right padding).
    single = matcher.embed([names[3]])
    batched = matcher.embed(names)[3:4]
    assert float((single - batched).abs().max()) < 1e-5


def test_make_matcher_errors(tmp_path, world_categories) -> None:
    with pytest.raises(ValueError, match="unknown matcher"):
        make_matcher("fuzzy", world_categories)
    with pytest.raises(FileNotFoundError, match="CLIPModel"):
        make_matcher(f"clip:{tmp_path}", world_categories)
