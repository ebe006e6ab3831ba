"""A stand-in model backend for the AgentService tests: it implements the Runtime protocol with
scripted answers, records what it was asked, and can be held mid-generation (no torch model)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Optional

import numpy as np

from chatspot_ros.pipeline import ChatSpot
from chatspot_ros.referring import ImageGeometry
from chatspot_ros.referring.conversation import ConversationTemplate, get_conversation
from chatspot_ros.runtime.config import BatchTiming, FrameFeatures, Generation, GenerationConfig, GenerationResult
from chatspot_ros.service.agent_service import AgentService, ArrayFrame, Outputs
from chatspot_ros.service.config import AgentConfig


class StandInRuntime:
    """Answers ``"<answer> <n>"`` for the n-th prompt of a call, two tokens per answer."""

    family = "llava"
    model_name = "stand-in"
    backend_name = "torch"
    default_dialect = "llava"
    prompt_form = "conversation"

    def __init__(self, answer: str = "seen") -> None:
        self.answer = answer
        self.geometry: ImageGeometry = ImageGeometry.stretch(224, 224)
        self.conversation: ConversationTemplate = get_conversation("vicuna_v1")
        self.calls: list[tuple[list[str], GenerationConfig]] = []
        self.hold = threading.Event()  # set: generations wait (emitting one token) until released
        self.release = threading.Event()
        self.started = threading.Event()  # a held generation has emitted its first token
        self.closed = False

    def encode(self, frame: np.ndarray, key: Hashable | None = None) -> FrameFeatures:
        return FrameFeatures(key=key, features=frame.shape, vision_ms=1.0)

    def generate_timed(self, features: FrameFeatures, prompts: Sequence[str], gen: GenerationConfig,
                       on_token: Callable[[int, str], None] | None = None,
                       should_stop: Callable[[], bool] | None = None) -> GenerationResult:
        self.calls.append((list(prompts), gen))
        generations = []
        for index, _ in enumerate(prompts):
            partial = self.answer
            if on_token is not None:
                on_token(index, partial)
            stopped = "eos"
            if self.hold.is_set():
                self.started.set()
                while not self.release.is_set():
                    if should_stop is not None and should_stop():
                        stopped = "cancelled"
                        break
                    time.sleep(0.005)
            text = partial if stopped == "cancelled" else f"{self.answer} {index}"
            generations.append(Generation(text, 2, 1.0, 2.0, stopped))
        return GenerationResult(tuple(generations), (BatchTiming(0, tuple(range(len(prompts))), 1.0, 2.0,
                                                                 2 * len(prompts)),))

    def status(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.closed = True


class Collected:
    """Outputs as lists (appended on the worker thread)."""

    def __init__(self) -> None:
        self.descriptions: list[Any] = []
        self.suggestions: list[Any] = []
        self.annotations: list[Any] = []
        self.done = threading.Condition()

    def outputs(self) -> Outputs:
        def add(target: list[Any]) -> Callable[[Any], None]:
            def append(item: Any) -> None:
                with self.done:
                    target.append(item)
                    self.done.notify_all()
            return append
        return Outputs(add(self.descriptions), add(self.suggestions), add(self.annotations))

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self.done:
            return self.done.wait_for(predicate, timeout)


def make_service(runtime: Optional[StandInRuntime] = None, start: bool = True,
                 **parameters: Any) -> tuple[AgentService, StandInRuntime, Collected]:
    """A configured (and started) service over the stand-in; parameters by name with '.' -> '__'."""
    runtime = runtime or StandInRuntime()
    collected = Collected()
    values = {"model.path": "/stand-in"}
    values.update({name.replace("__", "."): value for name, value in parameters.items()})
    service = AgentService(outputs=collected.outputs(), loader=lambda config: ChatSpot.with_runtime(runtime))
    service.configure(AgentConfig.from_parameters(values))
    if start:
        service.start()
    return service, runtime, collected


def frame(stamp_s: float = 1.0, width: int = 64, height: int = 48, frame_id: str = "camera") -> ArrayFrame:
    return ArrayFrame(np.zeros((height, width, 3), np.uint8), int(stamp_s * 1e9), frame_id)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()
