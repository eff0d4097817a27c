"""ToyBench JSON-lines records: their schema (`record_problem`), reading (a cut-short last line is dropped,
invalid lines reported or dropped), appending, and the part files of sharded runs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from pyramidal_wan.errors import InputError
from pyramidal_wan.eval.toybench.summary import SEMANTIC_DIMS, VIDEO_QUALITY_DIMS
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


NUMBER = (int, float)
NUMBER_LIST = "list of numbers"
OPTIONAL = type(None)
# The JSON types of a record's fields: required ones, then ones that may be absent (or null where listed).
TOY_RECORD_FIELDS: dict[str, tuple] = {
    "caption": (str,),
    "split": (str,),
    "prompt_index": (int,),
    "seed": (int, OPTIONAL),
    **{dim: NUMBER for dim in (*SEMANTIC_DIMS, *VIDEO_QUALITY_DIMS)},
    "sharpness": (*NUMBER, OPTIONAL),  # null for videos of plain objects only (judged on patterned ones)
    "features": (NUMBER_LIST,),
}
VBENCH_RECORD_FIELDS: dict[str, tuple] = {"model": (str,), "schedule": (str,), "dimensions": (dict,)}
OPTIONAL_RECORD_FIELDS: dict[str, tuple] = {
    "suite": (str,),
    "toybench_version": (int, str, OPTIONAL),
    "model": (str, OPTIONAL),
    "schedule": (str, OPTIONAL),
    "model_path": (str, OPTIONAL),
    "num_objects": (int,),
    "detected_count": (int,),
    "objects": (list,),
    "reference_features": (NUMBER_LIST, OPTIONAL),
    "semantic": NUMBER,
    "quality": NUMBER,
    "total": NUMBER,
    "tflops": (*NUMBER, OPTIONAL),
    "seconds": (*NUMBER, OPTIONAL),
    "stage_seconds": (dict, OPTIONAL),
    "device": (str, OPTIONAL),
    "batch_size": (int, OPTIONAL),
    "sample": (str, OPTIONAL),
}


def _has_type(value, kinds: tuple) -> bool:
    for kind in kinds:
        if kind == NUMBER_LIST:
            if isinstance(value, list) and all(_has_type(v, NUMBER) for v in value):
                return True
        elif kind in (int, float):
            # bool is an int to Python but not a number here; NaN and infinities are no scores either
            if isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value):
                return True
        elif isinstance(value, kind):
            return True
    return False


def record_problem(record) -> str | None:
    """What makes `record` (one parsed JSON line of a records file) unusable, or None if it is valid.

    ToyBench records (`TOY_RECORD_FIELDS`) and VBench ones (`VBENCH_RECORD_FIELDS`, "suite": "vbench") must
    have their fields with the listed JSON types; `OPTIONAL_RECORD_FIELDS` may be absent.
    """
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not a record object"
    required = VBENCH_RECORD_FIELDS if record.get("suite") == "vbench" else TOY_RECORD_FIELDS
    for name, kinds in (*required.items(), *OPTIONAL_RECORD_FIELDS.items()):
        if name not in record:
            if name in required:
                return f"has no {name!r} field"
            continue
        if not _has_type(record[name], kinds):
            return f"has {name!r} = {json.dumps(record[name])[:40]}, which is not {_type_names(kinds)}"
    if required is VBENCH_RECORD_FIELDS and not all(
        _has_type(v, NUMBER) for v in record["dimensions"].values()
    ):
        return "has a 'dimensions' score that is not a number"
    return None


def _type_names(kinds: tuple) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object"}
    names.update({NUMBER_LIST: "a list of numbers", OPTIONAL: "null"})
    return " or ".join(dict.fromkeys(names[k] for k in kinds))


def read_records(path: str | os.PathLike, invalid: list[str] | None = None) -> list[dict]:
    """Records of a ToyBench JSON-lines file ([] if it does not exist), each checked by `record_problem`.

    A last line cut short by an interrupted write is dropped. Any other bad line (not UTF-8, not JSON, not
    a valid record) raises a one-line InputError naming it, or, given an `invalid` list, is described there
    ("FILE:LINE reason") and skipped.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    records = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
            problem = record_problem(record)
        except UnicodeDecodeError:
            problem = "is not UTF-8 text"
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:  # no newline after it: an append was interrupted
                break
            problem = f"is not JSON ({err.msg})"
        if problem is None:
            records.append(record)
        elif invalid is not None:
            invalid.append(f"{path}:{i + 1} {problem}")
        else:
            raise InputError(f"{path}:{i + 1} {problem}; remove the line or the file, or rerun `evaluate`")
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


def read_all_records(out: str | os.PathLike, invalid: list[str] | None = None) -> list[dict]:
    """Records of `out` and of its part files (each key once, the first seen wins); bad lines as in
    `read_records`."""
    seen: dict[tuple, dict] = {}
    for path in [Path(out), *part_paths(out)]:
        for record in read_records(path, invalid):
            vbench = record.get("suite") == "vbench"  # one per judged run, no prompt index: all kept
            seen.setdefault(("vbench", len(seen)) if vbench else record_key(record), record)
    return list(seen.values())


def drop_invalid_records(out: str | os.PathLike) -> list[str]:
    """Rewrite `out` and its part files without their invalid lines (atomically); returns what was dropped,
    one "FILE:LINE reason" each, so that a resumed evaluation regenerates those records."""
    dropped: list[str] = []
    for path in [Path(out), *part_paths(out)]:
        invalid: list[str] = []
        records = read_records(path, invalid)
        if invalid:
            _rewrite_records(path, records)
            dropped += invalid
    return dropped


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
