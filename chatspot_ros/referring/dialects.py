"""Region dialects: how a family of models writes points, boxes and polygons as text.

A checkpoint only understands the coordinate text it was trained on, so the format is chosen per
checkpoint, never guessed. Every dialect works on normalized model coordinates (see geometry.py)
and knows its own quantization, so callers can bound the round-trip error.

  chatspot    <box>[0.103,0.200,0.552,0.800]</box>     decimals (default 3) in [0, 1]
  llava       [0.10, 0.20, 0.55, 0.80]                 2 decimals in [0, 1] (LLaVA-1.5 training data)
  mmgpt       [103,200,552,800]                        integers in [0, 1000]
  qwen_vl     <|box_start|>(103,200),(552,800)<|box_end|>   integers in [0, 1000]
  qwen2_5_vl  {"bbox_2d": [66, 96, 353, 384]}          integer pixels of the resized model input

Points are the same list with one (x, y); polygons list all their (x, y) in order.
"""
from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import Sequence

from chatspot_ros.referring.regions import Point, RegionKind

DIALECTS: tuple[str, ...] = ("chatspot", "llava", "mmgpt", "qwen_vl", "qwen2_5_vl")
DEFAULT_DIALECT = "chatspot"

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUM_RE = re.compile(_NUM)
_LIST = rf"{_NUM}(?:\s*,\s*{_NUM})*"


@dataclass(frozen=True)
class ParsedRegion:
    """A region found in text: normalized model coordinates, where it was, and its label if given."""

    kind: RegionKind
    points: tuple[Point, ...]
    span: tuple[int, int]
    label: str = ""


def _unit(v: float) -> float:
    """Clamp to [0, 1]; "+ 0.0" turns -0.0 into 0.0 so nothing prints as "-0.000"."""
    return min(max(v, 0.0), 1.0) + 0.0


def _kind_for_count(n_values: int) -> RegionKind | None:
    """The paper's rule on a flat value list: 1 pair point, 2 pairs box, >= 3 pairs polygon."""
    if n_values == 2:
        return RegionKind.POINT
    if n_values == 4:
        return RegionKind.BOX
    if n_values >= 6 and n_values % 2 == 0:
        return RegionKind.POLYGON
    return None


def _pairs(values: Sequence[float]) -> tuple[Point, ...]:
    return tuple((values[i], values[i + 1]) for i in range(0, len(values), 2))


def _make_region(
    values: Sequence[float], span: tuple[int, int], label: str = ""
) -> ParsedRegion | None:
    """A ParsedRegion from a flat list of normalized values; None when the count fits no kind."""
    kind = _kind_for_count(len(values))
    if kind is None:
        return None
    points = _pairs(values)
    if kind is RegionKind.BOX:  # models sometimes swap corners; the box is the same
        (x0, y0), (x1, y1) = points
        points = ((min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1)))
    return ParsedRegion(kind, points, span, label)


def _check_count(kind: RegionKind | int, points: Sequence[Point]) -> RegionKind:
    """The kind as a RegionKind; ValueError when the point count does not fit it."""
    kind = RegionKind(kind)
    need = {RegionKind.POINT: "== 1", RegionKind.BOX: "== 2", RegionKind.POLYGON: ">= 3"}[kind]
    n = len(points)
    ok = n == 1 if kind is RegionKind.POINT else n == 2 if kind is RegionKind.BOX else n >= 3
    if not ok:
        raise ValueError(f"a {kind.name.lower()} needs {need} points, got {n}")
    return kind


class Dialect(abc.ABC):
    """Formats normalized region points as the text a model family was trained on, and parses it back."""

    name: str = ""

    @abc.abstractmethod
    def format(self, kind: RegionKind, points: Sequence[Point], model_size: tuple[int, int]) -> str:
        """Text for one region; points normalized to [0, 1] (clamped), model_size = model input (w, h)."""

    @abc.abstractmethod
    def parse(self, text: str, model_size: tuple[int, int]) -> list[ParsedRegion]:
        """All regions written in this dialect in free text, in order, as normalized points."""

    @abc.abstractmethod
    def quantization(self, model_size: tuple[int, int]) -> tuple[float, float]:
        """Largest |formatted - exact| per axis in normalized units (half a step of the text's grid)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class _DecimalListDialect(Dialect):
    """Decimals in [0, 1] in a bracketed list: chatspot (<box>[...]</box>) and llava ([...])."""

    def __init__(
        self, name: str, decimals: int, opener: str, closer: str, separator: str, pattern: str
    ) -> None:
        self.name = name
        self.decimals = decimals
        self._opener, self._closer, self._separator = opener, closer, separator
        self._re = re.compile(pattern, re.IGNORECASE)

    def format(self, kind: RegionKind, points: Sequence[Point], model_size: tuple[int, int]) -> str:
        _check_count(kind, points)
        values = [f"{_unit(v):.{self.decimals}f}" for p in points for v in p]
        return f"{self._opener}{self._separator.join(values)}{self._closer}"

    def parse(self, text: str, model_size: tuple[int, int]) -> list[ParsedRegion]:
        found = []
        for m in self._re.finditer(text):
            values = [float(v) for v in _NUM_RE.findall(m.group("body"))]
            region = _make_region(values, m.span())
            if region is not None:
                found.append(region)
        return found

    def quantization(self, model_size: tuple[int, int]) -> tuple[float, float]:
        half = 0.5 * 10.0 ** (-self.decimals)
        return half, half

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, decimals={self.decimals})"


class _BinnedListDialect(Dialect):
    """Integers in [0, bins] in a bracketed list: mmgpt's [x1,y1,x2,y2]."""

    def __init__(self, name: str, bins: int = 1000) -> None:
        self.name = name
        self.bins = bins
        self._re = re.compile(rf"\[\s*(?P<body>{_LIST})\s*\]")

    def format(self, kind: RegionKind, points: Sequence[Point], model_size: tuple[int, int]) -> str:
        _check_count(kind, points)
        return "[" + ",".join(str(round(_unit(v) * self.bins)) for p in points for v in p) + "]"

    def parse(self, text: str, model_size: tuple[int, int]) -> list[ParsedRegion]:
        found = []
        for m in self._re.finditer(text):
            values = [float(v) / self.bins for v in _NUM_RE.findall(m.group("body"))]
            region = _make_region(values, m.span())
            if region is not None:
                found.append(region)
        return found

    def quantization(self, model_size: tuple[int, int]) -> tuple[float, float]:
        return 0.5 / self.bins, 0.5 / self.bins


class _QwenVLDialect(Dialect):
    """Qwen-VL / Qwen2-VL: <|box_start|>(x1,y1),(x2,y2)<|box_end|>, integers in [0, 1000].

    Parsing also reads Qwen-VL (v1)'s <box>(x1,y1),(x2,y2)</box> and a preceding
    <|object_ref_start|>label<|object_ref_end|> or <ref>label</ref> as the label.
    """

    name = "qwen_vl"
    bins = 1000
    _PAIR = rf"\(\s*{_NUM}\s*,\s*{_NUM}\s*\)"
    _BODY = rf"\s*(?P<body>{_PAIR}(?:\s*,?\s*{_PAIR})*)\s*"
    _RE = re.compile(
        rf"(?:<\|object_ref_start\|>(?P<label2>.*?)<\|object_ref_end\|>\s*)?<\|box_start\|>{_BODY}<\|box_end\|>"
        rf"|(?:<ref>(?P<label1>.*?)</ref>\s*)?<box>{_BODY.replace('body', 'body1')}</box>",
        re.DOTALL,
    )

    def format(self, kind: RegionKind, points: Sequence[Point], model_size: tuple[int, int]) -> str:
        _check_count(kind, points)
        pairs = ",".join(f"({round(_unit(x) * self.bins)},{round(_unit(y) * self.bins)})" for x, y in points)
        return f"<|box_start|>{pairs}<|box_end|>"

    def parse(self, text: str, model_size: tuple[int, int]) -> list[ParsedRegion]:
        found = []
        for m in self._RE.finditer(text):
            body = m.group("body") if m.group("body") is not None else m.group("body1")
            label = (m.group("label2") or m.group("label1") or "").strip()
            values = [float(v) / self.bins for v in _NUM_RE.findall(body)]
            region = _make_region(values, m.span(), label)
            if region is not None:
                found.append(region)
        return found

    def quantization(self, model_size: tuple[int, int]) -> tuple[float, float]:
        return 0.5 / self.bins, 0.5 / self.bins


class _Qwen25VLDialect(Dialect):
    """Qwen2.5-VL: JSON with absolute integer pixels of the resized input the model sees.

    box {"bbox_2d": [x1, y1, x2, y2]}, point {"point_2d": [x, y]}, and (our choice, Qwen has no
    published polygon form) polygon {"polygon_2d": [[x1, y1], [x2, y2], [x3, y3], ...]}; parsing
    also accepts a flat polygon list and takes "label" from the same JSON object.
    """

    name = "qwen2_5_vl"
    _KEYS = {"bbox_2d": RegionKind.BOX, "point_2d": RegionKind.POINT, "polygon_2d": RegionKind.POLYGON}
    _RE = re.compile(r'"(?P<key>bbox_2d|point_2d|polygon_2d)"\s*:\s*(?P<body>\[(?:[^\[\]]|\[[^\[\]]*\])*\])')
    _LABEL_RE = re.compile(r'"label"\s*:\s*"(?P<label>(?:[^"\\]|\\.)*)"')

    def format(self, kind: RegionKind, points: Sequence[Point], model_size: tuple[int, int]) -> str:
        kind = _check_count(kind, points)
        w, h = model_size
        ints = [(round(_unit(x) * w), round(_unit(y) * h)) for x, y in points]
        if kind is RegionKind.POLYGON:
            return '{"polygon_2d": [' + ", ".join(f"[{x}, {y}]" for x, y in ints) + "]}"
        key = "point_2d" if kind is RegionKind.POINT else "bbox_2d"
        return f'{{"{key}": [' + ", ".join(str(v) for p in ints for v in p) + "]}"

    def parse(self, text: str, model_size: tuple[int, int]) -> list[ParsedRegion]:
        w, h = model_size
        found = []
        for m in self._RE.finditer(text):
            raw = [float(v) for v in _NUM_RE.findall(m.group("body"))]
            values = [v / (w if i % 2 == 0 else h) for i, v in enumerate(raw)]
            region = _make_region(values, m.span(), self._label_near(text, m.start(), m.end()))
            if region is not None and region.kind is self._KEYS[m.group("key")]:
                found.append(region)
        return found

    def _label_near(self, text: str, start: int, end: int) -> str:
        """The "label" of the JSON object around [start, end), if the object is closed."""
        open_at = text.rfind("{", 0, start)
        close_at = text.find("}", end)
        if open_at < 0 or close_at < 0 or "}" in text[open_at:start] or "{" in text[end:close_at]:
            return ""
        m = self._LABEL_RE.search(text, open_at, close_at)
        return m.group("label") if m else ""

    def quantization(self, model_size: tuple[int, int]) -> tuple[float, float]:
        w, h = model_size
        return 0.5 / w, 0.5 / h


def get_dialect(name: str, *, precision: int | None = None) -> Dialect:
    """The dialect called name; precision (decimals) only for the decimal dialects chatspot and llava."""
    if name not in DIALECTS:
        raise ValueError(f"unknown region dialect {name!r}; known: {', '.join(DIALECTS)}")
    if name in ("chatspot", "llava"):
        decimals = (3 if name == "chatspot" else 2) if precision is None else precision
        if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 12:
            raise ValueError(f"precision must be an integer number of decimals in [0, 12], got {precision!r}")
        if name == "chatspot":
            pattern = rf"<\s*box\s*>\s*\[\s*(?P<body>{_LIST})\s*\]\s*<\s*/\s*box\s*>"
            return _DecimalListDialect("chatspot", decimals, "<box>[", "]</box>", ",", pattern)
        return _DecimalListDialect("llava", decimals, "[", "]", ", ", rf"\[\s*(?P<body>{_LIST})\s*\]")
    if precision is not None:
        raise ValueError(f"dialect {name!r} writes integers on a fixed grid; precision is not configurable")
    if name == "mmgpt":
        return _BinnedListDialect("mmgpt")
    if name == "qwen_vl":
        return _QwenVLDialect()
    return _Qwen25VLDialect()
