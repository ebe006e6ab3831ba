"""The tabletop world: procedural top-down frames of a table with coloured shapes (docs/world.md).

The distribution is a contract: frame ``i`` of a split with seed ``s`` is drawn from
``numpy.random.default_rng([s, i])`` in the order this module documents, so anyone can render
the same scenes independently and any frame can be rendered alone. Pure numpy + Pillow.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

WIDTH, HEIGHT = 320, 240
MIN_OBJECTS, MAX_OBJECTS = 1, 5
MIN_SIZE, MAX_SIZE = 24, 64  # side (cube, triangle) or diameter (ball), pixels
COLOUR_JITTER = 25  # each channel drawn from base +- this
MIN_GAP = 4  # pixels between the boxes of two objects
EDGE_MARGIN = 2  # pixels between a box and the frame border
PLACEMENT_TRIES = 200

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 200, 40),
    "purple": (140, 50, 170),
    "orange": (240, 130, 30),
}
SHAPES: tuple[str, ...] = ("cube", "ball", "triangle")
TABLE_TONES: dict[str, tuple[int, int, int]] = {
    "wood": (158, 112, 68),
    "grey": (128, 128, 128),
    "white": (222, 222, 216),
}
TABLE_JITTER = 12  # per channel, on the table tone
NOISE_STD = 4.0  # per-pixel Gaussian noise on the table
LIGHT_RANGE = (0.85, 1.15)  # the lighting gradient's gain from one side of the frame to the other
CIRCLE_VERTICES = 24  # polygon vertices written for a ball's segmentation

# Other table tones, seen only by the "tables" split (none of them is in training).
OTHER_TABLE_TONES: dict[str, tuple[int, int, int]] = {
    "black": (38, 38, 42),
    "slate": (72, 84, 100),
    "felt": (46, 104, 70),
    "beige": (196, 176, 140),
}

# Categories: id = 1 + colour index * 3 + shape index, name "<colour> <shape>".
CATEGORIES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
SMALL_BELOW, LARGE_FROM = 36, 52  # size words: small < 36 px <= (none) < 52 px <= large


def category_id(name: str) -> int:
    return CATEGORIES.index(name) + 1


@dataclass(frozen=True)
class WorldObject:
    """One object: its category parts, its drawn colour, and its geometry in frame pixels."""

    colour: str
    shape: str
    rgb: tuple[int, int, int]
    size: int  # side or diameter, pixels
    x0: int  # top-left of the bounding box (integer pixel edges)
    y0: int

    @property
    def category(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x_min, y_min, x_max, y_max) in continuous pixel coordinates."""
        return (float(self.x0), float(self.y0), float(self.x0 + self.size), float(self.y0 + self.size))

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.size / 2.0, self.y0 + self.size / 2.0)

    @property
    def polygon(self) -> tuple[tuple[float, float], ...]:
        """The outline as a polygon (the COCO segmentation): exact for cube and triangle."""
        x0, y0, s = float(self.x0), float(self.y0), float(self.size)
        if self.shape == "cube":
            return ((x0, y0), (x0 + s, y0), (x0 + s, y0 + s), (x0, y0 + s))
        if self.shape == "triangle":
            return ((x0 + s / 2.0, y0), (x0 + s, y0 + s), (x0, y0 + s))
        cx, cy, r = x0 + s / 2.0, y0 + s / 2.0, s / 2.0
        angles = np.linspace(0.0, 2.0 * np.pi, CIRCLE_VERTICES, endpoint=False)
        return tuple((float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a in angles)

    def inside_point(self, rng: np.random.Generator) -> tuple[float, float]:
        """A click on the object: uniform over a shrunken copy of its shape, so it is inside."""
        s = self.size
        cx, cy = self.center
        if self.shape == "ball":
            r = 0.35 * s * np.sqrt(rng.uniform())
            a = rng.uniform(0.0, 2.0 * np.pi)
            return (float(cx + r * np.cos(a)), float(cy + r * np.sin(a)))
        if self.shape == "cube":
            return (float(cx + rng.uniform(-0.35, 0.35) * s), float(cy + rng.uniform(-0.35, 0.35) * s))
        # triangle: inside the middle band, within the sloped sides
        v = rng.uniform(0.45, 0.85)  # fraction of the height from the apex
        u = rng.uniform(-0.35, 0.35) * v  # half-width at that height is v / 2
        return (float(cx + u * s), float(self.y0 + v * s))

    @property
    def size_word(self) -> str:
        if self.size < SMALL_BELOW:
            return "small"
        if self.size >= LARGE_FROM:
            return "large"
        return ""

    @property
    def horizontal_word(self) -> str:
        cx = self.center[0]
        return "left" if cx < WIDTH / 3 else "right" if cx >= 2 * WIDTH / 3 else "middle"

    @property
    def vertical_word(self) -> str:
        cy = self.center[1]
        return "top" if cy < HEIGHT / 3 else "bottom" if cy >= 2 * HEIGHT / 3 else "middle"


@dataclass(frozen=True)
class Variant:
    """How a split's frames are drawn. ``STANDARD`` is the documented world (training and the
    validation/test splits); the others are the named hard splits of docs/world.md."""

    name: str = "standard"
    min_objects: int = MIN_OBJECTS
    max_objects: int = MAX_OBJECTS
    sizes: tuple[int, ...] = tuple(range(MIN_SIZE, MAX_SIZE + 1))  # drawn uniformly
    tables: tuple[str, ...] = tuple(TABLE_TONES)
    duplicate: bool = False  # one colour-shape pair occurs twice (drawn first, so both are placed)
    overlap: bool = False  # objects 2 and 4 (when placed) each partly overlap one earlier object


STANDARD = Variant()
VARIANTS: dict[str, Variant] = {
    "standard": STANDARD,
    "crowded": Variant("crowded", min_objects=6, max_objects=8),
    "same_category": Variant("same_category", min_objects=2, max_objects=5, duplicate=True),
    "sizes": Variant("sizes", sizes=tuple(range(12, MIN_SIZE)) + tuple(range(MAX_SIZE + 1, 97))),
    "overlap": Variant("overlap", min_objects=2, max_objects=4, overlap=True),
    "tables": Variant("tables", tables=tuple(OTHER_TABLE_TONES)),
}
OVERLAP_RANGE = (0.1, 0.4)  # the overlap split: intersection / smaller box area


@dataclass(frozen=True)
class Scene:
    """One frame's content: the table and its objects (in drawing order)."""

    seed: int
    index: int
    table: str
    table_rgb: tuple[int, int, int]
    light_angle: float  # radians; direction in which the lighting gain rises
    light_gain: tuple[float, float]  # gain at the dark and at the bright side
    objects: tuple[WorldObject, ...] = field(default_factory=tuple)
    variant: str = "standard"

    @property
    def size(self) -> tuple[int, int]:
        return (WIDTH, HEIGHT)


def _boxes_clear(a: tuple[float, ...], b: tuple[float, ...], gap: float) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _overlap_ratio(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _placement_ok(box: tuple[int, ...], placed: list[WorldObject], overlap: bool, overlapped: set[int]) -> int | None:
    """None when ``box`` may not go there; else the index of the object it overlaps (-1: none).

    Standard: clear of every placed box by MIN_GAP. Overlap split, for the 2nd and 4th object: it
    overlaps exactly one placed object that nothing overlaps yet, by OVERLAP_RANGE of the smaller
    box, and is clear of the rest (the 1st and 3rd are placed as in the standard world)."""
    if not overlap or len(placed) % 2 == 0:
        return -1 if all(_boxes_clear(box, o.box, MIN_GAP) for o in placed) else None
    hit = -1
    for k, o in enumerate(placed):
        if _boxes_clear(box, o.box, MIN_GAP):
            continue
        ratio = _overlap_ratio(box, o.box)
        if hit >= 0 or k in overlapped or not OVERLAP_RANGE[0] <= ratio <= OVERLAP_RANGE[1]:
            return None
        hit = k
    return hit if hit >= 0 else None


def sample_scene(seed: int, index: int, variant: Variant | str = STANDARD) -> Scene:
    """Draw frame ``index`` of the split ``seed`` (the order of draws is part of the contract);
    ``variant`` (a Variant or a name in VARIANTS) selects a hard split's rules."""
    if isinstance(variant, str):
        if variant not in VARIANTS:
            raise ValueError(f"unknown world variant {variant!r}; known: {', '.join(VARIANTS)}")
        variant = VARIANTS[variant]
    rng = np.random.default_rng([int(seed), int(index)])
    tones = {**TABLE_TONES, **OTHER_TABLE_TONES}
    table = variant.tables[int(rng.integers(len(variant.tables)))]
    base = np.array(tones[table])
    table_rgb = tuple(int(v) for v in np.clip(base + rng.integers(-TABLE_JITTER, TABLE_JITTER + 1, 3), 0, 255))
    light_angle = float(rng.uniform(0.0, 2.0 * np.pi))
    lo, hi = LIGHT_RANGE
    light_gain = (float(rng.uniform(lo, 1.0)), float(rng.uniform(1.0, hi)))
    n_objects = int(rng.integers(variant.min_objects, variant.max_objects + 1))
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    chosen = list(rng.choice(len(pairs), size=n_objects - int(variant.duplicate), replace=False))
    if variant.duplicate:
        chosen.insert(0, chosen[0])  # the pair that occurs twice comes first: both copies find a place
    objects: list[WorldObject] = []
    overlapped: set[int] = set()
    sizes = variant.sizes
    for k in chosen:
        colour, shape = pairs[int(k)]
        size = int(sizes[int(rng.integers(len(sizes)))])  # standard: the same draw as integers(24, 65)
        rgb = tuple(
            int(v) for v in np.clip(np.array(COLOURS[colour]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255)
        )
        for _ in range(PLACEMENT_TRIES):
            x0 = int(rng.integers(EDGE_MARGIN, WIDTH - EDGE_MARGIN - size + 1))
            y0 = int(rng.integers(EDGE_MARGIN, HEIGHT - EDGE_MARGIN - size + 1))
            hit = _placement_ok((x0, y0, x0 + size, y0 + size), objects, variant.overlap, overlapped)
            if hit is not None:
                if hit >= 0:
                    overlapped.update((hit, len(objects)))
                objects.append(WorldObject(colour, shape, rgb, size, x0, y0))  # type: ignore[arg-type]
                break
        # an object that finds no free place after PLACEMENT_TRIES draws is left out
    return Scene(int(seed), int(index), table, table_rgb, light_angle, light_gain, tuple(objects),  # type: ignore[arg-type]
                 variant.name)


def _draw_shape(draw, obj: WorldObject, fill) -> None:  # noqa: ANN001 (PIL ImageDraw)
    x0, y0, s = obj.x0, obj.y0, obj.size
    if obj.shape == "cube":
        draw.rectangle((x0, y0, x0 + s - 1, y0 + s - 1), fill=fill)
    elif obj.shape == "ball":
        draw.ellipse((x0, y0, x0 + s - 1, y0 + s - 1), fill=fill)
    else:
        draw.polygon([(x0 + (s - 1) / 2.0, y0), (x0 + s - 1, y0 + s - 1), (x0, y0 + s - 1)], fill=fill)


def object_masks(scene: Scene) -> np.ndarray:
    """(n_objects, H, W) bool: the pixels each object covers, exactly as ``render`` draws them."""
    from PIL import Image, ImageDraw

    masks = np.zeros((len(scene.objects), HEIGHT, WIDTH), dtype=bool)
    for k, obj in enumerate(scene.objects):
        image = Image.new("L", (WIDTH, HEIGHT), 0)
        _draw_shape(ImageDraw.Draw(image), obj, 255)
        masks[k] = np.asarray(image) > 0
    return masks


def visible_masks(scene: Scene) -> np.ndarray:
    """(n_objects, H, W) bool: the pixels of each object no later object covers (what the frame shows)."""
    masks = object_masks(scene)
    for k in range(len(masks) - 2, -1, -1):
        masks[k] &= ~masks[k + 1:].any(axis=0)
    return masks


def render(scene: Scene) -> np.ndarray:
    """The frame as an (H, W, 3) uint8 RGB array. Noise is drawn after the scene, from its own stream."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([scene.seed, scene.index, 1])
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    # lighting: gain ramps linearly along light_angle across the frame
    d = (xs - WIDTH / 2) * np.cos(scene.light_angle) + (ys - HEIGHT / 2) * np.sin(scene.light_angle)
    extent = 0.5 * (abs(WIDTH * np.cos(scene.light_angle)) + abs(HEIGHT * np.sin(scene.light_angle)))
    t = (d / max(extent, 1e-6) + 1.0) / 2.0
    gain = scene.light_gain[0] + (scene.light_gain[1] - scene.light_gain[0]) * t
    table = np.array(scene.table_rgb, np.float32)[None, None, :] * gain[..., None]
    table += rng.normal(0.0, NOISE_STD, table.shape).astype(np.float32)
    image = Image.fromarray(np.clip(table, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_shape(draw, obj, obj.rgb)
    return np.asarray(image, dtype=np.uint8).copy()
