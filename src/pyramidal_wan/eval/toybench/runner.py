"""The generator harness: generate, score and append every prompt x seed, resuming and sharding."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pyramidal_wan.errors import InputError
from pyramidal_wan.eval.toybench.records import (
    _append_records,
    drop_invalid_records,
    part_path,
    read_all_records,
    record_key,
)
from pyramidal_wan.eval.toybench.score import (
    TOYBENCH_VERSION,
    _as_prompt,
    evaluate_videos,
)
from pyramidal_wan.toy.world import (
    Scene,
    WorldConfig,
)


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
        if not sharded or state.process_index == 0:
            for problem in drop_invalid_records(out):
                print(f"ToyBench: {problem}; dropped, regenerating it", file=sys.stderr)
        if sharded:
            state.wait_for_everyone()
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
