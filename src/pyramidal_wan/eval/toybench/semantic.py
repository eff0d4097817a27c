"""Semantic judgements of one matched object: shape templates, interior patterns, velocity and direction,
and matching prompted objects to detected classes."""

from __future__ import annotations

import math

import numpy as np

from pyramidal_wan.eval.toybench.analysis import (
    CLASS_NAMES,
    VideoAnalysis,
    _erode,
)
from pyramidal_wan.toy.world import (
    DIRECTIONS,
    PATTERN_SHADE,
    PATTERNS,
    Prompt,
    pattern_darkness,
)

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

# Phases of the pattern templates are searched on a grid of this many steps per period, so the phase error
# is at most 1/24 of a period (the contrast of a sinusoid at that error: 0.97).
PATTERN_PHASE_STEPS = 12


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
    (a grid of `PATTERN_PHASE_STEPS` over one period in each axis; the phase is free, so neither the centre
    estimate nor a model's sub-pixel drift matters). The world renders s = K (1 - (1 - PATTERN_SHADE) D),
    so the least-squares slope of s on the template D over (1 - PATTERN_SHADE) K, with K from the mean
    (a blur keeps the mean), is the pattern's contrast: 1 for a rendered clip, less for a blurred one.
    The best template (highest Pearson r) is read when r >= PATTERN_MIN_CORRELATION and its contrast
    >= PATTERN_MIN_CONTRAST; otherwise the object reads as plain (index 0) with the contrast of that
    best template. Frames with less interior than a half-period square read as plain with contrast 0.
    """
    num_frames, height, width = mask.shape
    interior = _erode(mask)
    t, y, x = np.nonzero(interior)
    count = np.bincount(t, minlength=num_frames).astype(np.float64)
    judged = count >= (period / 2) ** 2
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
    phases = np.arange(PATTERN_PHASE_STEPS) * (period / PATTERN_PHASE_STEPS)
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
