"""The model card's "Questions and tasks it knows" against config/instructions.yaml and the shipped model.

Each row's instruction must be the template the installed config holds, and the shipped model must
answer each row's task correctly on world frames it never trained on (seed 7), at the share the card
states; the "does not know" claim ("What is this?" answers "This") is checked the same way.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CARD = REPO / "chatspot_ros" / "models" / "tabletop" / "README.md"
SEED, FRAMES = 7, 4


def card_rows() -> list[dict[str, str]]:
    text = CARD.read_text(encoding="utf-8")
    section = text.split("## Questions and tasks it knows", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].startswith("`") and ":" in cells[1]:
            key, instruction = cells[1].split(":", 1)
            rows.append({"task": cells[0], "key": key.strip("` "), "instruction": instruction.strip(),
                         "correct": cells[4]})
    return rows


def test_card_instructions_are_the_config_templates() -> None:
    templates = yaml.safe_load((REPO / "config" / "instructions.yaml").read_text())
    rows = card_rows()
    assert [r["key"] for r in rows] == ["what_in_region", "describe_region", "find_region", "suggest_actions"]
    for row in rows:
        shown = row["instruction"].rstrip(".").replace(" ...", "")
        assert templates[row["key"]].startswith(shown.split(" ...")[0]), (row["key"], templates[row["key"]])


@pytest.fixture(scope="module")
def answers() -> dict[str, list[bool]]:
    """Every card task about every object of seed 7, frames 0-3: right or wrong per object."""
    from chatspot_ros.models import shipped_model
    from chatspot_ros.pipeline import ChatSpot
    from chatspot_ros.referring import Region, parse_regions, parse_steps
    from chatspot_ros.runtime import GenerationConfig, RuntimeConfig
    from chatspot_ros.world import render, sample_scene, sample_task
    from chatspot_ros.world.language import referring_expression

    chatspot = ChatSpot.from_config(RuntimeConfig(model_path=str(shipped_model()), device="cpu", dtype="float32"))
    b = chatspot.builder
    results: dict[str, list[bool]] = {k: [] for k in ("what_in_region", "describe_region", "find_region",
                                                       "suggest_actions", "what_is_this")}
    try:
        for index in range(FRAMES):
            scene = sample_scene(SEED, index)
            frame = render(scene)
            size = (frame.shape[1], frame.shape[0])
            rng = np.random.default_rng(index)
            for k, obj in enumerate(scene.objects):
                box = Region.box(*obj.box)
                task = sample_task(scene, k, rng)
                short = [b.what_is_in_region(box, size), b.describe_region(box, size),
                         b.find_region(referring_expression(obj, scene), size), b.ask("What is this?", [box], size)]
                texts = [a.text.lower() for a in chatspot.answer(frame, (SEED, index), short,
                                                                 GenerationConfig(max_new_tokens=24))]
                plan = chatspot.answer(frame, (SEED, index), [b.suggest_actions(task.text, box, size)],
                                       GenerationConfig(max_new_tokens=96))[0].text.lower()
                texts = [texts[0], texts[1], texts[2], plan, texts[3]]
                results["what_in_region"].append(obj.category in texts[0])
                results["describe_region"].append(obj.category in texts[1])
                found = parse_regions(texts[2], chatspot.builder.dialect, chatspot.builder.geometry, size)
                results["find_region"].append(bool(found) and _iou(found[0], obj.box) >= 0.5)
                results["suggest_actions"].append(any(obj.category in s for s in parse_steps(texts[3])))
                results["what_is_this"].append(texts[4].strip(" .") == "this")
    finally:
        chatspot.close()
    print({k: f"{sum(v)} of {len(v)}" for k, v in results.items()})
    return results


def _iou(region, box) -> float:  # noqa: ANN001
    (x0, y0), (x1, y1) = region.points[0], region.points[-1]
    ix = max(0.0, min(x1, box[2]) - max(x0, box[0]))
    iy = max(0.0, min(y1, box[3]) - max(y0, box[1]))
    inter = ix * iy
    union = (x1 - x0) * (y1 - y0) + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return inter / union if union > 0 else 0.0


def test_the_model_answers_what_the_card_says(answers: dict[str, list[bool]]) -> None:
    for row in card_rows():
        got = answers[row["key"]]
        stated = re.search(r"(\d+) of (\d+)", row["correct"])
        assert stated, row
        assert (sum(got), len(got)) == (int(stated.group(1)), int(stated.group(2))), (row["key"], sum(got), len(got))
        assert sum(got) / len(got) >= 0.7, row


def test_what_is_this_is_not_a_question_it_knows(answers: dict[str, list[bool]]) -> None:
    got = answers["what_is_this"]
    assert sum(got) / len(got) >= 0.9, f"'What is this?' answered 'This' for {sum(got)} of {len(got)} objects"
    assert "What is this?" in CARD.read_text() and 'it answers "This"' in CARD.read_text()
