"""A procedural text-to-video world: patterned shapes moving on dark backgrounds, with captions and truth.

Public API (ToyBench, the dataset writer and the trainers read only these names):

- Vocabulary: `SHAPES`, `COLOURS` (name -> RGB), `PATTERNS`, `BACKGROUNDS` (name -> RGB), `DIRECTIONS`
  (name -> unit vector in image coordinates, x to the right, y down), `CARDINAL_DIRECTIONS`,
  `HELDOUT_TRIPLES` and `HELDOUT_PATTERNS`, `caption_vocabulary()`.
- `WorldConfig`: frame count, size and the sampling probabilities; `DEFAULT_WORLD` is 17 frames at 64x64.
- `ObjectSpec`, `Scene`: a frozen, fully explicit description of one clip. `Scene.caption()`,
  `Scene.prompt()` (the attributes the caption asks for), `Scene.render()` -> uint8 (F, H, W, 3),
  `Scene.masks()` -> bool (F, K, H, W), `Scene.centroids()` / `Scene.centers()` -> float (F, K, 2) as (x, y),
  `Scene.to_dict()` / `Scene.from_dict()`.
- `PromptObject`, `Prompt`, `parse_caption(text) -> Prompt`: what a caption asks for, for judging any video.
- `pattern_darkness(pattern, u, v, period)`: the interior pattern in object coordinates, which ToyBench's
  detail dimension also renders as its template.
- `sample_scene(rng, split, config)`, `seeded_scene(seed, index, split, config)`,
  `eval_prompts(n, split, seed, config)`: scene sampling, per-clip reproducible streams, and the fixed
  evaluation prompt set.

Geometry: pixel (row i, column j) has its centre at (x, y) = (j + 0.5, i + 0.5); the frame spans [0, W] x
[0, H]. Each object has a half-size h: a circle of radius h, a square of side 2h, or an upward triangle with
a 2h x 2h bounding box (apex at the top). Its position is the centre of that bounding box and moves at a
constant `speed` (px per frame) along its direction; with `bounce` it reflects off the borders, otherwise it
stays fully inside the frame for the whole clip. Two objects' bounding boxes never overlap (at least
`PAIR_GAP` px apart on some axis in every frame), and two objects always have different colours, so a judge
can tell them apart by colour. A bouncing object's first bounce falls in the middle half of the clip, so its
prompted direction is visible in the first quarter of the frames.

Interior detail: an object is plain or carries a pattern named in its caption ("striped" or "checked")
with a period of `PATTERN_PERIOD` of the shorter side (12 px at 64x64: three latent pixels of the toy's 4x
VAE, so the full-resolution stage can hold it while the half- and quarter-size stages cannot). The pattern
is drawn in the object's own coordinates (it moves with the object) by darkening the object's colour to
`PATTERN_SHADE` of itself, anti-aliased like the edges. A sampler that blurs loses it, which is what makes
sampling steps matter in this world. (At 6 and 8 px, a warm-started toy VAE reconstructed no pattern after
200 steps; 12 px is what its resolution affords.)

Captions follow one grammar (all lower case, single spaces):

    "a red circle moving left on a dark blue background"
    "a red striped circle moving left on a dark blue background"
    "a red circle bouncing up and right on a black gradient background"
    "a green square and a yellow triangle moving down on a dark gray background"        (shared motion)
    "a green square moving up and a white circle bouncing left on a dark red background" (separate motion)

Held-out split: the (colour, shape, direction) triples in `HELDOUT_TRIPLES` never occur in "train" scenes;
every "heldout" scene's first object uses one of them, with the pattern `HELDOUT_PATTERNS` gives it. Every
colour, shape, pattern and direction (and every pair of them) still occurs in training.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import asdict, dataclass

import numpy as np

from pyramidal_wan.errors import InputError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Saturated object colours; the closest pair (blue, purple) is 160 apart in RGB, and every colour is at least
# 120 from every background (including the lifted end of a gradient), so nearest-palette judging is robust.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (235, 40, 40),
    "yellow": (240, 220, 40),
    "green": (40, 210, 60),
    "blue": (50, 95, 250),
    "purple": (205, 60, 235),
    "white": (240, 240, 240),
}

# Interior patterns; "plain" has no word in captions ("a red circle"), the others precede the shape.
PATTERNS: tuple[str, ...] = ("plain", "striped", "checked")
# Pattern period as a fraction of the shorter frame side (12 px at 64x64), and the brightness of its dark
# phase relative to the object colour. 0.45 keeps every dark phase at least 40 RGB levels from every
# background while the stripes stay plainly visible.
PATTERN_PERIOD = 12 / 64
PATTERN_SHADE = 0.45

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (10, 10, 12),
    "dark blue": (14, 22, 70),
    "dark green": (12, 50, 26),
    "dark gray": (56, 56, 56),
    "dark red": (68, 16, 20),
}

# A gradient background goes from the named colour at the top row to the colour plus this lift at the bottom.
GRADIENT_LIFT = 40

_DIAG = 1.0 / math.sqrt(2.0)
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up and left": (-_DIAG, -_DIAG),
    "up and right": (_DIAG, -_DIAG),
    "down and left": (-_DIAG, _DIAG),
    "down and right": (_DIAG, _DIAG),
}
CARDINAL_DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")

# Twelve (colour, shape, direction) triples held out of training: each colour twice, each shape four times,
# each direction once or twice; seven of them use cardinal directions, so a cardinal-only world keeps a
# held-out split.
HELDOUT_TRIPLES: tuple[tuple[str, str, str], ...] = (
    ("red", "circle", "left"),
    ("yellow", "square", "down"),
    ("green", "triangle", "down and left"),
    ("blue", "circle", "right"),
    ("purple", "square", "up and left"),
    ("white", "triangle", "down and right"),
    ("red", "circle", "up"),
    ("yellow", "square", "up and right"),
    ("green", "triangle", "left"),
    ("blue", "circle", "down"),
    ("purple", "square", "down and left"),
    ("white", "triangle", "right"),
)

# The pattern each held-out triple is shown with in "heldout" scenes (four triples per pattern).
HELDOUT_PATTERNS: dict[tuple[str, str, str], str] = {
    triple: PATTERNS[i % len(PATTERNS)] for i, triple in enumerate(HELDOUT_TRIPLES)
}

SPLITS: tuple[str, ...] = ("train", "heldout")

# Minimum gap (px) between two objects' bounding boxes, on at least one axis, in every frame.
PAIR_GAP = 2.0
# Non-bouncing objects keep this many px between their bounding box and the frame border.
BORDER_MARGIN = 1.0

_VERBS = ("moving", "bouncing")
# Seed-sequence stream tags: the dataset/trainer clip stream and the evaluation prompt stream never collide.
_CLIP_STREAM = 0
_EVAL_STREAM = 1


@dataclass(frozen=True)
class WorldConfig:
    """How scenes are sampled: clip geometry and the probability of each kind of scene.

    Sizes and speeds are relative to the frame so that small test worlds stay feasible; at the defaults
    (17 frames, 64x64) they are half-sizes of 8-11 px (6-9 px for two objects) and 1.2-1.8 px per frame.
    """

    num_frames: int = 17
    height: int = 64
    width: int = 64
    directions: tuple[str, ...] = tuple(DIRECTIONS)  # directions that may occur
    p_two_objects: float = 0.25  # probability of a two-object scene
    p_shared_motion: float = 0.5  # probability that two objects share direction and bounce
    p_bounce: float = 0.2  # probability that an object bounces off the borders
    p_gradient: float = 0.3  # probability of a vertical-gradient background
    p_pattern: float = 2 / 3  # probability that an object is patterned (so plain, striped, checked: 1/3 each)
    size_range: tuple[float, float] = (8 / 64, 11 / 64)  # half-size / min(H, W), one object
    pair_size_range: tuple[float, float] = (6 / 64, 9 / 64)  # half-size / min(H, W), two objects
    travel_range: tuple[float, float] = (0.3, 0.45)  # distance over the clip / min(H, W)

    def __post_init__(self) -> None:
        if self.num_frames < 2 or self.height < 16 or self.width < 16:
            raise InputError(
                f"toy world needs at least 2 frames of 16x16 pixels, got {self.num_frames} frames of "
                f"{self.height}x{self.width}"
            )
        unknown = [d for d in self.directions if d not in DIRECTIONS]
        if unknown or not self.directions:
            raise InputError(
                f"toy world directions must be a non-empty subset of {list(DIRECTIONS)}, got {unknown}"
            )
        for name in ("p_two_objects", "p_shared_motion", "p_bounce", "p_gradient", "p_pattern"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"toy world {name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def side(self) -> int:
        """The shorter frame side in pixels, the unit of the relative sizes and speeds."""
        return min(self.height, self.width)

    @property
    def pattern_period(self) -> float:
        """The interior patterns' period in pixels."""
        return PATTERN_PERIOD * self.side


DEFAULT_WORLD = WorldConfig()


@dataclass(frozen=True)
class ObjectSpec:
    """One moving object: what it is, where it starts (bounding-box centre, px) and how it moves."""

    shape: str
    colour: str
    direction: str
    speed: float  # px per frame along the direction's unit vector
    bounce: bool
    size: float  # half-size h in px
    start: tuple[float, float]  # (x, y) of the bounding-box centre in frame 0
    pattern: str = "plain"  # interior pattern, one of PATTERNS

    def triple(self) -> tuple[str, str, str]:
        """The (colour, shape, direction) triple that decides the split this object belongs to."""
        return (self.colour, self.shape, self.direction)


@dataclass(frozen=True)
class PromptObject:
    """The attributes a caption asks of one object."""

    colour: str
    shape: str
    direction: str
    bounce: bool
    pattern: str = "plain"


@dataclass(frozen=True)
class Prompt:
    """Everything a caption asks for: the objects in caption order and the background."""

    objects: tuple[PromptObject, ...]
    background: str
    gradient: bool


@dataclass(frozen=True)
class Scene:
    """A fully specified clip: objects (drawn in order, later on top), background and clip geometry."""

    objects: tuple[ObjectSpec, ...]
    background: str
    gradient: bool = False
    num_frames: int = 17
    height: int = 64
    width: int = 64

    def caption(self) -> str:
        """The caption of this scene in the world's grammar (see the module docstring)."""
        bg = f"{self.background} gradient" if self.gradient else self.background
        tail = f"on a {bg} background"
        if len(self.objects) == 1:
            return f"{_noun(self.objects[0])} {_motion(self.objects[0])} {tail}"
        first, second = self.objects
        if _motion(first) == _motion(second):
            return f"{_noun(first)} and {_noun(second)} {_motion(first)} {tail}"
        return f"{_noun(first)} {_motion(first)} and {_noun(second)} {_motion(second)} {tail}"

    def prompt(self) -> Prompt:
        """The attributes the caption asks for; equal to `parse_caption(self.caption())`."""
        objs = tuple(PromptObject(o.colour, o.shape, o.direction, o.bounce, o.pattern) for o in self.objects)
        return Prompt(objs, self.background, self.gradient)

    def centers(self) -> np.ndarray:
        """Bounding-box centres per frame and object, float (F, K, 2) as (x, y) in px."""
        t = np.arange(self.num_frames, dtype=np.float64)
        out = np.empty((self.num_frames, len(self.objects), 2))
        for k, obj in enumerate(self.objects):
            ux, uy = DIRECTIONS[obj.direction]
            x = obj.start[0] + ux * obj.speed * t
            y = obj.start[1] + uy * obj.speed * t
            if obj.bounce:
                x = _reflect(x, obj.size, self.width - obj.size)
                y = _reflect(y, obj.size, self.height - obj.size)
            out[:, k, 0], out[:, k, 1] = x, y
        return out

    def object_coordinates(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per object, pixel centres relative to its bounding-box centre: (u (F, 1, W), v (F, H, 1))."""
        centers = self.centers().astype(np.float32)
        xs = np.arange(self.width, dtype=np.float32) + 0.5
        ys = np.arange(self.height, dtype=np.float32) + 0.5
        return [
            (
                xs[None, None, :] - centers[:, k, 0, None, None],
                ys[None, :, None] - centers[:, k, 1, None, None],
            )
            for k in range(len(self.objects))
        ]

    def coverage(self) -> np.ndarray:
        """Anti-aliased coverage of each object per frame, float32 (F, K, H, W) in [0, 1]."""
        out = np.empty((self.num_frames, len(self.objects), self.height, self.width), np.float32)
        for k, (obj, (u, v)) in enumerate(zip(self.objects, self.object_coordinates())):
            # A one-pixel linear ramp across the edge: sub-pixel motion renders smoothly instead of jumping.
            out[:, k] = _ramp_coverage(_signed_distance(obj.shape, u, v, obj.size))
        return out

    def masks(self) -> np.ndarray:
        """Which pixels each object covers (coverage >= 0.5), bool (F, K, H, W)."""
        return self.coverage() >= 0.5

    def centroids(self) -> np.ndarray:
        """Centroid of each object's mask per frame, float (F, K, 2) as (x, y) in px.

        For a triangle this sits h/3 below the bounding-box centre; it is what a pixel judge measures.
        """
        masks = self.masks()
        ys, xs = np.mgrid[0 : self.height, 0 : self.width]
        area = masks.sum(axis=(2, 3)).clip(min=1)
        cx = (masks * (xs + 0.5)).sum(axis=(2, 3)) / area
        cy = (masks * (ys + 0.5)).sum(axis=(2, 3)) / area
        return np.stack([cx, cy], axis=-1)

    def background_image(self) -> np.ndarray:
        """The background without objects, float32 (H, W, 3) in [0, 255]."""
        colour = np.asarray(BACKGROUNDS[self.background], np.float32)
        image = np.broadcast_to(colour, (self.height, self.width, 3)).copy()
        if self.gradient:
            ramp = np.linspace(0.0, 1.0, self.height, dtype=np.float32)[:, None, None]  # (H, 1, 1)
            image = np.minimum(image + GRADIENT_LIFT * ramp, 255.0)
        return image

    def render(self) -> np.ndarray:
        """The clip's frames, uint8 (F, H, W, 3)."""
        frames = np.broadcast_to(
            self.background_image(), (self.num_frames, self.height, self.width, 3)
        ).copy()
        coverage = self.coverage()
        period = PATTERN_PERIOD * min(self.height, self.width)
        for k, (obj, (u, v)) in enumerate(zip(self.objects, self.object_coordinates())):
            alpha = coverage[:, k, :, :, None]  # (F, H, W, 1)
            shade = 1.0 - (1.0 - PATTERN_SHADE) * pattern_darkness(obj.pattern, u, v, period)[..., None]
            colour = np.asarray(COLOURS[obj.colour], np.float32) * shade  # (F, H, W, 3)
            frames = frames * (1.0 - alpha) + colour * alpha
        return np.rint(frames).astype(np.uint8)

    def split(self) -> str:
        """'heldout' if any object uses a held-out (colour, shape, direction) triple, else 'train'."""
        return "heldout" if any(o.triple() in _HELDOUT_SET for o in self.objects) else "train"

    def to_dict(self) -> dict:
        """A JSON-ready dict; `Scene.from_dict` rebuilds an equal scene that renders identically."""
        data = asdict(self)
        for obj in data["objects"]:
            obj["start"] = list(obj["start"])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        """Rebuild a scene from `to_dict()` output, checking every name against the vocabulary."""
        try:
            objects = tuple(ObjectSpec(**{**o, "start": tuple(o["start"])}) for o in data["objects"])
            scene = cls(
                objects=objects,
                background=data["background"],
                gradient=bool(data["gradient"]),
                num_frames=int(data["num_frames"]),
                height=int(data["height"]),
                width=int(data["width"]),
            )
        except (KeyError, TypeError) as err:
            raise InputError(f"not a toy scene dict ({err}); expected the output of Scene.to_dict()") from err
        _check_names(scene)
        return scene


_HELDOUT_SET = frozenset(HELDOUT_TRIPLES)


def _noun(obj: ObjectSpec) -> str:
    pattern = "" if obj.pattern == "plain" else f"{obj.pattern} "
    return f"a {obj.colour} {pattern}{obj.shape}"


def _motion(obj: ObjectSpec) -> str:
    return f"{_VERBS[int(obj.bounce)]} {obj.direction}"


def _check_names(scene: Scene) -> None:
    for obj in scene.objects:
        known = obj.shape in SHAPES and obj.colour in COLOURS and obj.direction in DIRECTIONS
        if not known or obj.pattern not in PATTERNS:
            raise InputError(
                f"unknown toy object {obj.colour!r} {obj.pattern!r} {obj.shape!r} {obj.direction!r}"
            )
    if scene.background not in BACKGROUNDS or not 1 <= len(scene.objects) <= 2:
        raise InputError(f"toy scenes have 1-2 objects on one of {list(BACKGROUNDS)}")


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold an unbounded coordinate into [lo, hi] as a ball bouncing between two walls (a triangle wave)."""
    period = 2.0 * (hi - lo)
    u = np.mod(x - lo, period)
    return lo + np.where(u > hi - lo, period - u, u)


def _ramp_coverage(sdf: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] of the region where a signed distance is negative, with a one-pixel ramp."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _distance_to_lattice(x: np.ndarray, period: float) -> np.ndarray:
    """Distance from x to the nearest multiple of `period`."""
    return np.abs(np.mod(x / period + 0.5, 1.0) - 0.5) * period


def pattern_darkness(pattern: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """How much of each pixel the pattern's dark phase covers, in [0, 1], at object coordinates (u, v).

    striped: horizontal bands half a period wide; checked: squares half a period wide (the exclusive-or of
    a horizontal and a vertical band). The lattice sits half a period off the object's centre, so an
    object a period or two across shows two dark stripes rather than one central band. Anti-aliased with
    the edges' one-pixel ramp. (Dots were tried and dropped: at a period the toy VAE resolves, the dots of
    an object this small sit on its rim and read as notches in its outline.)
    """
    if pattern == "plain":
        return np.zeros(np.broadcast_shapes(u.shape, v.shape), np.float32)
    u, v = u + period / 2, v + period / 2
    rows = _ramp_coverage(_distance_to_lattice(v, period) - period / 4)
    if pattern == "striped":
        return np.broadcast_to(rows, np.broadcast_shapes(u.shape, v.shape))
    if pattern == "checked":
        cols = _ramp_coverage(_distance_to_lattice(u, period) - period / 4)
        return cols + rows - 2.0 * cols * rows
    raise InputError(f"unknown toy pattern {pattern!r}; expected one of {PATTERNS}")


def _signed_distance(shape: str, px: np.ndarray, py: np.ndarray, h: float) -> np.ndarray:
    """Signed distance (px, negative inside) to a shape of half-size h centred at the origin.

    Exact inside and near straight edges, which is all the one-pixel anti-aliasing ramp needs.
    """
    if shape == "circle":
        return np.sqrt(px * px + py * py) - h
    if shape == "square":
        return np.maximum(np.abs(px), np.abs(py)) - h
    if shape == "triangle":
        # Apex (0, -h), base corners (+-h, h): the slanted edges satisfy 2|x| = y + h.
        return np.maximum(py - h, (2.0 * np.abs(px) - py - h) / math.sqrt(5.0))
    raise InputError(f"unknown toy shape {shape!r}; expected one of {SHAPES}")


def caption_vocabulary() -> list[str]:
    """Every word a caption can contain, sorted (the toy tokenizer's vocabulary)."""
    phrases = [
        *SHAPES,
        *COLOURS,
        *PATTERNS[1:],
        *BACKGROUNDS,
        *DIRECTIONS,
        *_VERBS,
        "a",
        "and",
        "on",
        "gradient",
        "background",
    ]
    return sorted({word for phrase in phrases for word in phrase.split()})


def _alternatives(names) -> str:
    # Longest first so that "up and left" is tried before "up".
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


_NOUN_RE = (
    rf"a (?P<c{{i}}>{_alternatives(COLOURS)}) (?:(?P<p{{i}}>{_alternatives(PATTERNS[1:])}) )?"
    rf"(?P<s{{i}}>{_alternatives(SHAPES)})"
)
_MOTION_RE = rf"(?P<v{{i}}>moving|bouncing) (?P<d{{i}}>{_alternatives(DIRECTIONS)})"
_TAIL_RE = rf" on a (?P<bg>{_alternatives(BACKGROUNDS)})(?P<grad> gradient)? background"
_CAPTION_RES = (
    re.compile("^" + _NOUN_RE.format(i=0) + " " + _MOTION_RE.format(i=0) + _TAIL_RE + "$"),
    re.compile(
        "^"
        + _NOUN_RE.format(i=0)
        + " and "
        + _NOUN_RE.format(i=1)
        + " "
        + _MOTION_RE.format(i=0)
        + _TAIL_RE
        + "$"
    ),
    re.compile(
        "^"
        + _NOUN_RE.format(i=0)
        + " "
        + _MOTION_RE.format(i=0)
        + " and "
        + _NOUN_RE.format(i=1)
        + " "
        + _MOTION_RE.format(i=1)
        + _TAIL_RE
        + "$"
    ),
)


def parse_caption(text: str) -> Prompt:
    """The attributes a toy caption asks for (case and extra spaces ignored).

    Raises `InputError` if the text is not in the world's grammar.
    """
    clean = " ".join(text.lower().split()).rstrip(".")
    for pattern in _CAPTION_RES:
        match = pattern.match(clean)
        if match is None:
            continue
        groups = match.groupdict()
        objects = []
        for i in range(2 if groups.get("c1") else 1):
            m = i if groups.get(f"v{i}") else 0  # shared motion reuses the first object's verb and direction
            bounce = groups[f"v{m}"] == "bouncing"
            pattern = groups[f"p{i}"] or "plain"
            objects.append(PromptObject(groups[f"c{i}"], groups[f"s{i}"], groups[f"d{m}"], bounce, pattern))
        return Prompt(tuple(objects), groups["bg"], groups["grad"] is not None)
    raise InputError(
        f"not a toy caption: {text!r}; expected e.g. 'a red circle moving left on a dark blue background'"
    )


def _allowed_triples(split: str, config: WorldConfig) -> list[tuple[str, str, str]]:
    """(colour, shape, direction) triples a split's first object may use, within the config's directions."""
    if split not in SPLITS:
        raise InputError(f"unknown toy split {split!r}; expected one of {SPLITS}")
    all_triples = itertools.product(COLOURS, SHAPES, config.directions)
    if split == "heldout":
        return [t for t in HELDOUT_TRIPLES if t[2] in config.directions]
    return [t for t in all_triples if t not in _HELDOUT_SET]


def _start_interval(lo: float, hi: float, step: float, travel: int) -> tuple[float, float]:
    """Start coordinates whose straight path (step px per frame for `travel` frames) stays in [lo, hi]."""
    return lo - min(0.0, step * travel), hi - max(0.0, step * travel)


def _first_bounce(start: float, step: float, lo: float, hi: float) -> float:
    """Frame time at which a coordinate moving step px per frame from `start` first reaches lo or hi."""
    if step > 0:
        return (hi - start) / step
    if step < 0:
        return (lo - start) / step
    return math.inf


def _place_object(rng: np.random.Generator, obj: ObjectSpec, config: WorldConfig) -> ObjectSpec | None:
    """A start position for `obj` that keeps the scene judgeable, or None if none was found."""
    travel = config.num_frames - 1
    ux, uy = DIRECTIONS[obj.direction]
    steps = (ux * obj.speed, uy * obj.speed)
    sides = (config.width, config.height)
    if not obj.bounce:
        bounds = []
        for step, side in zip(steps, sides):
            lo, hi = _start_interval(obj.size + BORDER_MARGIN, side - obj.size - BORDER_MARGIN, step, travel)
            if lo > hi:
                return None
            bounds.append((lo, hi))
        start = tuple(round(float(rng.uniform(lo, hi)), 2) for lo, hi in bounds)
        return _replace_start(obj, start)
    # Bouncing: the first bounce (on either axis) falls in the middle half of the clip.
    window = (travel / 4.0, travel - travel / 4.0)
    for _ in range(64):
        start = tuple(round(float(rng.uniform(obj.size, side - obj.size)), 2) for side in sides)
        first = min(
            _first_bounce(start[a], steps[a], obj.size, sides[a] - obj.size)
            for a in range(2)
            if steps[a] != 0
        )
        if window[0] <= first <= window[1]:
            return _replace_start(obj, start)
    return None


def _replace_start(obj: ObjectSpec, start: tuple[float, float]) -> ObjectSpec:
    return dataclasses.replace(obj, start=start)


def _apart(scene: Scene) -> bool:
    """True if the two objects' bounding boxes are at least PAIR_GAP apart on some axis in every frame."""
    if len(scene.objects) < 2:
        return True
    centers = scene.centers()  # (F, 2, 2)
    reach = scene.objects[0].size + scene.objects[1].size + PAIR_GAP
    gap = np.abs(centers[:, 0] - centers[:, 1])  # (F, 2)
    return bool(np.all((gap > reach).any(axis=1)))


def _draw_object(
    rng: np.random.Generator,
    colour: str,
    shape: str,
    direction: str,
    bounce: bool,
    pattern: str,
    size_range: tuple[float, float],
    config: WorldConfig,
) -> ObjectSpec:
    """An object with the given identity and motion and a random size and speed (not yet placed)."""
    size = round(float(rng.uniform(*size_range)) * config.side, 2)
    speed = round(float(rng.uniform(*config.travel_range)) * config.side / (config.num_frames - 1), 3)
    return ObjectSpec(shape, colour, direction, speed, bounce, size, (0.0, 0.0), pattern)


def _draw_pattern(rng: np.random.Generator, config: WorldConfig) -> str:
    return _pick(rng, PATTERNS[1:]) if rng.random() < config.p_pattern else "plain"


def _draw_identities(
    rng: np.random.Generator, split: str, config: WorldConfig, triple: tuple[str, str, str] | None
) -> list[tuple[str, str, str, bool, str]]:
    """(colour, shape, direction, bounce, pattern) for each object of a new scene, respecting the split."""
    first = triple or tuple(_pick(rng, _allowed_triples(split, config)))
    pattern = _draw_pattern(rng, config)  # drawn for every split, so both keep the same random stream
    if split == "heldout":
        pattern = HELDOUT_PATTERNS[first]
    identities = [(*first, bool(rng.random() < config.p_bounce), pattern)]
    if rng.random() < config.p_two_objects:
        shared = rng.random() < config.p_shared_motion
        direction = first[2] if shared else _pick(rng, config.directions)
        bounce = identities[0][3] if shared else bool(rng.random() < config.p_bounce)
        # The second object only has to avoid leaking held-out triples into "train".
        candidates = [
            (c, s)
            for c, s in itertools.product(COLOURS, SHAPES)
            if c != first[0] and (split == "heldout" or (c, s, direction) not in _HELDOUT_SET)
        ]
        colour, shape = _pick(rng, candidates)
        identities.append((colour, shape, direction, bounce, _draw_pattern(rng, config)))
    return identities


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def sample_scene(
    rng: np.random.Generator,
    split: str = "train",
    config: WorldConfig = DEFAULT_WORLD,
    triple: tuple[str, str, str] | None = None,
) -> Scene:
    """Draw one judgeable scene of `split` from `rng`.

    `triple` fixes the first object's (colour, shape, direction); it must belong to the split. A train scene
    uses no held-out triple; a heldout scene's first object uses one (its second object may use any).
    """
    if triple is not None and tuple(triple) not in _allowed_triples(split, config):
        raise InputError(f"triple {triple} is not allowed in the {split!r} split of this world")
    for _ in range(1000):
        identities = _draw_identities(rng, split, config, triple)
        size_range = config.size_range if len(identities) == 1 else config.pair_size_range
        objects = []
        for colour, shape, direction, bounce, pattern in identities:
            placed = _place_object(
                rng, _draw_object(rng, colour, shape, direction, bounce, pattern, size_range, config), config
            )
            if placed is None:
                break
            objects.append(placed)
        if len(objects) < len(identities):
            continue
        background = _pick(rng, list(BACKGROUNDS))
        gradient = bool(rng.random() < config.p_gradient)
        scene = Scene(tuple(objects), background, gradient, config.num_frames, config.height, config.width)
        if _apart(scene):
            return scene
    raise RuntimeError(f"no judgeable toy scene found in 1000 draws for {config}; the world is too cramped")


def _split_index(split: str) -> int:
    if split not in SPLITS:
        raise InputError(f"unknown toy split {split!r}; expected one of {SPLITS}")
    return SPLITS.index(split)


def seeded_scene(seed: int, index: int, split: str = "train", config: WorldConfig = DEFAULT_WORLD) -> Scene:
    """The `index`-th scene of the clip stream for (`seed`, `split`).

    Each clip has its own generator, so any clip of a dataset or a training batch can be regenerated on its
    own, and a resumed job draws exactly the clips it would have drawn without the interruption.
    """
    rng = np.random.default_rng([_CLIP_STREAM, seed, _split_index(split), index])
    return sample_scene(rng, split, config)


def eval_prompts(
    n: int, split: str = "train", seed: int = 0, config: WorldConfig = DEFAULT_WORLD
) -> list[Scene]:
    """A fixed, seeded evaluation set of `n` scenes from `split`, balanced over first-object triples.

    The first objects cycle through a seeded permutation of the split's (colour, shape, direction) triples,
    so every combination is covered equally often when `n` is a multiple of their count (132 for train and
    12 for heldout with all eight directions; 65 and 7 with the cardinal ones); everything else is drawn at
    random. The stream is separate from `seeded_scene`'s, so evaluation scenes are not training clips.
    """
    if n < 1:
        raise InputError(f"eval_prompts needs n >= 1, got {n}")
    rng = np.random.default_rng([_EVAL_STREAM, seed, _split_index(split)])
    triples = _allowed_triples(split, config)
    order = rng.permutation(len(triples))
    return [sample_scene(rng, split, config, triples[order[i % len(triples)]]) for i in range(n)]
