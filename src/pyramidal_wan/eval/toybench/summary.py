"""Summaries of records: set scores, totals, their bootstrap standard error, and grouping by run."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from pyramidal_wan.errors import InputError
from pyramidal_wan.eval.toybench.frechet import (
    frechet_score,
)

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
