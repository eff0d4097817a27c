"""The bootstrap standard error of ToyBench totals: zero without spread, positive with it, the same on every
call, and shrinking as the prompt set grows. Records are synthetic (no rendering), so these run in seconds."""

import numpy as np
import pytest

from pyramidal_wan.eval.report import main_table, toy_runs
from pyramidal_wan.eval.toybench import (
    FEATURE_NAMES,
    SEMANTIC_DIMS,
    VIDEO_QUALITY_DIMS,
    bootstrap_total_se,
    summarize,
)


def synthetic_records(count: int, seed: int, split: str = "train") -> list[dict]:
    """`count` i.i.d. records of distinct prompts: dimension scores uniform in [0, 100], generated and
    reference features standard normal, so every dimension (Frechet included) varies between resamples."""
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        record = {"prompt_index": index, "caption": f"prompt {index}", "split": split, "seed": 0}
        record.update({dim: float(rng.uniform(0, 100)) for dim in (*SEMANTIC_DIMS, *VIDEO_QUALITY_DIMS)})
        record["features"] = rng.normal(size=len(FEATURE_NAMES)).tolist()
        record["reference_features"] = rng.normal(size=len(FEATURE_NAMES)).tolist()
        records.append(record)
    return records


def test_identical_records_have_no_standard_error():
    # Same scores and features under 12 different prompts: every resample has the same total.
    record = synthetic_records(1, seed=0)[0]
    same = [{**record, "prompt_index": i, "caption": f"prompt {i}"} for i in range(12)]
    assert bootstrap_total_se(same) == pytest.approx(0.0, abs=1e-9)
    assert summarize(same)["overall"]["total_se"] == pytest.approx(0.0, abs=1e-9)


def test_varied_records_have_a_positive_reproducible_standard_error():
    records = synthetic_records(36, seed=1)
    se = bootstrap_total_se(records)
    assert se > 0.1
    assert bootstrap_total_se(records) == se  # fixed seed: the same records give the same value exactly
    assert summarize(records)["train"]["total_se"] == summarize(records)["overall"]["total_se"] == se
    assert bootstrap_total_se(records, seed=1) != se  # the seed, not chance, is what makes it repeat


def test_more_prompts_give_a_smaller_standard_error():
    # Prompt-sampling noise falls as 1 / sqrt(prompts): 16 times the prompts, about a quarter of the error.
    small = bootstrap_total_se(synthetic_records(10, seed=2))
    large = bootstrap_total_se(synthetic_records(160, seed=3))
    assert large < 0.5 * small


def test_seeds_of_one_prompt_are_resampled_together():
    # Four seeds of each prompt that agree within a prompt: resampling prompts keeps the spread between
    # prompts, where resampling the 4 x 9 records one by one would shrink the error by about a half.
    prompts = synthetic_records(9, seed=4)
    seeded = [{**r, "seed": s} for r in prompts for s in range(4)]
    assert bootstrap_total_se(seeded) == pytest.approx(bootstrap_total_se(prompts), rel=0.35)


def test_main_table_shows_each_total_with_its_standard_error():
    records = synthetic_records(8, seed=5) + synthetic_records(4, seed=6, split="heldout")
    for i, record in enumerate(records):  # the held-out prompts are prompts of their own
        record.update(prompt_index=i, caption=f"prompt {i}", model="m", schedule="0-0-2")
    summary = summarize(records)
    header, rows = main_table(toy_runs(records))
    row = dict(zip(header, rows[0]))
    for column, split in (("total ± se", "overall"), ("held-out total ± se", "heldout")):
        total, se = summary[split]["total"], summary[split]["total_se"]
        assert row[column] == f"{total:.1f} ± {se:.1f}" and se > 0
