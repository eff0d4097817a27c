"""Quality judgements: the linear ramps, the path residual behind motion smoothness, and background
stability against the first frames and the captioned background."""

from __future__ import annotations

import math

import numpy as np

from pyramidal_wan.eval.toybench.analysis import (
    VideoAnalysis,
    _block_reduce,
    _dilate,
    block_size,
)
from pyramidal_wan.toy.world import (
    BACKGROUNDS,
    Prompt,
    Scene,
)

# Quality ramps (score 100 at the first value, 0 at the second, linear in between).
COLOUR_DRIFT_RAMP = (6.0, 40.0)  # median RGB distance of an object's mean colour from its clip median

AREA_VARIATION_RAMP = (0.06, 0.4)  # coefficient of variation of an object's area over frames

PATH_RESIDUAL_RAMP = (1 / 128, 1 / 16)  # RMS centroid deviation from the prompted path, over the side

# Pattern contrast relative to the world's rendering, measured (median over objects) on 24 evaluation clips
# at the 12 px period: rendered clips read >= 0.81 (the phase grid and the anti-aliasing cost a little); a
# Gaussian blur of 1 px leaves 0.73 (stripes) and 0.52 (checks, whose fundamental is diagonal), one of
# 1.5 px 0.61 and 0.34.
SHARPNESS_RAMP = (0.75, 0.3)

BACKGROUND_DRIFT_RAMP = (2.0, 20.0)  # mean RGB distance of background blocks from the first frames

# Bounce-time candidates are spaced this many frames apart.
_BOUNCE_STEP = 0.25


def _ramp(x, good: float, bad: float):
    """1 at x <= good, 0 at x >= bad, linear in between (the [0, 1] map behind every quality score)."""
    return np.clip((bad - np.asarray(x, np.float64)) / (bad - good), 0.0, 1.0)


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
