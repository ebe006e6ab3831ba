"""Conversation -> (input_ids, labels): LLaVA's masking, with its failure modes made impossible.

Only assistant answers are supervised, each through its end-of-turn token so the model learns to
stop. A sample is rejected (and counted, with the reason) instead of being silently trained on
nothing when: no token is supervised; the one-turn prompt tokenizes differently inside the
conversation than the runtime tokenizes it alone (LLaVA's "tokenization mismatch"); a token
straddles a prompt/answer boundary; or ``max_length`` (image tokens included) cuts every answer.
Truncation that keeps some answers is reported on the sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where not supervised
    supervised: int  # tokens with a label
    truncated: bool  # max_length cut the sequence (some answers survive)


@dataclass(frozen=True)
class Rejected:
    reason: str  # "no_supervised_tokens" | "tokenization_mismatch" | "boundary_straddle" | "too_long"
    detail: str


def expand_image(text: str, image_token: str, num_image_tokens: int) -> str:
    count = text.count(image_token)
    if count != 1:
        raise ValueError(f"a training conversation must hold exactly one {image_token!r}, this one holds {count}")
    return text.replace(image_token, image_token * num_image_tokens)


def encode_pieces(tokenizer: Any, pieces: Sequence[tuple[str, str]], end_of_turn: str, *, image_token: str,
                  num_image_tokens: int, max_length: int) -> Encoded | Rejected:
    """Tokenize context/answer pieces as one text; label the answers (and each end-of-turn token)."""
    if not pieces:
        return Rejected("no_supervised_tokens", "the sample has no turns")
    expand = image_token * num_image_tokens
    spans = []  # (start, end) character spans of supervised text in the expanded full text
    text = ""
    first_context_end = 0
    for k, (context, answer) in enumerate(pieces):
        context = context.replace(image_token, expand) if k == 0 else context
        text += context
        if k == 0:
            first_context_end = len(text)
        start = len(text)
        text += answer + end_of_turn
        spans.append((start, len(text)))
    if text.count(image_token) != num_image_tokens:
        raise ValueError(f"a training conversation must hold exactly one {image_token!r} before expansion")
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
    labels = [IGNORE_INDEX] * len(ids)
    span_index = 0
    for i, (s, e) in enumerate(offsets):
        if e <= s:
            continue  # BOS and other zero-width tokens
        while span_index < len(spans) and s >= spans[span_index][1]:
            span_index += 1
        if span_index >= len(spans):
            break
        a, b = spans[span_index]
        inside = a <= s and e <= b
        outside = e <= a or s >= b
        if not (inside or outside):
            return Rejected("boundary_straddle", f"token {text[s:e]!r} crosses a prompt/answer boundary")
        if inside:
            labels[i] = ids[i]
    # the one-turn prompt must tokenize inside the conversation exactly as the runtime tokenizes it
    alone = list(tokenizer(text[:first_context_end], add_special_tokens=True)["input_ids"])
    if ids[: len(alone)] != alone:
        return Rejected("tokenization_mismatch",
                        f"prompt tokens differ inside the conversation: {text[:first_context_end][-60:]!r}")
    truncated = False
    if len(ids) > max_length:
        if len(alone) >= max_length or all(l == IGNORE_INDEX for l in labels[:max_length]):
            return Rejected("too_long", f"{len(ids)} tokens (image included) > max_length {max_length}")
        ids, labels, truncated = ids[:max_length], labels[:max_length], True
    supervised = sum(1 for l in labels if l != IGNORE_INDEX)
    if supervised == 0:
        return Rejected("no_supervised_tokens", "no answer token survived tokenization")
    eot = tokenizer.convert_tokens_to_ids(end_of_turn) if end_of_turn else None
    if eot is not None and not truncated and labels[-1] != eot:
        return Rejected("no_supervised_tokens", f"the end-of-turn token {end_of_turn!r} is not supervised")
    return Encoded(ids, labels, supervised, truncated)
