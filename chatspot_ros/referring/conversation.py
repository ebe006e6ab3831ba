"""Conversation templates: the chat wrapper each model family was trained with.

The image placeholder always comes before the instruction, so every prompt made for one frame
starts with the same text up to and including the placeholder (``prefix``). The runtime encodes
the image and that prefix once per frame and reuses them (its KV cache) for every region prompt.
"""
from __future__ import annotations

from dataclasses import dataclass

from chatspot_ros.tokens import IMAGE_TOKEN

CONVERSATIONS: tuple[str, ...] = ("vicuna_v1", "chatml")

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
CHATML_SYSTEM = "You are a helpful assistant."


@dataclass(frozen=True)
class ConversationTemplate:
    """One user turn: ``before_image + image_placeholder + after_image + instruction + tail``."""

    name: str
    system: str
    before_image: str  # everything up to the placeholder, system message included
    image_placeholder: str  # the text the processor expands into image tokens
    after_image: str  # between the placeholder and the instruction
    tail: str  # after the instruction, up to where the assistant starts
    stop: tuple[str, ...] = ()  # strings that end the assistant's answer
    end_of_turn: str = ""  # the token that closes an assistant answer (always supervised in training)
    turn_separator: str = ""  # text between an answer's end_of_turn and the next user turn
    user: str = ""  # how a follow-up user turn starts

    @property
    def prefix(self) -> str:
        """The text every prompt of a frame shares: up to and including the image placeholder."""
        return self.before_image + self.image_placeholder

    def render(self, instruction_text: str) -> str:
        """The full prompt for one instruction."""
        if not instruction_text.strip():
            raise ValueError("instruction text is empty")
        if self.image_placeholder in instruction_text:
            raise ValueError(
                f"instruction text contains the image placeholder {self.image_placeholder!r}; "
                "the template places the image itself"
            )
        return self.prefix + self.after_image + instruction_text + self.tail

    def next_turn(self, instruction_text: str) -> str:
        """A follow-up user turn after an answer (multi-turn training data): no image, same tail."""
        if not instruction_text.strip():
            raise ValueError("instruction text is empty")
        return self.turn_separator + self.user + instruction_text + self.tail

    def split(self, prompt: str) -> tuple[str, str]:
        """(shared prefix, per-region rest) of a prompt rendered by this template."""
        if not prompt.startswith(self.prefix):
            raise ValueError(f"prompt does not start with the {self.name} prefix")
        return self.prefix, prompt[len(self.prefix):]


_TEMPLATES = {
    # LLaVA v1 / ChatSpot (Vicuna): "<system> USER: <image>\n<instruction> ASSISTANT:"
    "vicuna_v1": ConversationTemplate(
        name="vicuna_v1",
        system=VICUNA_SYSTEM,
        before_image=VICUNA_SYSTEM + " USER: ",
        image_placeholder=IMAGE_TOKEN,
        after_image="\n",
        tail=" ASSISTANT:",
        stop=("</s>", "USER:"),
        end_of_turn="</s>",
        user="USER: ",
    ),
    # Qwen2-VL / Qwen2.5-VL chat template with one image before the text.
    "chatml": ConversationTemplate(
        name="chatml",
        system=CHATML_SYSTEM,
        before_image=f"<|im_start|>system\n{CHATML_SYSTEM}<|im_end|>\n<|im_start|>user\n",
        image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
        after_image="",
        tail="<|im_end|>\n<|im_start|>assistant\n",
        stop=("<|im_end|>", "<|endoftext|>"),
        end_of_turn="<|im_end|>",
        turn_separator="\n",
        user="<|im_start|>user\n",
    ),
}


def get_conversation(name: str) -> ConversationTemplate:
    """The conversation template called name; ValueError on unknown names."""
    try:
        return _TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown conversation template {name!r}; known: {', '.join(CONVERSATIONS)}") from None
