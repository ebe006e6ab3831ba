"""LLaVA's masking with its failure modes made impossible (issue: precise referring instruction tuning)."""
from __future__ import annotations

import pytest

from chatspot_ros.referring import Region, RegionKind
from chatspot_ros.training.conversations import Sample, Turn, render_prompt_and_answers
from chatspot_ros.training.dataset import ConversationEncoder
from chatspot_ros.training.tokenization import IGNORE_INDEX, Encoded, Rejected, encode_pieces

BOX = Region(RegionKind.BOX, ((30.0, 40.0), (90.0, 100.0)))


@pytest.fixture(scope="module")
def setup():
    """One smoke setup for the module: these tests only read its tokenizer, builder and conversation."""
    from chatspot_ros.training.model_setup import from_preset

    return from_preset("smoke", seed=0)


def _sample(*turns: Turn) -> Sample:
    return Sample("s", "img.png", (320, 240), tuple(turns))


def _encoder(setup, max_length=512) -> ConversationEncoder:
    return ConversationEncoder(setup.tokenizer, setup.builder, setup.conversation, setup.num_image_tokens, max_length)


def test_only_answers_and_their_end_of_turn_are_supervised(setup) -> None:
    sample = _sample(Turn("what_in_region", "A red cube.", (BOX,)), Turn("what_in_region", "A blue ball.", (BOX,)))
    enc = _encoder(setup)(sample)
    assert isinstance(enc, Encoded)
    tok = setup.tokenizer
    supervised = [i for i, label in zip(enc.input_ids, enc.labels) if label != IGNORE_INDEX]
    assert tok.decode(supervised) == " A red cube.</s> A blue ball.</s>"
    eos = tok.convert_tokens_to_ids("</s>")
    assert enc.labels[-1] == eos and supervised.count(eos) == 2
    # every label equals its input id where set: no shift is baked in
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(enc.input_ids, enc.labels))
    # the prompt part is exactly what the runtime tokenizes for the one-turn question
    prompt = render_prompt_and_answers(setup.builder, setup.conversation, sample)[0][0]
    alone = tok(prompt.replace("<image>", "<image>" * setup.num_image_tokens))["input_ids"]
    assert enc.input_ids[: len(alone)] == alone
    assert all(label == IGNORE_INDEX for label in enc.labels[: len(alone)])


def test_image_tokens_count_towards_max_length_and_truncation_is_reported(setup) -> None:
    two = _sample(Turn("what_in_region", "A red cube.", (BOX,)), Turn("describe_region", "This is a long answer " * 5,
                                                                       (BOX,)))
    full = _encoder(setup)(two)
    assert isinstance(full, Encoded) and not full.truncated
    first_turn_end = full.labels.index(setup.tokenizer.convert_tokens_to_ids("</s>")) + 1
    cut = _encoder(setup, max_length=first_turn_end + 3)(two)
    assert isinstance(cut, Encoded) and cut.truncated and len(cut.input_ids) == first_turn_end + 3
    too_short = _encoder(setup, max_length=setup.num_image_tokens + 5)(two)
    assert isinstance(too_short, Rejected) and too_short.reason == "too_long"


def test_a_mismatching_tokenization_is_rejected_not_trained_on() -> None:
    class MergingTokenizer:
        """Tokenizes the whole text as one token per character, except 'A:B' merges across the boundary."""

        def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
            ids, offsets, i = [], [], 0
            while i < len(text):
                j = i + 3 if text.startswith(":xy", i) else i + 1
                ids.append(hash(text[i:j]) % 1000)
                offsets.append((i, j))
                i = j
            return {"input_ids": ids, "offset_mapping": offsets} if return_offsets_mapping else {"input_ids": ids}

        def convert_tokens_to_ids(self, token):
            return hash(token) % 1000

    result = encode_pieces(MergingTokenizer(), [("<image> q:", "xy")], "", image_token="<image>", num_image_tokens=2,
                           max_length=100)
    assert isinstance(result, Rejected) and result.reason == "boundary_straddle"


def test_a_sample_without_supervised_tokens_is_rejected(setup) -> None:
    result = encode_pieces(setup.tokenizer, [], "</s>", image_token="<image>", num_image_tokens=4, max_length=64)
    assert isinstance(result, Rejected) and result.reason == "no_supervised_tokens"


def test_bad_regions_are_rejected_with_a_reason(setup) -> None:
    far = Region(RegionKind.BOX, ((5000.0, 5000.0), (6000.0, 6000.0)))
    result = _encoder(setup)(_sample(Turn("what_in_region", "A red cube.", (far,))))
    assert isinstance(result, Rejected) and result.reason == "bad_region"


def test_rec_answers_are_written_in_the_checkpoints_dialect(setup) -> None:
    turn = Turn("find_region", "{region}", text="the red cube", answer_regions=(BOX,))
    (context, answer), = render_prompt_and_answers(setup.builder, setup.conversation, _sample(turn))
    assert "Where is the red cube" in context
    assert answer == " " + setup.builder.region_text(BOX, (320, 240))
    assert answer.startswith(" <box>[") and answer.endswith("]</box>")


def test_turns_round_trip_through_json() -> None:
    turns = (Turn("what_in_region", "A red cube.", (BOX,), style="short"),
             Turn("find_region", "{region}", text="the red cube", answer_regions=(BOX,)),
             Turn("suggest_actions", "1. Lift it.", (Region(RegionKind.POINT, ((3.0, 4.0),)),),
                  text="pick up the cube"))
    sample = Sample("x", "a.png", (320, 240), turns, "world", {"k": 1})
    again = Sample.from_json(sample.to_json())
    assert again == sample
    with pytest.raises(ValueError, match="placeholders"):
        Turn("find_region", "{region}", text="x")
    with pytest.raises(ValueError, match="needs a region"):
        Turn("what_in_region", "a")
