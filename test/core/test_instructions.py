"""Instruction templates, the builder's checks, conversation templates, and import purity."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from chatspot_ros.referring import (
    CONVERSATIONS,
    ImageGeometry,
    InstructionBuilder,
    InstructionTemplates,
    Region,
    get_conversation,
    load_instruction_templates,
)

REPO = Path(__file__).resolve().parents[2]
YAML_PATH = REPO / "config" / "instructions.yaml"
SIZE = (640, 480)
BOX = Region.box(64, 120, 320, 360)  # -> <box>[0.100,0.312,0.500,0.688]</box> under pad (test_goldens.py)
BOX_TEXT = "<box>[0.100,0.312,0.500,0.688]</box>"
POINT = Region.point(160, 304)  # -> <box>[0.250,0.600]</box>
POINT_TEXT = "<box>[0.250,0.600]</box>"


@pytest.fixture()
def builder() -> InstructionBuilder:
    return InstructionBuilder("chatspot", ImageGeometry.pad(336))


# -- templates ------------------------------------------------------------------------------------


def test_code_defaults_equal_the_yaml() -> None:
    from_file = load_instruction_templates(YAML_PATH)
    defaults = InstructionTemplates()
    for f in fields(InstructionTemplates):
        assert getattr(from_file, f.name) == getattr(defaults, f.name), f.name


def test_yaml_keys_left_out_keep_defaults_and_unknown_keys_fail(tmp_path: Path) -> None:
    partial = tmp_path / "partial.yaml"
    partial.write_text('describe_image: "Describe everything."\nstyles: {short: "Be brief."}\n')
    templates = load_instruction_templates(partial)
    assert templates.describe_image == "Describe everything."
    assert templates.region_question == InstructionTemplates().region_question
    assert templates.styles == {"short": "Be brief."}
    typo = tmp_path / "typo.yaml"
    typo.write_text('describe_imge: "x"\n')
    with pytest.raises(ValueError, match="unknown instruction template keys"):
        load_instruction_templates(typo)
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        load_instruction_templates(not_a_mapping)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"region_question": "{question}"}, "must use"),  # the region would be lost
        ({"describe_region": "Describe {region} {color}."}, "must use"),
        ({"what_in_region": "What is {region!r}?"}, "no format spec"),
        ({"describe_image": "Describe {"}, "not a valid format string"),
        ({"styles": {"short": ""}}, "styles"),
    ],
)
def test_bad_templates_are_rejected(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InstructionTemplates(**kwargs)


# -- instructions (paper, Sec. 3.2) ---------------------------------------------------------------


def test_image_level_instructions(builder: InstructionBuilder) -> None:
    described = builder.describe_image(SIZE)
    assert described.text == "Describe the whole image in detail."
    assert described.regions == () and described.template == "describe_image"
    assert builder.ask("  How many people are there? ", [], SIZE).text == "How many people are there?"


def test_region_level_instructions(builder: InstructionBuilder) -> None:
    assert builder.ask("What is the object doing in the region?", [BOX], SIZE).text == (
        f"What is the object doing in the region? {BOX_TEXT}"
    )
    assert builder.describe_region(BOX, SIZE).text == f"Describe this region in detail. {BOX_TEXT}"
    assert builder.what_is_in_region(POINT, SIZE).text == f"What can you see in this region? {POINT_TEXT}"
    assert builder.read_text(BOX, SIZE).text == f"What text can you see in this region? {BOX_TEXT}"


def test_multi_region_question_numbers_the_regions(builder: InstructionBuilder) -> None:
    instruction = builder.ask("What is the relation between the regions?", [BOX, POINT], SIZE)
    assert instruction.text == (
        f"What is the relation between the regions? region 1 {BOX_TEXT}, region 2 {POINT_TEXT}"
    )
    assert instruction.regions == (BOX, POINT)


def test_question_placeholders(builder: InstructionBuilder) -> None:
    assert builder.ask("Is <region2> left of <region1>?", [BOX, POINT], SIZE).text == (
        f"Is {POINT_TEXT} left of {BOX_TEXT}?"
    )
    assert builder.ask("Compare <region>.", [BOX, POINT], SIZE).text == (
        f"Compare region 1 {BOX_TEXT}, region 2 {POINT_TEXT}."
    )
    with pytest.raises(ValueError, match="<region3>"):
        builder.ask("Is <region3> here?", [BOX, POINT], SIZE)
    with pytest.raises(ValueError, match="leaves out region"):
        builder.ask("Is <region1> red?", [BOX, POINT], SIZE)
    with pytest.raises(ValueError, match="no region was given"):
        builder.ask("What is <region>?", [], SIZE)


def test_answer_styles(builder: InstructionBuilder) -> None:
    assert builder.ask("What is it?", [BOX], SIZE, style="short").text == f"What is it? {BOX_TEXT} Answer in short."
    assert builder.describe_image(SIZE, style="detail").text == "Describe the whole image in detail. Answer in detail."
    with pytest.raises(ValueError, match="unknown answer style"):
        builder.ask("What is it?", [BOX], SIZE, style="haiku")


def test_action_suggestion(builder: InstructionBuilder) -> None:
    instruction = builder.suggest_actions("take a Coke from the fridge", BOX, SIZE)
    assert instruction.text == (
        f"Task: take a Coke from the fridge. The target of the task is in the region {BOX_TEXT}. "
        "List the steps to do the task as a numbered list, one step per line."
    )
    assert instruction.template == "suggest_actions"


def test_clipping_is_reported_in_notes(builder: InstructionBuilder) -> None:
    instruction = builder.ask("What is it?", [Region.box(-10, 0, 100, 100, id="car_3")], SIZE)
    assert instruction.notes == ("region 'car_3' clipped to the 640x480 image",)
    assert instruction.regions[0].points == ((0.0, 0.0), (100.0, 100.0))


@pytest.mark.parametrize("question", ["", "   \n\t "])
def test_empty_questions_are_rejected(builder: InstructionBuilder, question: str) -> None:
    with pytest.raises(ValueError, match="question is empty"):
        builder.ask(question, [BOX], SIZE)
    with pytest.raises(ValueError, match="task is empty"):
        builder.suggest_actions(question, BOX, SIZE)


def test_limits_are_builder_parameters() -> None:
    small = InstructionBuilder("chatspot", ImageGeometry.pad(336), max_question_chars=10, max_regions=2)
    small.ask("x" * 10, [BOX, POINT], SIZE)
    with pytest.raises(ValueError, match="at most 10"):
        small.ask("x" * 11, [BOX], SIZE)
    with pytest.raises(ValueError, match="at most 2 per instruction"):
        small.ask("Where?", [BOX, POINT, BOX], SIZE)
    default = InstructionBuilder("chatspot", ImageGeometry.pad(336))
    assert (default.max_question_chars, default.max_regions) == (4096, 32)
    with pytest.raises(ValueError, match="at most 4096"):
        default.ask("x" * 4097, [], SIZE)
    with pytest.raises(ValueError, match="positive"):
        InstructionBuilder("chatspot", ImageGeometry.pad(336), max_regions=0)


def test_bad_inputs_are_value_errors(builder: InstructionBuilder) -> None:
    with pytest.raises(ValueError, match="image size"):
        builder.ask("What?", [BOX], (0, 480))
    with pytest.raises(ValueError, match="expected a Region"):
        builder.ask("What?", [(1, 2)], SIZE)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="more than 0.5"):
        builder.ask("What?", [Region.box(0, 0, 2000, 10)], SIZE)


# -- conversation templates -------------------------------------------------------------------------


def test_vicuna_v1_prompt() -> None:
    conv = get_conversation("vicuna_v1")
    assert conv.render("Describe the whole image in detail.") == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the human's questions. USER: <image>\n"
        "Describe the whole image in detail. ASSISTANT:"
    )
    assert conv.image_placeholder == "<image>"


def test_chatml_prompt() -> None:
    conv = get_conversation("chatml")
    assert conv.render("What is it?") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert conv.image_placeholder == "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_all_prompts_of_a_frame_share_the_prefix_through_the_image(name: str, builder: InstructionBuilder) -> None:
    conv = get_conversation(name)
    instructions = [
        builder.describe_image(SIZE).text,
        builder.ask("What is it?", [BOX], SIZE).text,
        builder.ask("Compare <region>.", [BOX, POINT], SIZE).text,
    ]
    for instruction in instructions:
        prompt = conv.render(instruction)
        prefix, rest = conv.split(prompt)
        assert prefix == conv.prefix and prefix.endswith(conv.image_placeholder)
        assert prefix + rest == prompt
        assert instruction in rest  # all region text comes after the image placeholder
    with pytest.raises(ValueError, match="prefix"):
        conv.split("USER: hello")
    with pytest.raises(ValueError, match="image placeholder"):
        conv.render(f"Look at {conv.image_placeholder} again")
    with pytest.raises(ValueError, match="empty"):
        conv.render(" ")


def test_unknown_conversation() -> None:
    with pytest.raises(ValueError, match="unknown conversation template"):
        get_conversation("llama3")


def test_referring_core_imports_no_ros_or_torch() -> None:
    code = (
        "import sys, chatspot_ros.referring\n"
        "bad = [m for m in ('torch', 'rclpy', 'transformers', 'cv2') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
