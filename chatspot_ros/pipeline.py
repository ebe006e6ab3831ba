"""ChatSpot = referring instructions + the model runtime: frame + instructions -> one answer each.

Used by the ``chatspot-ask`` CLI and the ROS node. Pure Python (no ROS): the node converts its
messages into a frame and ReferringInstructions and calls :meth:`ChatSpot.answer`.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from chatspot_ros.runtime import ChatSpotRuntime, Generation, GenerationConfig, RuntimeConfig

if TYPE_CHECKING:
    from chatspot_ros.referring import InstructionBuilder, InstructionTemplates, ReferringInstruction


@dataclass(frozen=True)
class RegionAnswer:
    """The answer to one instruction."""

    instruction: ReferringInstruction
    prompt: str  # the full prompt the model saw (conversation template applied)
    text: str  # the answer, stripped of surrounding whitespace
    generation: Generation
    vision_ms: float  # 0.0 when the frame's features came from the cache


class ChatSpot:
    """Answers referring instructions about frames, encoding each frame once."""

    def __init__(self, runtime: ChatSpotRuntime, builder: InstructionBuilder) -> None:
        self.runtime = runtime
        self.builder = builder

    @classmethod
    def from_config(
        cls,
        runtime_config: RuntimeConfig,
        *,
        dialect: str | None = None,
        precision: int | None = None,
        templates: InstructionTemplates | None = None,
    ) -> ChatSpot:
        """Load the runtime; the dialect defaults to the checkpoint's (``runtime.default_dialect``)."""
        from chatspot_ros.referring import InstructionBuilder, get_dialect

        runtime = ChatSpotRuntime.load(runtime_config)
        try:
            name = dialect if dialect else runtime.default_dialect
            builder = InstructionBuilder(get_dialect(name, precision=precision), runtime.geometry, templates)
        except Exception:
            runtime.close()
            raise
        return cls(runtime, builder)

    def prompt_for(self, instruction: ReferringInstruction) -> str:
        return self.runtime.conversation.render(instruction.text)

    def answer(
        self,
        frame: np.ndarray,
        frame_key: Hashable | None,
        requests: Sequence[ReferringInstruction],
        gen: GenerationConfig,
        on_token: Callable[[int, str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[RegionAnswer]:
        """One RegionAnswer per request, in order. The frame is encoded once (cached under frame_key).

        The conversation template's stop strings (e.g. "USER:") are added to ``gen.stop``.
        """
        if not requests:
            return []
        cached = frame_key is not None and frame_key in self.runtime.cached_keys()
        features = self.runtime.encode(frame, key=frame_key)
        vision_ms = 0.0 if cached else features.vision_ms
        prompts = [self.prompt_for(r) for r in requests]
        stops = tuple(dict.fromkeys(tuple(gen.stop) + tuple(self.runtime.conversation.stop)))
        generations = self.runtime.generate(features, prompts, replace(gen, stop=stops), on_token, should_stop)
        return [
            RegionAnswer(instruction=r, prompt=p, text=g.text.strip(), generation=g, vision_ms=vision_ms)
            for r, p, g in zip(requests, prompts, generations)
        ]

    def close(self) -> None:
        self.runtime.close()
