"""ChatSpot = referring instructions + the model runtime: frame + instructions -> one answer each.

Used by the ``chatspot-ask`` CLI, the evaluation code and the ROS node. Pure Python (no ROS): the
node converts its messages into a frame and ReferringInstructions and calls :meth:`ChatSpot.answer`
(or :meth:`ChatSpot.answer_frame`, which also reports the call's timings once).

``ChatSpot`` owns the one :class:`InstructionBuilder` of a loaded checkpoint (its dialect, its
geometry, the templates, the limits); callers read ``chatspot.builder`` and change the limits
with :meth:`ChatSpot.set_limits`.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol, runtime_checkable

import numpy as np

from chatspot_ros.runtime.config import (BatchTiming, FrameFeatures, Generation, GenerationConfig, GenerationResult,
                                         RuntimeConfig)

if TYPE_CHECKING:
    from chatspot_ros.referring import InstructionBuilder, InstructionTemplates, ReferringInstruction
    from chatspot_ros.referring.conversation import ConversationTemplate
    from chatspot_ros.referring.geometry import ImageGeometry
    from chatspot_ros.remote.config import ServerConfig


@runtime_checkable
class Runtime(Protocol):
    """The model boundary ChatSpot, the agent service and the node are typed against: encode a
    frame once, then generate for any number of prompts. Implemented by the local
    :class:`~chatspot_ros.runtime.core.ChatSpotRuntime` and the served
    :class:`~chatspot_ros.remote.runtime.RemoteRuntime` (the ``vllm`` backend)."""

    @property
    def family(self) -> str: ...

    @property
    def model_name(self) -> str: ...

    @property
    def backend_name(self) -> str: ...  # the vision backend in use, "vllm" for the served model

    @property
    def default_dialect(self) -> str: ...

    @property
    def geometry(self) -> ImageGeometry: ...  # how the checkpoint's preprocessing sees a frame

    @property
    def conversation(self) -> ConversationTemplate: ...  # its stop strings end every generation

    @property
    def prompt_form(self) -> str:
        """What ``generate_timed`` takes as a prompt: "conversation" (the full prompt, rendered by
        :meth:`ChatSpot.prompt_for`) or "instruction" (the instruction text; a server applies the
        same chat template). ChatSpot renders each prompt once and hands over the form asked for."""
        ...

    def encode(self, frame: np.ndarray, key: Hashable | None = None) -> FrameFeatures: ...

    def generate_timed(self, features: FrameFeatures, prompts: Sequence[str], gen: GenerationConfig,
                       on_token: Callable[[int, str], None] | None = None,
                       should_stop: Callable[[], bool] | None = None) -> GenerationResult: ...

    def status(self) -> dict[str, Any]:
        """Live figures for diagnostics (the server's requests, errors, latency); {} when none."""
        ...

    def close(self) -> None: ...

# config/instructions.yaml of a source checkout or an editable install; an installed ROS package
# has it under share/chatspot_ros/config (the node looks there first).
SOURCE_TEMPLATES_FILE = Path(__file__).resolve().parents[1] / "config" / "instructions.yaml"


def default_templates_file() -> Optional[Path]:
    """The installed ``config/instructions.yaml``: the ROS share folder's, else the source tree's;
    None when neither exists (the built-in defaults, which mirror the file, apply)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory("chatspot_ros")) / "config" / "instructions.yaml"
        if shared.is_file():
            return shared
    except Exception:  # noqa: BLE001 - not a ROS install (ImportError) or the package is not installed
        pass
    return SOURCE_TEMPLATES_FILE if SOURCE_TEMPLATES_FILE.is_file() else None


def load_templates(path: str | Path | None = "") -> InstructionTemplates:
    """Templates from ``path``; "" = :func:`default_templates_file`; None = the built-in defaults.

    A file that is named but missing or invalid is a ValueError / FileNotFoundError with the path."""
    from chatspot_ros.referring import InstructionTemplates, load_instruction_templates

    if path is None:
        return InstructionTemplates()
    file = Path(path).expanduser() if str(path) else default_templates_file()
    if file is None:
        return InstructionTemplates()
    if not file.is_file():
        raise FileNotFoundError(f"instruction templates file {file} does not exist")
    return load_instruction_templates(file)


@dataclass(frozen=True)
class RegionAnswer:
    """The answer to one instruction."""

    instruction: ReferringInstruction
    prompt: str  # the full prompt the model saw (conversation template applied, on either backend)
    text: str  # the answer, stripped of surrounding whitespace
    generation: Generation
    vision_ms: float  # 0.0 when the frame's features came from the cache


@dataclass(frozen=True)
class FrameAnswers:
    """All answers of one :meth:`ChatSpot.answer_frame` call and its timings, each counted once."""

    answers: tuple[RegionAnswer, ...]
    vision_ms: float  # 0.0 when the frame's features came from the cache
    cache_hit: bool
    batches: tuple[BatchTiming, ...]  # one per decode batch
    total_ms: float  # the whole call (encode + generate)

    @property
    def prefill_ms(self) -> float:
        return sum(b.prefill_ms for b in self.batches)

    @property
    def decode_ms(self) -> float:
        return sum(b.decode_ms for b in self.batches)

    @property
    def tokens(self) -> int:
        return sum(b.tokens for b in self.batches)

    @property
    def texts(self) -> list[str]:
        return [a.text for a in self.answers]


class ChatSpot:
    """Answers referring instructions about frames, encoding each frame once."""

    def __init__(self, runtime: Runtime, builder: InstructionBuilder) -> None:
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
        from chatspot_ros.runtime.core import ChatSpotRuntime

        return cls.with_runtime(ChatSpotRuntime.load(runtime_config), dialect=dialect, precision=precision,
                                templates=templates)

    @classmethod
    def from_server(
        cls,
        server_config: ServerConfig,
        *,
        dialect: str | None = None,
        precision: int | None = None,
        templates: InstructionTemplates | None = None,
    ) -> ChatSpot:
        """The ``vllm`` backend: the served model behind the same pipeline (chatspot_ros.remote).

        Reads the served model's config files (Φ, dialect, template) and checks the server's
        health and model name first; a server that is down is a ServerError (a ModelError)."""
        from chatspot_ros.remote.runtime import RemoteRuntime

        return cls.with_runtime(RemoteRuntime.connect(server_config), dialect=dialect, precision=precision,
                                templates=templates)

    @classmethod
    def with_runtime(
        cls,
        runtime: Runtime,
        *,
        dialect: str | None = None,
        precision: int | None = None,
        templates: InstructionTemplates | None = None,
    ) -> ChatSpot:
        """A ChatSpot over a made runtime (local or remote); it is closed when the builder fails."""
        from chatspot_ros.referring import InstructionBuilder, get_dialect

        try:
            name = dialect if dialect else runtime.default_dialect
            builder = InstructionBuilder(get_dialect(name, precision=precision), runtime.geometry, templates)
        except Exception:
            runtime.close()
            raise
        return cls(runtime, builder)

    def set_limits(self, *, max_question_chars: int, max_regions: int, max_outside: float) -> InstructionBuilder:
        """Replace the builder with one of the same dialect, geometry and templates and these limits."""
        from chatspot_ros.referring import InstructionBuilder

        base = self.builder
        self.builder = InstructionBuilder(base.dialect, base.geometry, base.templates,
                                          max_question_chars=max_question_chars, max_regions=max_regions,
                                          max_outside=max_outside)
        return self.builder

    def prompt_for(self, instruction: ReferringInstruction) -> str:
        """The full prompt the model sees for ``instruction`` (the conversation template applied)."""
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
        return list(self.answer_frame(frame, frame_key, requests, gen, on_token, should_stop).answers)

    def answer_frame(
        self,
        frame: np.ndarray,
        frame_key: Hashable | None,
        requests: Sequence[ReferringInstruction],
        gen: GenerationConfig,
        on_token: Callable[[int, str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> FrameAnswers:
        """As :meth:`answer`, with the call's timings: vision once, each decode batch once.

        Model failures raise :class:`chatspot_ros.runtime.ModelError` (``ModelOutOfMemory``)."""
        start = time.perf_counter()
        if not requests:
            return FrameAnswers((), 0.0, False, (), 0.0)
        features = self.runtime.encode(frame, key=frame_key)
        vision_ms = 0.0 if features.cache_hit else features.vision_ms
        prompts = [self.prompt_for(r) for r in requests]  # rendered once
        sent = prompts if self.runtime.prompt_form == "conversation" else [r.text for r in requests]
        stops = tuple(dict.fromkeys(tuple(gen.stop) + tuple(self.runtime.conversation.stop)))
        result = self.runtime.generate_timed(features, sent, replace(gen, stop=stops), on_token, should_stop)
        answers = tuple(
            RegionAnswer(instruction=r, prompt=p, text=g.text.strip(), generation=g, vision_ms=vision_ms)
            for r, p, g in zip(requests, prompts, result.generations)
        )
        return FrameAnswers(answers, vision_ms, features.cache_hit, result.batches,
                            (time.perf_counter() - start) * 1e3)

    def close(self) -> None:
        self.runtime.close()
