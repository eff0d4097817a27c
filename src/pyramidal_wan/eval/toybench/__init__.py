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
   `pattern_gap_radius` (a quarter period), so a striped or checked object is one solid mask, as a
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
  for "striped", or no pattern at all, is drawing something else. Heavy blur also ends here, once the
  pattern is too faint to read.
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
  the detail counterpart of VBench's imaging quality: a blur of 1-1.5 px keeps every attribute readable,
  so it must cost quality, not meaning (see `SHARPNESS_RAMP` for what it does to the contrast). The
  template fit ignores noise, which a raw high-band energy would count as detail.
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

Layout, one concern a module (every public name is importable from here): `analysis` reads a video
(steps 1-3), `semantic` and `quality` judge objects and backgrounds, `frechet` holds the descriptor
features and the Frechet distance, `score` turns a video and its prompt into a record, `summary` turns
records into dimensions, totals and standard errors, `records` reads and appends JSON-lines files, and
`runner` is the generate-score-append harness.
"""

from pyramidal_wan.eval.toybench.analysis import (
    CLASS_NAMES,
    FIT_RESIDUAL,
    FOREGROUND_DISTANCE,
    MAX_AREA_FACTOR,
    MIN_AREA_FRACTION,
    MIN_COMPACTNESS,
    MIN_FIT_FRACTION,
    VideoAnalysis,
    analyse_video,
    block_size,
    check_video,
    fit_background,
    label_components,
    label_pixels,
    pattern_gap_radius,
    pattern_reach,
    world_for,
)
from pyramidal_wan.eval.toybench.frechet import (
    FEATURE_NAMES,
    FEATURE_STD_FLOOR,
    FRECHET_HALF,
    frechet_distance,
    frechet_score,
    video_features,
)
from pyramidal_wan.eval.toybench.quality import (
    AREA_VARIATION_RAMP,
    BACKGROUND_DRIFT_RAMP,
    COLOUR_DRIFT_RAMP,
    PATH_RESIDUAL_RAMP,
    SHARPNESS_RAMP,
    background_level_ramp,
    background_stability,
    path_residual,
)
from pyramidal_wan.eval.toybench.records import (
    drop_invalid_records,
    merge_parts,
    part_path,
    part_paths,
    read_all_records,
    read_records,
    record_key,
    record_problem,
)
from pyramidal_wan.eval.toybench.runner import (
    run_toybench,
)
from pyramidal_wan.eval.toybench.score import (
    TOYBENCH_VERSION,
    evaluate_videos,
    prompt_split,
    score_video,
)
from pyramidal_wan.eval.toybench.semantic import (
    DIRECTION_TOLERANCE_DEG,
    MIN_SPEED_FRACTION,
    PATTERN_MIN_CONTRAST,
    PATTERN_MIN_CORRELATION,
    PATTERN_PHASE_STEPS,
    SHAPE_MIN_IOU,
    detect_shapes,
    fit_velocity,
    match_objects,
    read_patterns,
)
from pyramidal_wan.eval.toybench.summary import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    QUALITY_DIMS,
    QUALITY_WEIGHT,
    SEMANTIC_DIMS,
    SEMANTIC_WEIGHT,
    VIDEO_QUALITY_DIMS,
    bootstrap_total_se,
    group_records,
    summarize,
)

__all__ = [
    "CLASS_NAMES",
    "FOREGROUND_DISTANCE",
    "FIT_RESIDUAL",
    "MIN_AREA_FRACTION",
    "MAX_AREA_FACTOR",
    "MIN_COMPACTNESS",
    "MIN_FIT_FRACTION",
    "VideoAnalysis",
    "check_video",
    "world_for",
    "block_size",
    "fit_background",
    "pattern_gap_radius",
    "pattern_reach",
    "label_components",
    "label_pixels",
    "analyse_video",
    "SHAPE_MIN_IOU",
    "MIN_SPEED_FRACTION",
    "DIRECTION_TOLERANCE_DEG",
    "PATTERN_MIN_CORRELATION",
    "PATTERN_MIN_CONTRAST",
    "PATTERN_PHASE_STEPS",
    "detect_shapes",
    "fit_velocity",
    "read_patterns",
    "match_objects",
    "COLOUR_DRIFT_RAMP",
    "AREA_VARIATION_RAMP",
    "PATH_RESIDUAL_RAMP",
    "SHARPNESS_RAMP",
    "BACKGROUND_DRIFT_RAMP",
    "path_residual",
    "background_stability",
    "background_level_ramp",
    "FEATURE_NAMES",
    "FEATURE_STD_FLOOR",
    "FRECHET_HALF",
    "video_features",
    "frechet_distance",
    "frechet_score",
    "TOYBENCH_VERSION",
    "prompt_split",
    "score_video",
    "evaluate_videos",
    "SEMANTIC_DIMS",
    "VIDEO_QUALITY_DIMS",
    "QUALITY_DIMS",
    "SEMANTIC_WEIGHT",
    "QUALITY_WEIGHT",
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "bootstrap_total_se",
    "summarize",
    "group_records",
    "record_key",
    "read_records",
    "record_problem",
    "drop_invalid_records",
    "part_path",
    "part_paths",
    "read_all_records",
    "merge_parts",
    "run_toybench",
]
