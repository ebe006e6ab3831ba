"""A scripted backend for the server tests: frames from a thread at a chosen rate, answers word by word.

It stands in for the agent only where the server itself is under test (validation, rate limits,
origins, frame dropping); the answers of the real agent and pipeline are tested in the browser
tests and test_standalone.py.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Optional

import numpy as np

from chatspot_ros.service import imaging
from chatspot_ros.studio.backend import Answer, Backend, FrameSink, PartialCallback
from chatspot_ros.studio.hub import HeldFrame, SourceFrame
from chatspot_ros.studio.protocol import AskMessage, SuggestMessage


class ScriptedBackend(Backend):
    mode = "test"

    def __init__(self, width: int = 160, height: int = 120, source_fps: float = 0.0, noise: bool = False,
                 words: int = 5, word_s: float = 0.01) -> None:
        self.width, self.height = width, height
        self.source_fps, self.noise = source_fps, noise
        self.words, self.word_s = words, word_s
        self.asked: list[tuple[HeldFrame, AskMessage]] = []
        self.offered = 0
        self._sink: Optional[FrameSink] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._rng = np.random.default_rng(0)

    def start(self, sink: FrameSink, loop: asyncio.AbstractEventLoop) -> None:
        self._sink = sink
        self.offer()
        if self.source_fps > 0:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0 / self.source_fps):
            self.offer()

    def offer(self) -> None:
        assert self._sink is not None
        if self.noise:
            rgb = self._rng.integers(0, 256, (self.height, self.width, 3), dtype=np.uint8)
        else:
            rgb = np.full((self.height, self.width, 3), (self.offered * 7) % 256, np.uint8)
        self.offered += 1
        now = time.time_ns()
        self._sink.offer_frame(SourceFrame(now // 10 ** 9, now % 10 ** 9, "cam", self.width, self.height, rgb))

    def to_jpeg(self, frame: SourceFrame, quality: int) -> bytes:
        return imaging.encode_compressed(frame.payload, "jpeg", quality)

    async def ask(self, frame: HeldFrame, msg: AskMessage, on_partial: PartialCallback,
                  cancel: asyncio.Event) -> Answer:
        self.asked.append((frame, msg))
        text = ""
        for i in range(self.words):
            if cancel.is_set():
                return Answer(ok=False, cancelled=True, text=text, message="cancelled", stamp=frame.source.stamp)
            text = (text + f" word{i}").strip()
            on_partial(text, i + 1)
            await asyncio.sleep(self.word_s)
        return Answer(ok=True, text=text, instruction=f"{msg.question} <region>", stamp=frame.source.stamp)

    async def suggest(self, frame: HeldFrame, msg: SuggestMessage, cancel: asyncio.Event) -> Answer:
        return Answer(ok=True, text="1. a\n2. b", steps=["a", "b"], stamp=frame.source.stamp)

    def status(self) -> dict[str, Any]:
        return {"state": "scripted"}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
