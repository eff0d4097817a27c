"""ToyBench: an analytic, VBench-like metric suite for videos of the toy world (no learned judge).

Every video is a uint8 array (F, H, W, 3) judged against the caption that produced it (parsed with
`pyramidal_wan.toy.world.parse_caption`). Sizes are never assumed: thresholds follow the frame's shorter
side and the world's relative size and speed ranges (`WorldConfig`). Every dimension is in [0, 100].

How a video is read (`analyse_video`):

1. Background: per frame, the median of each row, then a robust straight-line fit over the rows
   (least median of absolute deviations over candidate slopes, then least squares on the inlier rows).
   The world's backgrounds are solid or vertical linear gradients, so this recovers them exactly, while
   objects (under half of any row) and a per-frame flicker do not disturb it.
2. Pixels: each pixel is explained as a blend of the background and one palette colour,
   p = b + alpha (c - b). A pixel belongs to colour c's core when the blend fits (alpha in [0.25, 1.5],
   residual <= `FIT_RESIDUAL`) better than for any other colour and alpha >= 0.5 (the world's own
   `masks()` threshold, so blurred edges split the same way). Foreground pixels (farther than
   `FOREGROUND_DISTANCE` from the background) that fit no palette colour form a seventh class, "other",
   so off-palette blobs are still counted as objects. Pixels within `pattern_reach` (half a pattern
   period) of a core that fit a blend with the colour's pattern shade (PATTERN_SHADE c) the same way are
   that colour's dark phase.
3. Each palette class's core joins the dark phase next to it and is closed with a square of radius
   `pattern_gap_radius` (a quarter period), so a striped, checked or dotted object is one solid mask, as a
   person sees it; "other" pixels inside it are dropped. Each class mask is then opened with a 3x3 square
   (removes speckle from noise and one-pixel colour fringes) and split into 8-connected components. A
   component is an object when its area is between `MIN_AREA_FRACTION` of the world's smallest object and
   `MAX_AREA_FACTOR` times its largest, its compactness is at least `MIN_COMPACTNESS` and at least
   `MIN_FIT_FRACTION` of its pixels fit its class before closing; smaller specks are ignored and larger,
   stringy or mostly filled-in blobs are not objects. Per frame and class: the number of objects (for the
   count) and the largest one, whose mask, area, centroid and mean colour the other dimensions judge.
4. Prompted objects are matched to detected classes by colour (the world gives two objects different
   colours); a prompted object whose colour is absent takes the unmatched class seen in most frames, so a
   wrong colour costs the colour dimension only and shape and motion are still judged.

Semantic dimensions (per prompted object, averaged over the objects of the video; then over videos):

- colour: % of frames in which an object of the prompted colour is present.
- shape: % of frames in which the matched object's best template (circle, square or upward triangle with
  the mask's area and centroid) is the prompted shape with IoU >= `SHAPE_MIN_IOU`; ragged blobs fit no
  template that well, which keeps the chance floor low.
- pattern: % of frames in which the matched object's interior reads as the prompted pattern
  (`read_patterns`): each of the world's pattern templates, rendered by `pattern_darkness` at every phase,
  is correlated with the interior; the best one is read if it correlates and shows enough contrast
  (`PATTERN_MIN_CORRELATION`, `PATTERN_MIN_CONTRAST`), else the object reads as plain. A semantic
  dimension because the caption names the pattern as it names the colour and the shape: drawing checks
  for "striped", or no pattern at all, is drawing something else. Heavy blur also ends here: at a blur
  of 1.5 px checks and dots are too faint to read.
- direction: 100 if the least-squares velocity of the matched object's centroid is within 22.5 degrees
  (half the angle between neighbouring directions) of the prompted direction and at least
  `MIN_SPEED_FRACTION` of the world's slowest speed, else 0. Bouncing prompts use the first quarter of
  the clip only, where the world guarantees the prompted direction is visible.
- count (per video): % of frames in which the number of detected objects equals the prompted number.

Quality dimensions (each maps a raw deviation through a linear ramp, 100 at or below its first value and
0 at or above its second):

- temporal_consistency: per object, presence (fraction of frames) x the mean of two ramps, the median
  distance of the object's mean colour from its clip median (`COLOUR_DRIFT_RAMP`, RGB levels) and the
  coefficient of variation of its area (`AREA_VARIATION_RAMP`).
- motion_smoothness: RMS deviation of the object's centroid track from the best prompted path, a
  constant-velocity line for "moving" prompts, and for "bouncing" prompts a path of constant speed with at
  most one reflection per axis (`PATH_RESIDUAL_RAMP`, fractions of the side: 0.5 px and 4 px at 64x64).
- sharpness (patterned prompts only; None for a video of plain objects, and left out of its means): per
  object, the mean over frames of presence x a ramp (`SHARPNESS_RAMP`) of the interior pattern's contrast,
  the least-squares amplitude of the best-fitting template relative to the amplitude the world renders
  (so the real render of the same caption is the reference, 1 by construction). A quality dimension,
  the detail counterpart of VBench's imaging quality: a 1 px blur keeps every attribute readable, so it
  must cost quality, not meaning; it halves the contrast (sharpness about 30). The template fit ignores
  noise, which a raw high-band energy would count as detail.
- background_stability: frames are averaged in blocks of side/16 px; blocks clear of the foreground (by
  2 px) are compared with (a) their median over the first quarter of the clip, so a slow drift or a
  different first frame shows in full (`BACKGROUND_DRIFT_RAMP`), and (b) the captioned background
  (`Scene.background_image()`, the named colour and gradient), so a level error shows even when steady
  (`background_level_ramp`: 0 at the distance between the two closest named backgrounds). Each frame
  scores the worse of its two ramps of the mean RGB distance; a frame with no visible background scores
  0. Pooling averages out pixel grain while flicker, drift and blotches survive it.
- frechet (per set, in `summarize`): the Frechet distance between Gaussians fitted to descriptor
  features (`video_features`) of the generated videos and of the real renders of the same prompts,
  after dividing every feature by the real set's standard deviation (floored at `FEATURE_STD_FLOOR`);
  score = 100 / (1 + FD / `FRECHET_HALF`), 50 at FD = FRECHET_HALF. The hyperbola, unlike an
  exponential, keeps separating models whose distances differ by 10x (ToyBench 1 gave 0 to every
  model). Reference videos are rendered only for `Scene` prompts.

Totals: semantic = mean of the semantic dimensions, quality = mean of the quality dimensions, and
total = (SEMANTIC_WEIGHT semantic + QUALITY_WEIGHT quality) / (sum of weights) with equal weights. VBench
weighs quality 4:1; here the semantic dimensions are exact and are what the toy world exists to measure
(a model learns colour first, shape and motion last), while the quality dimensions saturate for any model
that draws steady blobs. A model drawing perfect, steady blobs of the right colour but the wrong shape
and direction (semantic 50, quality 100) would total 90 at 4:1, which hides the failure; it totals 75 at
1:1. ToyBench totals are therefore not on VBench's scale. Each total comes with total_se, its bootstrap
standard error over prompts (`bootstrap_total_se`: BOOTSTRAP_RESAMPLES resamples, seed BOOTSTRAP_SEED).

Records (`evaluate_videos`, `run_toybench`) are plain JSON dicts, one per (model, schedule, prompt,
seed), written as JSON lines so a partial run resumes without recomputing anything.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyramidal_wan.errors import InputError
from pyramidal_wan.toy.world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    HELDOUT_TRIPLES,
    PATTERN_SHADE,
    PATTERNS,
    SHAPES,
    Prompt,
    PromptObject,
    Scene,
    WorldConfig,
    parse_caption,
    pattern_darkness,
)
from pyramidal_wan.utils.io import atomic_path

TOYBENCH_VERSION = 2  # 2: patterned world (pattern, sharpness), background vs first frames and caption
SEMANTIC_DIMS: tuple[str, ...] = ("colour", "shape", "pattern", "direction", "count")
VIDEO_QUALITY_DIMS: tuple[str, ...] = (
    "temporal_consistency",
    "motion_smoothness",
    "sharpness",
    "background_stability",
)
QUALITY_DIMS: tuple[str, ...] = (*VIDEO_QUALITY_DIMS, "frechet")
SEMANTIC_WEIGHT = 1.0
QUALITY_WEIGHT = 1.0
# The bootstrap standard error of a total (`bootstrap_total_se`): resamples and the seed of their
# generator, fixed so that the same records give the same error in every table.
BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_SEED = 0

CLASS_NAMES: tuple[str, ...] = (*COLOURS, "other")
_PALETTE = np.asarray(list(COLOURS.values()), np.float32)  # (6, 3)
_OTHER = len(COLOURS)

# A pixel this far (RGB L2) from the background is foreground; the weakest colour/background contrast in
# the world is 120 (see world.COLOURS), so even a 1/3 blend at a blurred edge passes.
FOREGROUND_DISTANCE = 40.0
# Largest blend residual (RGB L2) for a palette colour. A pure palette colour fits every other palette
# colour with a residual >= 101 on every world background, and the best fit wins, so labels stay
# unambiguous; 60 tolerates the desaturation and drift of a small VAE.
FIT_RESIDUAL = 60.0
# Blobs smaller than this fraction of the world's smallest object (a triangle, 2 h_min^2) are specks.
MIN_AREA_FRACTION = 0.4
# Blobs larger than this factor times the world's largest object (a square, (2 h_max)^2) are not objects
# (the "other" class of a noise video covers most of the frame, for example).
MAX_AREA_FACTOR = 2.0
# Components less compact than this (area / (4 pi sqrt(det covariance)), see `_component_stats`) are not
# objects: stringy or sponge-like blobs, such as the off-palette pixels of a noise video.
MIN_COMPACTNESS = 0.6
# Closed components with a smaller share of pixels that fit their class (core or dark phase) are not
# objects: closing fills only the gaps of a pattern, while closing the sparse palette pixels of a noise
# video makes blobs that are mostly filler. Measured on 20 rendered clips and 5 noise videos: >= 0.67 and
# <= 0.33.
MIN_FIT_FRACTION = 0.5
# The best template must overlap the mask this well (IoU) for a shape to be read at all. Measured on 72
# evaluation clips: the right template scores >= 0.92 (>= 0.87 after a 1 px blur) and the runner-up up to
# 0.89, so the argmax, not this floor, separates the shapes; the floor rejects ragged blobs.
SHAPE_MIN_IOU = 0.7
# A direction needs at least this fraction of the world's slowest speed (a static object has none).
MIN_SPEED_FRACTION = 0.3
DIRECTION_TOLERANCE_DEG = 22.5
# A pattern is read in a frame when its template correlates with the object's interior at least this well
# (Pearson r at the best phase) and shows at least this contrast (1 = the world's own rendering); else the
# object reads as plain. Measured per frame on 30 evaluation clips, clean and after a 1 px blur with noise
# of 4 levels: plain objects reach r <= 0.45, the captioned pattern r >= 0.66 (5th percentile, 0.92 when
# clean) and a wrong pattern up to 0.68, below the captioned one, so the best template, not this floor,
# tells the patterns apart.
PATTERN_MIN_CORRELATION = 0.55
PATTERN_MIN_CONTRAST = 0.2
# Phases of the pattern templates are searched on a grid of this step (px), so the phase error is at most
# a quarter pixel (contrast within 3 % of the truth at the default 6 px period).
PATTERN_PHASE_STEP = 0.5
# Quality ramps (score 100 at the first value, 0 at the second, linear in between).
COLOUR_DRIFT_RAMP = (6.0, 40.0)  # median RGB distance of an object's mean colour from its clip median
AREA_VARIATION_RAMP = (0.06, 0.4)  # coefficient of variation of an object's area over frames
PATH_RESIDUAL_RAMP = (1 / 128, 1 / 16)  # RMS centroid deviation from the prompted path, over the side
# Pattern contrast relative to the world's rendering. Rendered clips read >= 0.78 (the phase grid and the
# anti-aliasing cost a little); a Gaussian blur of 1 px leaves 0.56 (stripes), 0.47 (dots) and 0.32
# (checks, whose fundamental is diagonal), one of 1.5 px 0.3 or less.
SHARPNESS_RAMP = (0.75, 0.3)
BACKGROUND_DRIFT_RAMP = (2.0, 20.0)  # mean RGB distance of background blocks from the first frames
# Candidate background slopes as the total change from the top to the bottom row in RGB levels (world
# gradients change by 40): a coarse grid, then a fine one around the coarse winner.
_BACKGROUND_LIFTS = np.arange(-120.0, 121.0, 20.0, dtype=np.float32)
_BACKGROUND_LIFTS_FINE = np.arange(-10.0, 11.0, 2.0, dtype=np.float32)
# Bounce-time candidates are spaced this many frames apart.
_BOUNCE_STEP = 0.25

FEATURE_NAMES: tuple[str, ...] = (
    "hist_b",
    "hist_g",
    "hist_gb",
    "hist_r",
    "hist_rb",
    "hist_rg",
    "hist_rgb",
    "foreground_fraction",
    "displacement_x",
    "displacement_y",
    "path_residual",
    "area_variation",
    "background_level",
    "frame_difference",
)
# Features are fractions of pixels, of the frame side or of 255, so 0.01 is a just-meaningful difference;
# flooring the reference spread there keeps near-constant features from exploding the distance.
FEATURE_STD_FLOOR = 0.01
# The Frechet score is 50 at FD = FRECHET_HALF. Calibrated so that the toy VAE's reconstructions of real
# clips score about 90 and the bundled (pre-pattern) base at 0-0-50 about 30: `pyramidal-wan evaluate
# --model models/toy/base --vae-ceiling <its vae> --prompts 36 --heldout 24` (ToyBench 1, docs/results.md
# at commit 1595ce3) measured FD 3.6 for the VAE ceiling and 68.0 for the base, 131 for DMD 0-0-2 and
# 121-2400 for the pyramidal and distilled members: scores 90, 32, 20, 21-1. The features (and so these
# distances) are the same in ToyBench 2.
FRECHET_HALF = 32.0


# ---------------------------------------------------------------------------------------------------------
# Reading a video


@dataclass(frozen=True)
class VideoAnalysis:
    """What `analyse_video` reads from one video; C = 7 classes (the six palette colours, then "other")."""

    background: np.ndarray  # float32 (F, H, 3): fitted background colour of each row
    foreground: np.ndarray  # bool (F, H, W): pixels far from the background
    masks: np.ndarray  # bool (F, C, H, W): the main (largest) object of each class, empty if none
    area: np.ndarray  # float (F, C): area of the main object in px, 0 where none
    centroid: np.ndarray  # float (F, C, 2): its centroid (x, y) in px, NaN where none
    colour: np.ndarray  # float (F, C, 3): its mean RGB, NaN where none
    components: np.ndarray  # int (F, C): number of objects (object-like components) of each class
    present: np.ndarray  # bool (F, C): the class has at least one object in that frame
    blocks: np.ndarray  # float32 (F, H // B, W // B, 3): frames averaged over B x B blocks, B = side / 16


def check_video(video) -> np.ndarray:
    """Return `video` as a uint8 (F, H, W, 3) array, or raise `InputError` naming what is wrong."""
    array = np.asarray(video)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise InputError(
            f"ToyBench takes uint8 videos of shape (F, H, W, 3), got {array.dtype} {array.shape}; "
            "convert a [-1, 1] tensor with pyramidal_wan.utils.video.to_uint8_frames"
        )
    return array


def world_for(video: np.ndarray) -> WorldConfig:
    """The default world at this video's frame count and size (relative sizes and speeds unchanged)."""
    frames, height, width, _ = video.shape
    return WorldConfig(num_frames=frames, height=height, width=width)


def _ramp(x, good: float, bad: float):
    """1 at x <= good, 0 at x >= bad, linear in between (the [0, 1] map behind every quality score)."""
    return np.clip((bad - np.asarray(x, np.float64)) / (bad - good), 0.0, 1.0)


def block_size(height: int, width: int) -> int:
    """Side of the pooling blocks used for background stability and frame differences: side/16, >= 2."""
    return max(2, min(height, width) // 16)


def _block_reduce(array: np.ndarray, block: int, ufunc: np.ufunc) -> np.ndarray:
    """Fold (F, H, W, ...) over non-overlapping block x block tiles with a binary ufunc (np.add,
    np.logical_or); a ragged edge is dropped. Folding tile offsets one by one is several times faster than
    a numpy reduction over two short, strided axes."""
    frames, height, width = array.shape[:3]
    hb, wb = height // block, width // block
    tiles = array[:, : hb * block, : wb * block].reshape(frames, hb, block, wb, block, *array.shape[3:])
    out = tiles[:, :, 0, :, 0].copy()
    for i in range(block):
        for j in range(block):
            if i or j:
                ufunc(out, tiles[:, :, i, :, j], out=out)
    return out


def fit_background(frames: np.ndarray) -> np.ndarray:
    """Per-frame background colour of each row, float32 (F, H, 3), modelled as a line in the row index.

    Row medians ignore objects (they cover under half of a row); the line is fitted by least median of
    absolute deviations over candidate slopes (coarse `_BACKGROUND_LIFTS`, then a finer grid around the
    best) and refined by least squares on the rows within 3 robust sigmas of it.
    """
    rows = np.median(np.moveaxis(frames, 2, -1), axis=-1).transpose(0, 2, 1)  # (F, 3, H)
    height = rows.shape[-1]
    y = np.arange(height, dtype=np.float32) - (height - 1) / 2.0  # centred, so intercept = mean level
    per_lift = 1.0 / max(height - 1, 1)
    best = np.zeros(rows.shape[:2] + (1,), np.float32)  # (F, 3, 1) best lift so far
    for lifts in (_BACKGROUND_LIFTS, _BACKGROUND_LIFTS_FINE):
        slope = (best + lifts) * per_lift  # (F, 3, S)
        detrended = rows[:, :, None, :] - slope[..., None] * y  # (F, 3, S, H)
        intercept = np.median(detrended, axis=-1)  # (F, 3, S)
        spread = np.median(np.abs(detrended - intercept[..., None]), axis=-1)  # (F, 3, S)
        pick = spread.argmin(axis=-1)[..., None]
        best = np.take_along_axis(best + lifts, pick, axis=-1)
        level = np.take_along_axis(intercept, pick, axis=-1)
        scale = 1.4826 * np.take_along_axis(spread, pick, axis=-1)
    inlier = np.abs(rows - level - best * per_lift * y) <= np.maximum(3.0 * scale, 2.0)  # (F, 3, H)
    # Least squares for (level, slope) on the inlier rows.
    w = inlier.astype(np.float32)
    n = w.sum(-1, keepdims=True).clip(min=1.0)
    y_mean = (w * y).sum(-1, keepdims=True) / n
    r_mean = (w * rows).sum(-1, keepdims=True) / n
    var = (w * (y - y_mean) ** 2).sum(-1, keepdims=True)
    cov = (w * (y - y_mean) * (rows - r_mean)).sum(-1, keepdims=True)
    slope = np.where(var > 0, cov / np.where(var > 0, var, 1.0), 0.0)
    fitted = r_mean + slope * (y - y_mean)  # (F, 3, H)
    return fitted.transpose(0, 2, 1).astype(np.float32)


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion over the last two axes (outside the frame counts as empty)."""
    p = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)])
    rows = p[..., :, :-2] & p[..., :, 1:-1] & p[..., :, 2:]
    return rows[..., :-2, :] & rows[..., 1:-1, :] & rows[..., 2:, :]


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation over the last two axes."""
    p = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)])
    rows = p[..., :, :-2] | p[..., :, 1:-1] | p[..., :, 2:]
    return rows[..., :-2, :] | rows[..., 1:-1, :] | rows[..., 2:, :]


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing with a (2 radius + 1) square over the last two axes: fills gaps up to 2 radius px
    wide. It works on a frame padded by `radius`, so an object touching the border keeps its edge pixels
    and the gap between an object and the border is not filled."""
    pad = [(0, 0)] * (mask.ndim - 2) + [(radius, radius), (radius, radius)]
    out = np.pad(mask, pad)
    for _ in range(radius):
        out = _dilate(out)
    for _ in range(radius):
        out = _erode(out)
    return out[..., radius:-radius, radius:-radius]


def pattern_gap_radius(config: WorldConfig) -> int:
    """Closing radius (px) that bridges a pattern's dark phase: half a period wide at most, so
    ceil(period / 4) (2 px at 64x64)."""
    return max(1, math.ceil(config.pattern_period / 4.0))


def pattern_reach(config: WorldConfig) -> int:
    """How far (px) a pattern's dark phase reaches from the object's colour: half a period, rounded up (3 px
    at 64x64), where a dark band lies along the object's edge."""
    return max(1, math.ceil(config.pattern_period / 2.0))


# Neighbour offsets (row, column) that, with their mirror images, make up the 8-neighbourhood.
_HALF_NEIGHBOURHOOD = ((0, 1), (1, 0), (1, 1), (1, -1))


def label_components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of bool masks (N, H, W): int64 labels, -1 outside, one label per component.

    Hook-and-compress on the pixel graph: every edge pulls both ends' roots to the smaller root
    (`np.minimum.at`), then pointer jumping flattens the trees. It converges in a few rounds even for
    snakes and sponges, where propagating labels pixel by pixel would take their whole length.
    """
    n, h, w = mask.shape
    index = np.arange(n * h * w).reshape(n, h, w)
    ends = []
    for dy, dx in _HALF_NEIGHBOURHOOD:
        src = (slice(None), slice(0, h - dy), slice(max(0, -dx), w - max(0, dx)))
        dst = (slice(None), slice(dy, h), slice(max(0, dx), w - max(0, -dx)))
        both = mask[src] & mask[dst]
        ends.append((index[src][both], index[dst][both]))
    u = np.concatenate([e[0] for e in ends])
    v = np.concatenate([e[1] for e in ends])
    parent = np.arange(n * h * w)
    while True:
        pu, pv = parent[u], parent[v]
        if np.array_equal(pu, pv):
            break
        np.minimum.at(parent, pu, pv)
        np.minimum.at(parent, pv, pu)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return np.where(mask, parent.reshape(n, h, w), -1)


def _area_range(config: WorldConfig) -> tuple[float, float]:
    """(smallest, largest) object area in px that counts as an object, from the world's size ranges."""
    h_min = min(config.size_range[0], config.pair_size_range[0]) * config.side
    h_max = max(config.size_range[1], config.pair_size_range[1]) * config.side
    return MIN_AREA_FRACTION * 2.0 * h_min**2, MAX_AREA_FACTOR * (2.0 * h_max) ** 2


def label_pixels(
    frames: np.ndarray, background: np.ndarray, radius: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class masks by background/palette blend fits: the core bool (F, C, H, W) (blends of a palette colour
    with alpha >= 0.5, and the off-palette "other" class), the dark phase bool (F, C, H, W) (pixels within
    `radius` of a palette core, none themselves, that are blends of a palette colour's pattern shade with
    alpha >= 0.5) and the foreground (F, H, W)."""
    d = frames - background[:, :, None, :]  # (F, H, W, 3)
    foreground = np.einsum("fhwc,fhwc->fhw", d, d) >= FOREGROUND_DISTANCE**2
    shape = (frames.shape[0], len(CLASS_NAMES), *frames.shape[1:3])
    core, dark = np.zeros(shape, bool), np.zeros(shape, bool)
    # Only foreground pixels can belong to a class's core: alpha >= 0.5 on a contrast of >= 120 already
    # puts a pixel 60 from the background. Fitting them alone makes the cost follow the objects' area.
    f, y, x = np.nonzero(foreground)
    best, member, fits = _palette_fit(d[f, y, x], background[f, y], 1.0)
    core[f[member], best[member], y[member], x[member]] = True
    core[f[~fits], _OTHER, y[~fits], x[~fits]] = True
    # A dark phase can sit close to the background (the world keeps it >= 40 from it only at full
    # coverage), so it is looked for next to a core, foreground or not.
    near = core[:, :_OTHER].any(1)
    for _ in range(radius):
        near = _dilate(near)
    f, y, x = np.nonzero(near & ~core.any(1))
    best, member, _ = _palette_fit(d[f, y, x], background[f, y], PATTERN_SHADE)
    dark[f[member], best[member], y[member], x[member]] = True
    return core, dark, foreground


def _palette_fit(d: np.ndarray, background: np.ndarray, shade: float) -> tuple[np.ndarray, ...]:
    """Best blend of each pixel offset d (P, 3) from its background (P, 3) towards shade x a palette colour,
    p = b + alpha (shade c - b): (best colour (P,), member (P,): it fits with alpha >= 0.5, fits (P,): some
    colour fits with alpha in [0.25, 1.5] and residual <= FIT_RESIDUAL)."""
    e = shade * _PALETTE[None] - background[:, None, :]  # (P, 6, 3)
    dots = np.einsum("pc,pkc->pk", d, e)
    alpha = dots / np.maximum(np.einsum("pkc,pkc->pk", e, e), 1e-6)
    residual2 = (d * d).sum(-1, keepdims=True) - alpha * dots  # |d - alpha e|^2, alpha e projects d
    ok = (alpha >= 0.25) & (alpha <= 1.5) & (residual2 <= FIT_RESIDUAL**2)
    best = np.where(ok, residual2, np.inf).argmin(-1)
    fits = ok.any(-1)
    member = fits & (np.take_along_axis(alpha, best[:, None], -1)[:, 0] >= 0.5)
    return best, member, fits


def analyse_video(video, config: WorldConfig | None = None) -> VideoAnalysis:
    """Background, foreground and per-class objects of one uint8 (F, H, W, 3) video (module docstring)."""
    video = check_video(video)
    config = config or world_for(video)
    frames = video.astype(np.float32)
    num_frames, height, width, _ = video.shape
    background = fit_background(frames)
    radius = pattern_gap_radius(config)
    raw, dark, foreground = label_pixels(frames, background, pattern_reach(config))
    lo, hi = _area_range(config)
    # A pattern's dark phase is not the object's colour: pixels that fit a colour's pattern shade join that
    # colour's object where they touch it (within `pattern_reach`), and closing bridges what is left of
    # the pattern, so a patterned object is one solid mask, as a person sees it; opening then removes
    # speckle. Only the core counts towards the smallest object area, and off-palette pixels inside a
    # closed palette mask are a dark phase, not another object.
    candidates = np.flatnonzero(raw.sum(axis=(-2, -1)).max(0) >= MIN_FIT_FRACTION * lo)
    palette = candidates < _OTHER
    closed = raw[:, candidates]
    near = closed[:, palette]
    for _ in range(pattern_reach(config)):
        near = _dilate(near)
    closed[:, palette] = _close(closed[:, palette] | (dark[:, candidates[palette]] & near), radius)
    if not palette.all():
        closed[:, ~palette] &= ~closed[:, palette].any(1, keepdims=True)
    opened = _dilate(_erode(closed))  # (F, K, H, W)
    labels = label_components(opened.reshape(-1, height, width))  # (F K, H, W), slot = f K + k
    fitted = (raw | dark)[:, candidates].reshape(-1, height, width)
    comp = _component_stats(labels, frames, fitted, len(candidates))
    is_object = (
        (comp["area"] >= lo)
        & (comp["area"] <= hi)
        & (comp["compactness"] >= MIN_COMPACTNESS)
        & (comp["fit_fraction"] >= MIN_FIT_FRACTION)
    )

    num_slots = num_frames * len(candidates)
    count = np.bincount(comp["slot"][is_object], minlength=num_slots)
    # The main object of each (frame, class) slot is its largest object-like component.
    order = np.flatnonzero(is_object)[np.lexsort((-comp["area"][is_object], comp["slot"][is_object]))]
    main = order[np.unique(comp["slot"][order], return_index=True)[1]]  # one component per occupied slot
    chosen = np.full(num_slots, -2)  # -2 matches no pixel label
    chosen[comp["slot"][main]] = comp["label"][main]

    shape = (num_frames, len(CLASS_NAMES))
    area, components = np.zeros(shape), np.zeros(shape, np.int64)
    centroid, colour = np.full((*shape, 2), np.nan), np.full((*shape, 3), np.nan)
    masks = np.zeros((*shape, height, width), bool)
    f, k = np.divmod(comp["slot"][main], max(len(candidates), 1))
    cls = candidates[k]
    area[f, cls] = comp["area"][main]
    centroid[f, cls] = comp["centroid"][main]
    colour[f, cls] = comp["colour"][main]
    components[:, candidates] = count.reshape(num_frames, len(candidates))
    masks[:, candidates] = (labels == chosen[:, None, None]).reshape(
        num_frames, len(candidates), height, width
    )
    block = block_size(height, width)
    blocks = _block_reduce(frames, block, np.add) / block**2
    return VideoAnalysis(
        background, foreground, masks, area, centroid, colour, components, components > 0, blocks
    )


def _component_stats(
    labels: np.ndarray, frames: np.ndarray, fitted: np.ndarray, per_frame: int
) -> dict[str, np.ndarray]:
    """Per connected component of `labels` (N = F x per_frame slots, H, W): its slot, label, area,
    centroid (x, y), mean colour of `frames` (F, H, W, 3), compactness and fit fraction (the share of its
    pixels set in `fitted` (N, H, W), the class's core and dark phase before closing).

    Compactness = area / (4 pi sqrt(det covariance)) is 1 for a disc, 0.95 for a square, 0.83 for the
    world's triangle and far lower for ragged or stringy blobs.
    """
    slot, ys, xs = np.nonzero(labels >= 0)
    ids, inverse = np.unique(labels[slot, ys, xs], return_inverse=True)
    if len(ids) == 0:
        empty = np.zeros(0)
        return {
            "slot": empty.astype(np.int64),
            "label": empty.astype(np.int64),
            "area": empty,
            "centroid": np.zeros((0, 2)),
            "colour": np.zeros((0, 3)),
            "compactness": empty,
            "fit_fraction": empty,
        }
    area = np.bincount(inverse).astype(np.float64)
    x, y = xs + 0.5, ys + 0.5

    def mean(values):
        return np.bincount(inverse, weights=values) / area

    cx, cy = mean(x), mean(y)
    var_x = mean((x - cx[inverse]) ** 2) + 1.0 / 12.0  # + the extent of a pixel
    var_y = mean((y - cy[inverse]) ** 2) + 1.0 / 12.0
    cov_xy = mean((x - cx[inverse]) * (y - cy[inverse]))
    pixels = frames[slot // max(per_frame, 1), ys, xs]  # (P, 3)
    return {
        "slot": ids // (labels.shape[1] * labels.shape[2]),
        "label": ids,
        "area": area,
        "centroid": np.stack([cx, cy], -1),
        "colour": np.stack([mean(pixels[:, c]) for c in range(3)], -1),
        "compactness": area / (4.0 * math.pi * np.sqrt(np.maximum(var_x * var_y - cov_xy**2, 1e-6))),
        "fit_fraction": mean(fitted[slot, ys, xs].astype(np.float64)),
    }


# ---------------------------------------------------------------------------------------------------------
# Per-object judgements


def _shape_templates(area: np.ndarray, centroid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Binary templates bool (F, 3, H, W) of each world shape with the given areas and mask centroids.

    Half-sizes follow from the area (circle pi h^2, square 4 h^2, triangle 2 h^2); the triangle's centroid
    lies h/3 below its bounding-box centre. Pixels are inside where the signed distance is <= 0, the same
    rule as the world's coverage >= 0.5.
    """
    h = np.sqrt(area[:, None] / np.array([math.pi, 4.0, 2.0]))  # (F, 3) in SHAPES order
    px = np.arange(width) + 0.5 - centroid[:, None, 0, None, None]  # (F, 1, 1, W)
    py = np.arange(height)[:, None] + 0.5 - centroid[:, None, 1, None, None]  # (F, 1, H, 1)
    hh = h[:, :, None, None]  # (F, 3, 1, 1)
    circle = np.sqrt(px**2 + py**2) - hh[:, 0:1]
    square = np.maximum(np.abs(px), np.abs(py)) - hh[:, 1:2]
    ty = py + hh[:, 2:3] / 3.0  # relative to the triangle's bounding-box centre
    triangle = np.maximum(ty - hh[:, 2:3], (2.0 * np.abs(px) - ty - hh[:, 2:3]) / math.sqrt(5.0))
    return np.concatenate([circle, square, triangle], axis=1) <= 0.0


def detect_shapes(mask: np.ndarray, area: np.ndarray, centroid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best template per frame: (index into SHAPES (F,), its IoU (F,)) for object masks bool (F, H, W)."""
    valid = area > 0
    templates = _shape_templates(np.where(valid, area, 1.0), np.nan_to_num(centroid), *mask.shape[1:])
    inter = (templates & mask[:, None]).sum(axis=(-2, -1))
    union = (templates | mask[:, None]).sum(axis=(-2, -1))
    iou = np.where(valid[:, None], inter / np.maximum(union, 1), 0.0)  # (F, 3)
    return iou.argmax(-1), iou.max(-1)


def fit_velocity(t: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Least-squares velocity (vx, vy) in px per frame of positions xy (T, 2) at times t (T,)."""
    tc = t - t.mean()
    return (tc[:, None] * (xy - xy.mean(0))).sum(0) / max(float((tc * tc).sum()), 1e-12)


def path_residual(t: np.ndarray, xy: np.ndarray, bounce: bool) -> float:
    """RMS distance (px) of a track xy (T, 2) at times t from the best prompted path.

    Without bounce: a constant-velocity line per axis. With bounce: per axis x(t) = a + v (tb - |t - tb|),
    constant speed with one reflection at tb (tb past the clip end means none), tb on a 0.25-frame grid.
    """
    if bounce:
        bounces = np.append(np.arange(t.min() + _BOUNCE_STEP, t.max(), _BOUNCE_STEP), t.max())
    else:
        bounces = np.array([t.max()])
    g = bounces[:, None] - np.abs(t[None, :] - bounces[:, None])  # (B, T); equals t when tb >= t
    gc = g - g.mean(1, keepdims=True)
    total = 0.0
    for axis in range(2):
        x = xy[:, axis] - xy[:, axis].mean()
        ss_g = (gc * gc).sum(1)
        v = (gc @ x) / np.where(ss_g > 0, ss_g, 1.0)
        total += float(((x[None, :] - v[:, None] * gc) ** 2).sum(1).min())
    return math.sqrt(total / len(t))


def _direction_correct(velocity: np.ndarray, direction: str, min_speed: float) -> bool:
    """True if the velocity is fast enough and within DIRECTION_TOLERANCE_DEG of the named direction."""
    speed = float(np.hypot(*velocity))
    if speed < min_speed:
        return False
    cosine = float(np.dot(velocity, DIRECTIONS[direction])) / speed
    return cosine >= math.cos(math.radians(DIRECTION_TOLERANCE_DEG))


def read_patterns(
    frames: np.ndarray, mask: np.ndarray, period: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The interior pattern of one object per frame: index into PATTERNS (F,), contrast (F,) and the
    correlation (F,) of the best-fitting patterned template (-inf where the frame is not judged).

    The interior (the mask eroded by one pixel, so edge blends stay out) is projected on its mean colour,
    s = p . m / |m|, and compared with each patterned template `pattern_darkness` renders at every phase
    (a `PATTERN_PHASE_STEP` grid over one period in each axis; the phase is free, so neither the centre
    estimate nor a model's sub-pixel drift matters). The world renders s = K (1 - (1 - PATTERN_SHADE) D),
    so the least-squares slope of s on the template D over (1 - PATTERN_SHADE) K, with K from the mean
    (a blur keeps the mean), is the pattern's contrast: 1 for a rendered clip, less for a blurred one.
    The best template (highest Pearson r) is read when r >= PATTERN_MIN_CORRELATION and its contrast
    >= PATTERN_MIN_CONTRAST; otherwise the object reads as plain (index 0) with the contrast of that
    best template. Frames with less than one pattern cell of interior read as plain with contrast 0.
    """
    num_frames, height, width = mask.shape
    interior = _erode(mask)
    t, y, x = np.nonzero(interior)
    count = np.bincount(t, minlength=num_frames).astype(np.float64)
    judged = count >= period**2
    pattern = np.zeros(num_frames, np.int64)
    contrast = np.zeros(num_frames)
    best_r = np.full(num_frames, -np.inf)
    if not judged.any():
        return pattern, contrast, best_r
    pixels = frames[t, y, x].astype(np.float64)  # (N, 3)
    totals = np.zeros((num_frames, 3))
    np.add.at(totals, t, pixels)
    direction = totals / np.maximum(np.linalg.norm(totals, axis=-1, keepdims=True), 1e-6)
    signal = (pixels * direction[t]).sum(-1)  # (N,)
    seen = np.flatnonzero(count)
    starts = np.concatenate([[0], np.cumsum(count[seen])[:-1]]).astype(np.int64)

    def frame_mean(values: np.ndarray) -> np.ndarray:  # (N, ...) -> (F, ...); pixels are sorted by frame
        out = np.zeros((num_frames, *values.shape[1:]))
        out[seen] = np.add.reduceat(values, starts, axis=0) / count[seen].reshape(
            -1, *[1] * (values.ndim - 1)
        )
        return out

    s_mean = frame_mean(signal)[:, None]
    s_var = frame_mean(signal**2)[:, None] - s_mean**2
    phases = np.arange(0.0, period, PATTERN_PHASE_STEP)
    for index, name in enumerate(PATTERNS[1:], start=1):
        # Phases broadcast as (N, 1 or P, 1) x (N, 1, P): the lattice distances are taken per axis only.
        u = x[:, None, None] + 0.5 - (phases[None, :, None] if name != "striped" else 0.0)  # stripes: y only
        v = y[:, None, None] + 0.5 - phases[None, None, :]
        template = pattern_darkness(name, u, v, period).reshape(len(t), -1).astype(np.float64)  # (N, S)
        d_mean = frame_mean(template)  # (F, S)
        d_var = frame_mean(template**2) - d_mean**2
        cov = frame_mean(signal[:, None] * template) - s_mean * d_mean
        r = -cov / np.sqrt(np.maximum(d_var * s_var, 1e-12))  # darker where D is larger: r > 0
        level = s_mean / np.maximum(1.0 - (1.0 - PATTERN_SHADE) * d_mean, 1e-6)  # K, the bright level
        slope = -cov / np.maximum(d_var, 1e-12)
        frame_contrast = slope / np.maximum((1.0 - PATTERN_SHADE) * level, 1e-6)
        pick = r.argmax(-1)
        r_best = r[np.arange(num_frames), pick]
        better = judged & (r_best > best_r)
        best_r = np.where(better, r_best, best_r)
        pattern = np.where(better, index, pattern)
        contrast = np.where(better, frame_contrast[np.arange(num_frames), pick], contrast)
    contrast = np.clip(contrast, 0.0, None)
    readable = (best_r >= PATTERN_MIN_CORRELATION) & (contrast >= PATTERN_MIN_CONTRAST)
    return np.where(readable, pattern, 0), contrast, best_r


def match_objects(prompt: Prompt, analysis: VideoAnalysis) -> list[int | None]:
    """Class index matched to each prompted object: its own colour if present, else the unused class seen
    in most frames (ties: larger total area), else None."""
    frames_seen = analysis.present.sum(0)  # (C,)
    total_area = np.where(analysis.present, analysis.area, 0.0).sum(0)
    wanted = [CLASS_NAMES.index(o.colour) for o in prompt.objects]
    matched: list[int | None] = [c if frames_seen[c] > 0 else None for c in wanted]
    spare = [c for c in np.lexsort((-total_area, -frames_seen)) if frames_seen[c] > 0 and c not in wanted]
    for i, c in enumerate(matched):
        if c is None and spare:
            matched[i] = int(spare.pop(0))
    return matched


def _object_scores(
    obj: PromptObject, cls: int | None, video: np.ndarray, analysis: VideoAnalysis, config: WorldConfig
) -> dict[str, float | str | list | None]:
    """Colour, shape, pattern, direction, temporal-consistency, smoothness and (patterned prompts only)
    sharpness scores in [0, 100] of one object."""
    frames = analysis.present.shape[0]
    colour_present = analysis.present[:, CLASS_NAMES.index(obj.colour)]
    out: dict = {
        "prompt": {
            "colour": obj.colour,
            "shape": obj.shape,
            "direction": obj.direction,
            "bounce": obj.bounce,
            "pattern": obj.pattern,
        },
        "matched": None if cls is None else CLASS_NAMES[cls],
        "colour": 100.0 * float(colour_present.mean()),
        "shape": 0.0,
        "pattern": 0.0,
        "direction": 0.0,
        "temporal_consistency": 0.0,
        "motion_smoothness": 0.0,
        "sharpness": None if obj.pattern == "plain" else 0.0,
        "detected_shape": None,
        "detected_pattern": None,
        "contrast": None,
        "velocity": None,
        "path_rms": None,
    }
    if cls is None:
        return out
    present = analysis.present[:, cls]
    shape_idx, iou = detect_shapes(analysis.masks[:, cls], analysis.area[:, cls], analysis.centroid[:, cls])
    right = present & (shape_idx == SHAPES.index(obj.shape)) & (iou >= SHAPE_MIN_IOU)
    out["shape"] = 100.0 * float(right.mean())
    counts = np.bincount(shape_idx[present & (iou >= SHAPE_MIN_IOU)], minlength=len(SHAPES))
    out["detected_shape"] = SHAPES[int(counts.argmax())] if counts.any() else None
    pattern_idx, contrast, _ = read_patterns(video, analysis.masks[:, cls], config.pattern_period)
    out["pattern"] = 100.0 * float((present & (pattern_idx == PATTERNS.index(obj.pattern))).mean())
    if present.any():
        out["detected_pattern"] = PATTERNS[int(np.bincount(pattern_idx[present]).argmax())]
        out["contrast"] = float(np.median(contrast[present]))
    if obj.pattern != "plain":
        # Absent frames show no detail; a frame's contrast is that of the best-fitting pattern, so a wrong
        # pattern costs the pattern dimension, not this one.
        out["sharpness"] = 100.0 * float(np.mean(present * _ramp(contrast, *SHARPNESS_RAMP)))

    t = np.flatnonzero(present).astype(np.float64)
    xy = analysis.centroid[present, cls]  # (T, 2)
    if len(t) >= 3:
        # A bouncing object's first bounce is in the middle half of the clip, so the first quarter shows
        # the prompted direction.
        early = t <= max(2.0, (frames - 1) / 4.0) if obj.bounce else np.ones_like(t, bool)
        if early.sum() >= 2:
            velocity = fit_velocity(t[early], xy[early])
            out["velocity"] = [float(v) for v in velocity]
            min_speed = MIN_SPEED_FRACTION * config.travel_range[0] * config.side / (frames - 1)
            out["direction"] = 100.0 * _direction_correct(velocity, obj.direction, min_speed)
        rms = path_residual(t, xy, obj.bounce)
        out["path_rms"] = rms
        good, bad = (config.side * r for r in PATH_RESIDUAL_RAMP)
        out["motion_smoothness"] = 100.0 * float(_ramp(rms, good, bad))

    colours = analysis.colour[present, cls]  # (T, 3)
    areas = analysis.area[present, cls]
    colour_dev = float(np.median(np.linalg.norm(colours - np.median(colours, 0), axis=-1)))
    area_cv = float(areas.std() / areas.mean())
    stability = (_ramp(colour_dev, *COLOUR_DRIFT_RAMP) + _ramp(area_cv, *AREA_VARIATION_RAMP)) / 2.0
    out["temporal_consistency"] = 100.0 * float(present.mean() * stability)
    return out


def _clean_median(values: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Per block, the median of values (T, V, 3) over the frames where it is seen (T, V); hidden entries
    sort last as +inf and the median is read at the middle of each block's count (>= 1)."""
    ordered = np.sort(np.where(seen[..., None], values, np.inf), axis=0)
    count = np.maximum(seen.sum(0), 1)[None, :, None]  # (1, V, 1)
    low = np.take_along_axis(ordered, (count - 1) // 2, axis=0)
    high = np.take_along_axis(ordered, count // 2, axis=0)
    return 0.5 * (low + high)[0]  # (V, 3)


def background_stability(video: np.ndarray, analysis: VideoAnalysis, prompt: Prompt) -> float:
    """Background stability in [0, 100]: block-pooled drift from the clip's first frames and distance from
    the captioned background, the worse of the two per frame (module docstring).

    Pixels within 2 px of the foreground are left out, so blurred edges and moving objects do not count;
    pooling averages out pixel noise (a small VAE's grain) while flicker, drift and blotches survive it.
    """
    num_frames, height, width, _ = video.shape
    block = block_size(height, width)
    near_object = _dilate(_dilate(analysis.foreground))
    clean = ~_block_reduce(near_object, block, np.logical_or)  # (F, hb, wb)
    visible = clean.any(0)  # blocks seen as background at least once
    if not visible.any():
        return 0.0
    seen = clean[:, visible]  # (F, V)
    values = analysis.blocks[:, visible]  # (F, V, 3)
    # The reference is each block's median over the first quarter of the clip (a one-frame glitch there does
    # not move it), so a slow drift shows in full by the end; blocks hidden then use all their frames.
    early = max(1, math.ceil(num_frames / 4))
    reference = np.where(
        seen[:early].any(0)[:, None], _clean_median(values[:early], seen[:early]), _clean_median(values, seen)
    )
    drift = np.linalg.norm(values - reference, axis=-1)  # (F, V)
    captioned = Scene((), prompt.background, prompt.gradient, 1, height, width).background_image()
    target = (_block_reduce(captioned[None], block, np.add) / block**2)[0][visible]  # (V, 3)
    level = np.linalg.norm(values - target, axis=-1)  # (F, V)
    frame_score = np.zeros(num_frames)
    has = seen.any(1)  # a frame with no visible background scores 0
    counts = np.maximum(seen.sum(1), 1)
    frame_score[has] = np.minimum(
        _ramp((drift * seen).sum(1) / counts, *BACKGROUND_DRIFT_RAMP),
        _ramp((level * seen).sum(1) / counts, *background_level_ramp()),
    )[has]
    return 100.0 * float(np.mean(frame_score))


def background_level_ramp() -> tuple[float, float]:
    """Ramp of the mean RGB distance of background blocks from the captioned background: 0 at the distance
    between the two closest named backgrounds (black and dark green, 42), where the background reads as
    another one, and 100 below a fifth of it."""
    colours = np.asarray(list(BACKGROUNDS.values()), np.float64)
    gaps = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    closest = float(gaps[~np.eye(len(colours), dtype=bool)].min())
    return closest / 5.0, closest


# ---------------------------------------------------------------------------------------------------------
# Descriptor features and the Frechet distance


def video_features(video, analysis: VideoAnalysis | None = None) -> np.ndarray:
    """Descriptor features float64 (len(FEATURE_NAMES),) of one video for the Frechet dimension.

    - hist_*: fraction of pixels in each bright octant of RGB (channel >= 128 per named channel); the six
      palette colours fall in six different octants and the dark backgrounds in the unlisted seventh;
    - foreground_fraction: mean fraction of foreground pixels per frame;
    - displacement_x/y: least-squares velocity of the foreground centroid times (F - 1), over the side;
    - path_residual: RMS deviation of that centroid from a straight line, over the side;
    - area_variation: coefficient of variation of the foreground area over frames;
    - background_level: mean fitted background level over 255;
    - frame_difference: mean absolute difference of consecutive block-pooled frames over 255.
    """
    video = check_video(video)
    analysis = analysis or analyse_video(video)
    frames, height, width, _ = video.shape
    side = min(height, width)
    bright = (video >= 128).view(np.uint8)
    octant = (bright[..., 0] << 2) | (bright[..., 1] << 1) | bright[..., 2]
    hist = np.bincount(octant.ravel(), minlength=8)[1:] / octant.size
    fg = analysis.foreground
    area = fg.sum(axis=(1, 2)).astype(np.float64)
    seen = area > 0
    if seen.sum() >= 2:
        xs = (fg.sum(1) * (np.arange(width) + 0.5)).sum(-1)[seen] / area[seen]
        ys = (fg.sum(2) * (np.arange(height) + 0.5)).sum(-1)[seen] / area[seen]
        t = np.flatnonzero(seen).astype(np.float64)
        xy = np.stack([xs, ys], -1)
        displacement = fit_velocity(t, xy) * (frames - 1) / side
        residual = path_residual(t, xy, bounce=False) / side
    else:
        displacement, residual = np.zeros(2), 0.0
    area_cv = float(area.std() / area.mean()) if area.mean() > 0 else 0.0
    # Frame differences of block means (as in `background_stability`): motion and flicker register, while
    # per-pixel grain mostly averages out.
    diff = float(np.abs(np.diff(analysis.blocks, axis=0)).mean()) / 255.0 if frames > 1 else 0.0
    scalars = [
        area.mean() / (height * width),
        displacement[0],
        displacement[1],
        residual,
        area_cv,
        float(analysis.background.mean()) / 255.0,
        diff,
    ]
    return np.concatenate([hist, np.asarray(scalars, np.float64)])


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(matrix)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(features_a, features_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D).

    FD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)); the trace of the matrix square root is the
    sum of square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), which is symmetric (no scipy).
    """
    a = np.atleast_2d(np.asarray(features_a, np.float64))
    b = np.atleast_2d(np.asarray(features_b, np.float64))
    if a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise InputError(
            f"Frechet distance needs two sets of >= 2 same-length features, got {a.shape}, {b.shape}"
        )
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrt_psd(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0.0, None)).sum()
    mean_term = float(((a.mean(0) - b.mean(0)) ** 2).sum())
    return max(mean_term + float(np.trace(cov_a) + np.trace(cov_b)) - 2.0 * float(cross), 0.0)


def frechet_score(generated_features, reference_features) -> tuple[float, float]:
    """(score in [0, 100], FD) of generated vs reference features, each feature divided by the reference
    standard deviation (floored at FEATURE_STD_FLOOR); score = 100 / (1 + FD / FRECHET_HALF)."""
    gen = np.asarray(generated_features, np.float64)
    ref = np.asarray(reference_features, np.float64)
    scale = np.maximum(ref.std(0), FEATURE_STD_FLOOR)
    distance = frechet_distance(gen / scale, ref / scale)
    return 100.0 / (1.0 + distance / FRECHET_HALF), distance


# ---------------------------------------------------------------------------------------------------------
# Scoring videos and summarising records


def _as_prompt(prompt: Scene | str) -> tuple[Prompt, str, Scene | None]:
    """(parsed prompt, caption, scene or None) of a caption or a `Scene`."""
    if isinstance(prompt, Scene):
        return prompt.prompt(), prompt.caption(), prompt
    if isinstance(prompt, str):
        return parse_caption(prompt), prompt, None
    raise InputError(f"ToyBench prompts are captions or toy Scenes, got {type(prompt).__name__}")


def prompt_split(prompt: Prompt) -> str:
    """'heldout' if any prompted object uses a held-out (colour, shape, direction) triple, else 'train'."""
    held = set(HELDOUT_TRIPLES)
    return "heldout" if any((o.colour, o.shape, o.direction) in held for o in prompt.objects) else "train"


def score_video(video, prompt: Scene | str, config: WorldConfig | None = None) -> dict:
    """Score one uint8 (F, H, W, 3) video against its prompt: a JSON-ready dict of every per-video
    dimension in [0, 100] (SEMANTIC_DIMS, VIDEO_QUALITY_DIMS), per-object details and the descriptor
    features. The Frechet dimension is a set statistic and is computed in `summarize`."""
    video = check_video(video)
    parsed, caption, _ = _as_prompt(prompt)
    config = config or world_for(video)
    analysis = analyse_video(video, config)
    matched = match_objects(parsed, analysis)
    objects = [_object_scores(o, c, video, analysis, config) for o, c in zip(parsed.objects, matched)]
    detected = analysis.components.sum(1)  # (F,)
    record: dict = {"caption": caption, "split": prompt_split(parsed), "num_objects": len(parsed.objects)}
    for dim in ("colour", "shape", "pattern", "direction"):
        record[dim] = float(np.mean([o[dim] for o in objects]))
    record["count"] = 100.0 * float((detected == len(parsed.objects)).mean())
    for dim in ("temporal_consistency", "motion_smoothness"):
        record[dim] = float(np.mean([o[dim] for o in objects]))
    detail = [o["sharpness"] for o in objects if o["sharpness"] is not None]
    record["sharpness"] = float(np.mean(detail)) if detail else None  # judged on patterned prompts only
    record["background_stability"] = background_stability(video, analysis, parsed)
    record["detected_count"] = int(np.median(detected))
    record["objects"] = objects
    record["features"] = [float(x) for x in video_features(video, analysis)]
    return record


def evaluate_videos(
    videos,
    prompts: Sequence[Scene | str],
    *,
    seeds: Sequence[int | None] | None = None,
    prompt_indices: Sequence[int] | None = None,
    model: str | None = None,
    schedule: str | None = None,
    config: WorldConfig | None = None,
) -> list[dict]:
    """One record per video: `score_video`'s dict plus the pass-through keys (suite, version, model,
    schedule, prompt_index, seed) and `reference_features` of the real render when the prompt is a Scene
    (None otherwise). `videos` is a sequence of (F, H, W, 3) uint8 arrays or one (B, F, H, W, 3) array."""
    if len(videos) != len(prompts):
        raise InputError(f"got {len(videos)} videos for {len(prompts)} prompts; pass one prompt per video")
    seeds = [None] * len(prompts) if seeds is None else list(seeds)
    indices = list(range(len(prompts))) if prompt_indices is None else list(prompt_indices)
    if len(seeds) != len(prompts) or len(indices) != len(prompts):
        raise InputError("seeds and prompt_indices need one entry per video")
    records = []
    references: dict[Scene, list[float]] = {}  # one real render per scene, however many seeds
    for video, prompt, seed, index in zip(videos, prompts, seeds, indices):
        scene = _as_prompt(prompt)[2]
        if scene is not None and scene not in references:
            references[scene] = [float(x) for x in video_features(scene.render())]
        record = {
            "suite": "toy",
            "toybench_version": TOYBENCH_VERSION,
            "model": model,
            "schedule": schedule,
            "prompt_index": int(index),
            "seed": None if seed is None else int(seed),
            **score_video(video, prompt, config),
        }
        record["reference_features"] = None if scene is None else references[scene]
        records.append(record)
    return records


def _set_scores(records: list[dict]) -> dict:
    """Every dimension (the Frechet one with frechet_distance and frechet_n), semantic, quality and total of
    a set of records."""
    out: dict = {}
    for dim in (*SEMANTIC_DIMS, *VIDEO_QUALITY_DIMS):
        # sharpness is None for videos of plain objects only, and for a set of them
        values = [r[dim] for r in records if r[dim] is not None]
        out[dim] = float(np.mean(values)) if values else None
    with_ref = [r for r in records if r.get("reference_features") is not None]
    out["frechet"], out["frechet_distance"], out["frechet_n"] = None, None, len(with_ref)
    if len(with_ref) >= 2:
        out["frechet"], out["frechet_distance"] = frechet_score(
            [r["features"] for r in with_ref], [r["reference_features"] for r in with_ref]
        )
    quality = [out[d] for d in QUALITY_DIMS if out[d] is not None]
    out["semantic"] = float(np.mean([out[d] for d in SEMANTIC_DIMS]))
    out["quality"] = float(np.mean(quality))
    out["total"] = (SEMANTIC_WEIGHT * out["semantic"] + QUALITY_WEIGHT * out["quality"]) / (
        SEMANTIC_WEIGHT + QUALITY_WEIGHT
    )
    return out


def bootstrap_total_se(
    records: Sequence[dict], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> float:
    """Bootstrap standard error of the total of a set of records: the standard deviation (ddof 1) of the
    total over `resamples` resamples of the set's prompts, drawn with replacement (each with all of its
    records, one per seed) by a numpy Generator seeded with `seed`; every dimension, the Frechet one
    included, and the total are recomputed on each resample as for the set itself.

    Why: a total averages a few dozen prompts, so which prompts the benchmark happens to draw moves it by
    points (about 3 at 36 prompts); tables show this error so that smaller differences are not read as
    real. The seed is fixed so that the same records always give the same error.
    """
    if resamples < 2:
        raise InputError(f"a bootstrap standard error needs at least 2 resamples, got {resamples}")
    prompts: dict[tuple, list[dict]] = {}
    for record in records:
        prompts.setdefault((record.get("prompt_index"), record["caption"]), []).append(record)
    groups = list(prompts.values())
    rng = np.random.default_rng(seed)
    totals = []
    for _ in range(resamples):
        picks = rng.integers(0, len(groups), size=len(groups))
        totals.append(_set_scores([r for i in picks for r in groups[i]])["total"])
    return float(np.std(totals, ddof=1))


def _split_summary(records: list[dict]) -> dict:
    return {"n": len(records), **_set_scores(records), "total_se": bootstrap_total_se(records)}


def summarize(records: Iterable[dict]) -> dict:
    """Per split ("train", "heldout", when present) and "overall": n, every dimension, semantic, quality,
    total and total_se, the total's bootstrap standard error over prompts (`bootstrap_total_se`). Records
    must come from one (model, schedule) run; use `group_records` to split a file.

    The Frechet dimension uses the records that carry reference features (frechet_n of them) and is None
    when fewer than two do; quality is then the mean of the other three quality dimensions. With few
    videos the Frechet distance is biased upwards (sample covariances), so compare it at equal set sizes.
    """
    records = list(records)
    if not records:
        raise InputError("summarize needs at least one ToyBench record")
    runs = {(r.get("model"), r.get("schedule")) for r in records}
    versions = {r.get("toybench_version") for r in records}
    if len(runs) > 1 or len(versions) > 1:
        raise InputError(
            f"records mix runs {sorted(map(str, runs))} or ToyBench versions {sorted(map(str, versions))}; "
            "summarize each group of group_records() separately"
        )
    out = {"overall": _split_summary(records)}
    for split in ("train", "heldout"):
        chosen = [r for r in records if r["split"] == split]
        if chosen:
            out[split] = _split_summary(chosen)
    return out


def group_records(records: Iterable[dict]) -> dict[tuple[str | None, str | None], list[dict]]:
    """Records grouped by (model, schedule), in first-seen order."""
    groups: dict = {}
    for record in records:
        groups.setdefault((record.get("model"), record.get("schedule")), []).append(record)
    return groups


# ---------------------------------------------------------------------------------------------------------
# JSON-lines records and the generator harness


def record_key(record: dict) -> tuple:
    """What identifies a record for resuming: (version, model, schedule, prompt_index, seed, caption)."""
    return (
        record.get("toybench_version"),
        record.get("model"),
        record.get("schedule"),
        record["prompt_index"],
        record["seed"],
        record["caption"],
    )


def read_records(path: str | os.PathLike) -> list[dict]:
    """Records of a ToyBench JSON-lines file ([] if it does not exist).

    A last line cut short by an interrupted write is dropped; a bad line anywhere else raises InputError.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:  # no newline after it: an append was interrupted
                break
            raise InputError(
                f"{path}:{i + 1} is not a JSON record ({err}); remove the line or the file"
            ) from err
    return records


def part_path(out: str | os.PathLike, process_index: int) -> Path:
    """The records file process `process_index` appends to when generation is sharded: OUT.partK.jsonl."""
    out = Path(out)
    return out.with_name(f"{out.stem}.part{process_index}{out.suffix}")


def part_paths(out: str | os.PathLike) -> list[Path]:
    """The part files of `out` left by sharded runs (any process count), in process order."""
    out = Path(out)
    parts = out.parent.glob(f"{out.stem}.part*{out.suffix}")
    index = {p: p.name[len(out.stem) + 5 : len(p.name) - len(out.suffix)] for p in parts}
    return sorted((p for p, k in index.items() if k.isdigit()), key=lambda p: int(index[p]))


def read_all_records(out: str | os.PathLike) -> list[dict]:
    """Records of `out` and of its part files (each key once, the first seen wins)."""
    seen: dict[tuple, dict] = {}
    for path in [Path(out), *part_paths(out)]:
        for record in read_records(path):
            seen.setdefault(record_key(record), record)
    return list(seen.values())


def merge_parts(out: str | os.PathLike) -> list[dict]:
    """Fold the part files of sharded processes into `out` (rewritten atomically), remove them, and return
    every record. Call it from one process once all have finished."""
    parts = part_paths(out)
    records = read_all_records(out)
    if parts:
        _rewrite_records(Path(out), records)
        for path in parts:
            path.unlink()
    return records


def _rewrite_records(path: Path, records: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def _append_records(path: Path, records: list[dict]) -> None:
    """Append JSON lines and flush them to disk; a partial last line left by a kill is rewritten first."""
    if path.exists() and path.stat().st_size:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
        if cut:  # appending after half a line would corrupt the next record
            _rewrite_records(path, read_records(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def run_toybench(
    generate_fn: Callable[[list[str], list[int]], object],
    prompts: Sequence[Scene | str],
    seeds: Sequence[int],
    *,
    out: str | os.PathLike | None = None,
    model: str | None = None,
    schedule: str | None = None,
    batch_size: int = 8,
    config: WorldConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_batch: Callable[[list[int], list[int], object], list[dict]] | None = None,
    state=None,
) -> list[dict]:
    """Generate and score every prompt x seed with `generate_fn(captions, seeds) -> uint8 videos`
    ((B, F, H, W, 3) array or list of (F, H, W, 3)); return the records in prompt-major order.

    With `out`, records already in that JSON-lines file or its part files (same model, schedule, prompt
    index, seed and caption) are reused, and each new batch is appended and flushed as soon as it is
    scored; a last line cut short by a kill is dropped. `on_batch(prompt_indices, seeds, videos)`, called
    after each batch is generated, returns one dict of extra fields per video (its timing, a saved sample)
    to add to its record. `progress(done, total)` is called after every batch.

    `state` (an accelerate `PartialState`) shards the prompts still to do between processes
    (`split_between_processes`, contiguous blocks, after a barrier so that every process splits the same
    list); each process appends to its own part file (`part_path`) and returns only the records it can
    see: those done before and its own. Once every process is done, one calls `merge_parts(out)`.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    sharded = state is not None and state.num_processes > 1
    if sharded and out is None:
        raise InputError("sharding evaluation across processes needs an out file for the records")
    jobs = [(i, p, int(s)) for i, p in enumerate(prompts) for s in seeds]
    captions = [_as_prompt(p)[1] for _, p, _ in jobs]
    done: dict[tuple, dict] = {}
    path = None
    if out is not None:
        done = {record_key(r): r for r in read_all_records(out)}
        path = part_path(out, state.process_index) if sharded else Path(out)
    keys = [(TOYBENCH_VERSION, model, schedule, i, s, c) for (i, _, s), c in zip(jobs, captions)]
    todo = [j for j, k in enumerate(keys) if k not in done]
    if sharded:
        # Every process must split the same list: all read the records before any appends to them.
        state.wait_for_everyone()
        with state.split_between_processes(todo) as mine:
            todo = list(mine)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        indices, batch_seeds = [jobs[j][0] for j in batch], [jobs[j][2] for j in batch]
        videos = generate_fn([captions[j] for j in batch], batch_seeds)
        if len(videos) != len(batch):
            raise InputError(f"generate_fn returned {len(videos)} videos for a batch of {len(batch)}")
        extras = on_batch(indices, batch_seeds, videos) if on_batch is not None else [{}] * len(batch)
        records = evaluate_videos(
            videos,
            [jobs[j][1] for j in batch],
            seeds=batch_seeds,
            prompt_indices=indices,
            model=model,
            schedule=schedule,
            config=config,
        )
        for j, record, extra in zip(batch, records, extras):
            record.update(extra)
            done[keys[j]] = record
        if path is not None:
            _append_records(path, records)
        if progress is not None:
            progress(start + len(batch), len(todo))
    return [done[k] for k in keys if k in done]
