"""What the page and the server say to each other over the WebSocket, checked field by field.

Page -> server: JSON text messages ``freeze`` (hold this frame for my questions), ``ask``,
``suggest``, ``cancel`` (see :func:`parse_message`).
Server -> page: JSON text messages (``hello``, ``partial``, ``answer``, ``overlay``, ``status``,
``error``) and binary frames (:func:`pack_frame`: a 4-byte big-endian header length, the header
as JSON, then the JPEG). Coordinates are pixels of the frame they name, origin at the top left,
as in chatspot_ros/Region. Nothing here imports aiohttp or ROS.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any, Optional, Union

from chatspot_ros.referring.instructions import InstructionTemplates
from chatspot_ros.referring.regions import Region, RegionKind


class ProtocolError(ValueError):
    """A message the page sent that the server refuses; ``reason`` names the counter it goes to."""

    def __init__(self, message: str, reason: str = "invalid", request_id: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.request_id = request_id


@dataclass(frozen=True)
class Limits:
    """Caps on what a page may send (the server's ``--max-*`` options)."""

    max_message_bytes: int = 16 * 1024  # one WebSocket text message
    max_question_chars: int = 2000  # the agent's limits.max_question_chars default
    max_polygon_points: int = 64
    max_new_tokens: int = 512  # the agent's generation.max_new_tokens_limit default
    max_id_chars: int = 64

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_question_chars", "max_polygon_points", "max_new_tokens",
                     "max_id_chars"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class AskMessage:
    """A question about a region (or the whole frame when ``region`` is None) of a held frame.

    An empty question asks for a description (the agent's describe template)."""

    id: str
    frame: int
    region: Optional[Region]
    question: str
    max_new_tokens: int  # 0 = the answerer's default


@dataclass(frozen=True)
class SuggestMessage:
    """Numbered steps for ``task`` on a region (the ``suggest_actions`` service)."""

    id: str
    frame: int
    region: Optional[Region]
    task: str


@dataclass(frozen=True)
class CancelMessage:
    id: str


@dataclass(frozen=True)
class FreezeMessage:
    """The page froze this frame: the server holds it for the page's questions until the next freeze."""

    frame: int


Message = Union[AskMessage, SuggestMessage, CancelMessage, FreezeMessage]

_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
_KINDS = {"point": RegionKind.POINT, "box": RegionKind.BOX, "polygon": RegionKind.POLYGON}
_FIELDS = {
    "ask": ({"type", "id", "frame", "question"}, {"region", "max_new_tokens"}),
    "suggest": ({"type", "id", "frame", "task"}, {"region"}),
    "cancel": ({"type", "id"}, set()),
    "freeze": ({"type", "frame"}, set()),
}


def parse_message(data: Union[str, bytes], limits: Limits) -> Message:
    """One page message -> a typed message; ProtocolError (with the reason and the request id when
    one could be read) for anything malformed, oversized, unknown or out of range."""
    size = len(data.encode("utf-8") if isinstance(data, str) else data)
    if size > limits.max_message_bytes:
        raise ProtocolError(f"message of {size} bytes is larger than the limit of {limits.max_message_bytes}",
                            reason="too_large")
    if not isinstance(data, str):
        raise ProtocolError("binary messages are not accepted; send JSON text")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise ProtocolError(f"message is not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("message must be a JSON object")
    kind = obj.get("type")
    if kind not in _FIELDS:
        raise ProtocolError(f"unknown message type {kind!r}; expected one of {', '.join(sorted(_FIELDS))}")
    request_id = obj.get("id") if isinstance(obj.get("id"), str) else ""
    try:
        required, optional = _FIELDS[kind]
        missing = sorted(required - set(obj))
        if missing:
            raise ProtocolError(f"{kind}: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(obj) - required - optional)
        if unknown:
            raise ProtocolError(f"{kind}: unknown field(s) {', '.join(unknown)}")
        if kind == "freeze":
            return FreezeMessage(_non_negative_int(obj["frame"], "frame", 2 ** 53))
        rid = _request_id(obj["id"], limits)
        if kind == "cancel":
            return CancelMessage(rid)
        frame = _non_negative_int(obj["frame"], "frame", 2 ** 53)
        region = parse_region(obj.get("region"), limits)
        if kind == "ask":
            question = _text(obj["question"], "question", limits.max_question_chars, allow_empty=True)
            max_new = _non_negative_int(obj.get("max_new_tokens", 0), "max_new_tokens", limits.max_new_tokens)
            return AskMessage(rid, frame, region, question, max_new)
        task = _text(obj["task"], "task", limits.max_question_chars, allow_empty=False)
        return SuggestMessage(rid, frame, region, task)
    except ProtocolError as err:
        err.request_id = err.request_id or (request_id if _ID_RE.match(request_id or "") else "")
        raise


def parse_region(value: Any, limits: Limits) -> Optional[Region]:
    """``{"kind": "point"|"box"|"polygon", "points": [[x, y], ...]}`` or null (the whole frame)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError("region must be an object {kind, points} or null")
    unknown = sorted(set(value) - {"kind", "points"})
    if unknown:
        raise ProtocolError(f"region: unknown field(s) {', '.join(unknown)}")
    kind = _KINDS.get(value.get("kind"))  # type: ignore[arg-type]
    if kind is None:
        raise ProtocolError(f"region kind must be point, box or polygon, got {value.get('kind')!r}")
    points = value.get("points")
    if not isinstance(points, list):
        raise ProtocolError("region points must be a list of [x, y] pairs")
    if len(points) > limits.max_polygon_points:
        raise ProtocolError(f"region has {len(points)} points; at most {limits.max_polygon_points}")
    pairs = []
    for i, p in enumerate(points):
        if not (isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p)):
            raise ProtocolError(f"region point {i} must be [x, y] with two finite numbers, got {p!r}")
        pairs.append((float(p[0]), float(p[1])))
    if kind is RegionKind.BOX and len(pairs) == 2:
        (x0, y0), (x1, y1) = pairs
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise ProtocolError(f"box must be at least 1 pixel wide and high with min before max, got {pairs}")
    try:
        return Region(kind, tuple(pairs))
    except ValueError as err:
        raise ProtocolError(str(err)) from None


def check_region_in_frame(region: Optional[Region], width: int, height: int) -> None:
    """Every point inside the frame (edges included): a page never draws outside its image."""
    if region is None:
        return
    for x, y in region.points:
        if not (0 <= x <= width and 0 <= y <= height):
            raise ProtocolError(f"region point ({x:g}, {y:g}) is outside the {width}x{height} frame")


def presets(templates: InstructionTemplates) -> list[dict[str, str]]:
    """The page's question presets, worded by the instruction templates (config/instructions.yaml).

    The region text is left to the answerer, which appends it (``region_question``) as it does for
    any question; an empty question is its ``describe_region`` template."""
    def question(template: str) -> str:
        return " ".join(template.replace("{region}", " ").split())

    return [
        {"name": "what", "label": "What is this?", "kind": "ask", "text": question(templates.what_in_region)},
        {"name": "describe", "label": "Describe", "kind": "ask", "text": ""},
        {"name": "read", "label": "Read the text", "kind": "ask", "text": question(templates.text_in_region)},
        {"name": "suggest", "label": "Suggest actions for a task", "kind": "suggest", "text": "pick up the object"},
    ]


def region_to_json(region: Optional[Region]) -> Optional[dict[str, Any]]:
    if region is None:
        return None
    return {"kind": region.kind.name.lower(), "points": [[round(x, 2), round(y, 2)] for x, y in region.points]}


def pack_frame(header: dict[str, Any], jpeg: bytes) -> bytes:
    """A binary WebSocket frame: 4-byte big-endian header length, the JSON header, the JPEG."""
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return struct.pack(">I", len(head)) + head + jpeg


def unpack_frame(data: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack(">I", data[:4])
    return json.loads(data[4:4 + length].decode("utf-8")), data[4 + length:]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _request_id(value: Any, limits: Limits) -> str:
    if not isinstance(value, str) or not value or len(value) > limits.max_id_chars or not _ID_RE.match(value):
        raise ProtocolError(f"id must be 1-{limits.max_id_chars} characters of letters, digits, _ . : -")
    return value


def _non_negative_int(value: Any, name: str, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise ProtocolError(f"{name} must be an integer in [0, {maximum}], got {value!r}")
    return value


def _text(value: Any, name: str, max_chars: int, *, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{name} must be a string")
    text = value.strip()
    if not text and not allow_empty:
        raise ProtocolError(f"{name} is empty")
    if len(text) > max_chars:
        raise ProtocolError(f"{name} has {len(text)} characters; at most {max_chars}")
    if any(ord(c) < 32 and c not in "\t\n" for c in text):
        raise ProtocolError(f"{name} contains control characters")
    return text
