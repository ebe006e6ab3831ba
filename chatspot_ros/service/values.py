"""The values the :class:`~chatspot_ros.service.agent_service.AgentService` takes and gives back
(ROS-free): frames, queries, answers, stream results and the callbacks they go to, the status."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Union

import numpy as np

from chatspot_ros.referring import ReferringInstruction, Region
from chatspot_ros.service.config import AgentConfig
from chatspot_ros.service.requests import RequestKind


class FrameLike(Protocol):
    """One camera image as the service needs it: its SOURCE size, stamp and frame, and the RGB
    pixels on demand (``rgb()`` may decode lazily and raise ImageDecodeError; it may be reduced by
    ``rgb_scale``). The node's DecodedFrame is one; :class:`ArrayFrame` wraps an array."""

    width: int
    height: int

    @property
    def stamp_ns(self) -> int: ...

    @property
    def frame_id(self) -> str: ...

    @property
    def rgb_scale(self) -> float: ...

    def rgb(self) -> np.ndarray: ...


@dataclass(frozen=True)
class ArrayFrame:
    """A frame that is already an (H, W, 3) uint8 RGB array (replays, tests, a page's upload)."""

    array: np.ndarray
    stamp_ns: int = 0
    frame_id: str = ""
    rgb_scale: float = 1.0

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    def rgb(self) -> np.ndarray:
        return self.array


class Log(Protocol):
    """The logging calls the service makes: an rclpy logger and a :class:`logging.Logger` both fit."""

    def debug(self, message: str, /) -> Any: ...

    def info(self, message: str, /) -> Any: ...

    def warning(self, message: str, /) -> Any: ...

    def error(self, message: str, /) -> Any: ...



@dataclass(frozen=True)
class Query:
    """An ask / describe / suggest request: a question (or task) about regions of a frame."""

    question: str = ""
    regions: tuple[Region, ...] = ()
    stamp_ns: int = 0  # the frame with this stamp (frames.wait_s applies); 0: the latest frame
    frame: Optional[FrameLike] = None  # the request's own image (then stamp_ns is not used)
    max_new_tokens: int = 0  # 0: generation.max_new_tokens


# A Query, or a function that makes one from the current config (a front end's message
# conversion): a ValueError it raises refuses the request, counted like any other refusal.
QuerySource = Union[Query, Callable[[AgentConfig], Query]]


@dataclass(frozen=True)
class Answer:
    """The outcome of :meth:`AgentService.ask` / ``suggest`` / ``describe``: success or the reason.

    ``instruction`` and ``frame`` are set once the request was accepted (also when it then failed)."""

    success: bool
    message: str = ""
    text: str = ""
    instruction: Optional[ReferringInstruction] = None
    frame: Optional[FrameLike] = None
    question: str = ""  # the checked question (the task for suggest)
    cancelled: bool = False  # stopped (cancelled, preempted, timed out, node stopping): ``text`` is partial


@dataclass(frozen=True)
class DescribedRegion:
    label: str  # the detector's class, "" for a click
    instruction: ReferringInstruction  # its first region is the one described
    text: str


@dataclass(frozen=True)
class Descriptions:
    """Answers about one frame (a detection message's regions, or a click)."""

    frame: FrameLike
    elapsed_s: float  # wall time of the model call (image decode, vision, prefill, generation)
    model: str
    items: tuple[DescribedRegion, ...]
    kind: RequestKind


@dataclass(frozen=True)
class Suggestion:
    frame: FrameLike
    region: Region
    task: str
    text: str


@dataclass(frozen=True)
class Annotations:
    """What a debug view draws for one answered frame: (region, text) pairs in source pixels."""

    frame: FrameLike
    items: tuple[tuple[Region, str], ...]


def _ignore(_: Any) -> None:
    return None


@dataclass
class Outputs:
    """Where results go (called on the worker thread; keep them short)."""

    descriptions: Callable[[Descriptions], None] = _ignore
    suggestion: Callable[[Suggestion], None] = _ignore
    annotations: Callable[[Annotations], None] = _ignore


@dataclass(frozen=True)
class ServiceStatus:
    """A snapshot for diagnostics."""

    configured: bool
    running: bool
    model_info: Mapping[str, str]
    last_error: str
    counters: Mapping[str, int]
    stages: Mapping[str, Any]
    tokens_per_s: float
    frames_buffered: int
    frames_capacity: int
    newest_stamp_ns: Optional[int]
    queue_requests: int
    queue_detections: int
    worker_busy: bool
    task: str
    awaiting_frame: int
    server: Mapping[str, Any] = field(default_factory=dict)  # the vllm backend's live figures


class ConfigureError(Exception):
    """configure failed; the message is the reason (also in ``last_error``)."""
