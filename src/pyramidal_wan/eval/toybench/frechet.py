"""Descriptor features of a video and the Frechet distance and score between two sets of them."""

from __future__ import annotations

import numpy as np

from pyramidal_wan.errors import InputError
from pyramidal_wan.eval.toybench.analysis import (
    VideoAnalysis,
    analyse_video,
    check_video,
)
from pyramidal_wan.eval.toybench.quality import (
    path_residual,
)
from pyramidal_wan.eval.toybench.semantic import (
    fit_velocity,
)

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
