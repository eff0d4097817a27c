"""ToyBench JSON-lines records: reading (a cut-short last line is dropped), appending, and the part files
of sharded runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pyramidal_wan.errors import InputError
from pyramidal_wan.utils.io import atomic_path


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
