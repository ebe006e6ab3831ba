"""The studio without ROS: the same page over the in-process pipeline (ChatSpot), like the paper's demo.

The frame is an image file, a tabletop world frame or an upload; questions run one at a time on
one model thread, stream their text as it is decoded and stop within a token when cancelled.
Nothing here imports rclpy.
"""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import numpy as np

from chatspot_ros.pipeline import ChatSpot
from chatspot_ros.referring import Region, parse_steps
from chatspot_ros.runtime.config import GenerationConfig
from chatspot_ros.runtime.errors import ModelError
from chatspot_ros.service import imaging
from chatspot_ros.studio.backend import Answer, Backend, FrameSink, PartialCallback
from chatspot_ros.studio.hub import HeldFrame, SourceFrame
from chatspot_ros.studio.protocol import AskMessage, SuggestMessage


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """An uploaded JPEG or PNG as RGB; ValueError with the reason for anything else."""
    limits = imaging.ImageLimits(max_width=8192, max_height=8192, max_pixels=max_pixels)
    try:
        return np.ascontiguousarray(imaging.decode_compressed(data, "", limits))
    except imaging.ImageDecodeError as err:
        raise ValueError(f"upload refused: {err}") from None


class LocalBackend(Backend):
    mode = "standalone"

    def __init__(self, chatspot: ChatSpot, image: np.ndarray, name: str, *, model_name: str,
                 max_new_tokens: int = 64, max_new_tokens_limit: int = 512) -> None:
        imaging.check_rgb(image)
        self.chatspot = chatspot
        self.model_name = model_name
        self.max_new_tokens = max_new_tokens
        self.max_new_tokens_limit = max_new_tokens_limit
        self._image, self._name = image, name
        self._sink: Optional[FrameSink] = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-model")
        self._busy = threading.Lock()
        self._served = self._failed = self._cancelled = 0
        self._last_ms = 0.0
        self._uploads = 0

    # -- frames ---------------------------------------------------------------------------------

    def start(self, sink: FrameSink, loop: asyncio.AbstractEventLoop) -> None:
        self._sink = sink
        self._offer()

    def set_image(self, rgb: np.ndarray, name: str) -> None:
        """A new frame for every page (an upload)."""
        imaging.check_rgb(rgb)
        self._image, self._name = rgb, name
        self._uploads += 1
        self._offer()

    def _offer(self) -> None:
        if self._sink is None:
            return
        now = time.time_ns()
        height, width = self._image.shape[:2]
        self._sink.offer_frame(SourceFrame(now // 1_000_000_000, now % 1_000_000_000, self._name, width, height,
                                           self._image))

    def to_jpeg(self, frame: SourceFrame, quality: int) -> bytes:
        return imaging.encode_compressed(frame.payload, "jpeg", quality)

    # -- questions ------------------------------------------------------------------------------

    async def ask(self, frame: HeldFrame, msg: AskMessage, on_partial: PartialCallback,
                  cancel: asyncio.Event) -> Answer:
        loop = asyncio.get_running_loop()
        size = (frame.source.width, frame.source.height)
        regions = [msg.region] if msg.region is not None else []
        builder = self.chatspot.builder
        try:
            if msg.question:
                instruction = builder.ask(msg.question, regions, size)
            elif msg.region is not None:
                instruction = builder.describe_region(msg.region, size)
            else:
                instruction = builder.describe_image(size)
            gen = GenerationConfig(max_new_tokens=min(msg.max_new_tokens or self.max_new_tokens,
                                                      self.max_new_tokens_limit))
        except ValueError as err:
            return Answer(ok=False, message=str(err))
        tokens = [0]

        def on_token(_row: int, text: str) -> None:  # model thread
            tokens[0] += 1
            count = tokens[0]
            loop.call_soon_threadsafe(on_partial, text.lstrip(), count)  # answers are stripped too

        def run() -> Any:
            with self._busy:
                return self.chatspot.answer_frame(frame.source.payload, ("studio", frame.id), [instruction], gen,
                                                  on_token=on_token, should_stop=cancel.is_set)

        return await self._run(run, frame, instruction.text, cancel)

    async def suggest(self, frame: HeldFrame, msg: SuggestMessage, cancel: asyncio.Event) -> Answer:
        size = (frame.source.width, frame.source.height)
        region = msg.region if msg.region is not None else Region.box(0, 0, size[0], size[1], id="image")
        try:
            instruction = self.chatspot.builder.suggest_actions(msg.task, region, size)
        except ValueError as err:
            return Answer(ok=False, message=str(err))
        gen = GenerationConfig(max_new_tokens=self.max_new_tokens)

        def run() -> Any:
            with self._busy:
                return self.chatspot.answer_frame(frame.source.payload, ("studio", frame.id), [instruction], gen,
                                                  should_stop=cancel.is_set)

        answer = await self._run(run, frame, instruction.text, cancel)
        if answer.ok:
            return Answer(ok=True, text=answer.text, instruction=answer.instruction, stamp=answer.stamp,
                          steps=parse_steps(answer.text))
        return answer

    async def _run(self, run: Any, frame: HeldFrame, instruction: str, cancel: asyncio.Event) -> Answer:
        start = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, run)
        except ModelError as err:
            self._failed += 1
            return Answer(ok=False, message=f"model error: {err}", instruction=instruction)
        self._last_ms = (time.perf_counter() - start) * 1e3
        text = result.answers[0].text if result.answers else ""
        if cancel.is_set():
            self._cancelled += 1
            return Answer(ok=False, cancelled=True, text=text, message="cancelled", instruction=instruction,
                          stamp=frame.source.stamp)
        self._served += 1
        return Answer(ok=True, text=text, instruction=instruction, stamp=frame.source.stamp)

    # -- state ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        runtime = self.chatspot.runtime
        return {"state": "in-process", "model": self.model_name,
                "device": str(getattr(getattr(runtime, "config", None), "device", "")),
                "dialect": self.chatspot.builder.dialect.name, "busy": str(self._busy.locked()),
                "served": str(self._served), "failed": str(self._failed), "cancelled": str(self._cancelled),
                "last_ms": f"{self._last_ms:.0f}", "image": self._name, "uploads": str(self._uploads)}

    def model_limits(self) -> dict[str, int]:
        return {"default_max_new_tokens": self.max_new_tokens, "max_new_tokens_limit": self.max_new_tokens_limit}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.chatspot.close()
