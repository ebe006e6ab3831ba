"""The one interface the server needs from whatever answers: the live agent over ROS, or the pipeline.

A backend delivers frames into a :class:`FrameSink` (from any thread, never blocking), turns a
source frame into JPEG bytes (called on a worker thread), answers questions about held frames
(streaming partial text, cancellable), and reports its state for the page's status panel.
"""
from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from chatspot_ros.studio.hub import HeldFrame, SourceFrame
from chatspot_ros.studio.protocol import AskMessage, SuggestMessage


class FrameSink(abc.ABC):
    """Where a backend delivers; every method may be called from any thread and returns at once."""

    @abc.abstractmethod
    def offer_frame(self, frame: SourceFrame) -> None: ...

    @abc.abstractmethod
    def offer_overlay(self, overlay: dict[str, Any]) -> None:
        """``{"stamp": {...}, "source": "detections"|"region_descriptions", "regions": [...]}``."""


@dataclass(frozen=True)
class Answer:
    """How one question ended: ``ok`` with the answer, ``cancelled`` with the partial text, or not."""

    ok: bool
    text: str = ""
    message: str = ""  # why not, when not ok
    instruction: str = ""  # the exact instruction the model saw
    stamp: Optional[dict[str, int]] = None  # the stamp of the frame the answerer says it answered about
    cancelled: bool = False
    steps: list[str] = field(default_factory=list)  # suggest: the parsed steps
    referred_by: str = ""  # ROS: "stamp" or "pixels"


PartialCallback = Callable[[str, int], None]  # (text so far, tokens so far); called on the server's loop


class Backend(abc.ABC):
    mode: str = ""

    @abc.abstractmethod
    def start(self, sink: FrameSink, loop: asyncio.AbstractEventLoop) -> None:
        """Begin delivering frames (and overlays) into ``sink``."""

    @abc.abstractmethod
    def to_jpeg(self, frame: SourceFrame, quality: int) -> bytes:
        """JPEG bytes of a source frame (runs on a worker thread, never on the event loop)."""

    @abc.abstractmethod
    async def ask(self, frame: HeldFrame, msg: AskMessage, on_partial: PartialCallback,
                  cancel: asyncio.Event) -> Answer: ...

    @abc.abstractmethod
    async def suggest(self, frame: HeldFrame, msg: SuggestMessage, cancel: asyncio.Event) -> Answer: ...

    @abc.abstractmethod
    def status(self) -> dict[str, Any]:
        """The answerer's state for the page: ``{"state": ..., "model": ..., ...}`` (strings)."""

    def model_limits(self) -> dict[str, int]:
        """Limits the page should know about (e.g. max_new_tokens); {} when unknown."""
        return {}

    def close(self) -> None:
        """Stop threads, free the model; called once when the server stops."""
