"""Scoring videos against their prompts: per-object and per-video dimensions and the JSON records."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pyramidal_wan.errors import InputError
from pyramidal_wan.eval.toybench.analysis import (
    CLASS_NAMES,
    VideoAnalysis,
    analyse_video,
    check_video,
    world_for,
)
from pyramidal_wan.eval.toybench.frechet import (
    video_features,
)
from pyramidal_wan.eval.toybench.quality import (
    AREA_VARIATION_RAMP,
    COLOUR_DRIFT_RAMP,
    PATH_RESIDUAL_RAMP,
    SHARPNESS_RAMP,
    _ramp,
    background_stability,
    path_residual,
)
from pyramidal_wan.eval.toybench.semantic import (
    MIN_SPEED_FRACTION,
    SHAPE_MIN_IOU,
    _direction_correct,
    detect_shapes,
    fit_velocity,
    match_objects,
    read_patterns,
)
from pyramidal_wan.toy.world import (
    HELDOUT_TRIPLES,
    PATTERNS,
    SHAPES,
    Prompt,
    PromptObject,
    Scene,
    WorldConfig,
    parse_caption,
)

TOYBENCH_VERSION = 2  # 2: patterned world (pattern, sharpness), background vs first frames and caption


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
