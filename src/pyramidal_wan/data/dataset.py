"""The dataset format `prepare-data` reads: a folder of clips plus `captions.jsonl`.

One JSON object per line of `captions.jsonl`, with at least {"video": "000000.mp4", "caption": "..."}; the
video path is relative to the folder. The toy world (`toy.dataset`) and `synthesize` write this layout and
add their own keys (seed, index, split, scene), which readers ignore.
"""

from __future__ import annotations

import json
from pathlib import Path

from pyramidal_wan.errors import InputError

CAPTIONS_FILE = "captions.jsonl"


def read_records(out_dir: str | Path) -> list[dict]:
    """The records of a dataset folder's `captions.jsonl`, the whole listing checked before any is used.

    Every record must be a JSON object with a "video" (a file name relative to the folder, which must exist)
    and a string "caption", each (video, caption) pair once, and there must be at least one. Every bad line
    is reported, with its line number, in one `InputError`.
    """
    out_dir = Path(out_dir)
    path = out_dir / CAPTIONS_FILE
    if not path.is_file():
        raise InputError(f"no {CAPTIONS_FILE} in {out_dir}; make one with `pyramidal-wan toy make-dataset`")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    records, problems, seen = [], [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"line {number} is not JSON ({err.msg})")
            continue
        problem = _record_problem(record, out_dir)
        if problem is None:
            key = (record["video"], record["caption"])
            if key in seen:
                problem = f"repeats line {seen[key]} ({record['video']!r} with the same caption)"
            seen.setdefault(key, number)
        if problem is not None:
            problems.append(f"line {number} {problem}")
        else:
            records.append(record)
    if problems:
        raise InputError(f"{path} has {len(problems)} bad line(s), fix them: {'; '.join(problems)}")
    if not records:
        raise InputError(f'{path} lists no videos; add one JSON line per video: {{"video", "caption"}}')
    return records


def _record_problem(record, out_dir: Path) -> str | None:
    """What is wrong with one parsed captions.jsonl line, or None."""
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not an object with 'video' and 'caption'"
    missing = [key for key in ("video", "caption") if key not in record]
    if missing:
        return f"needs the keys 'video' and 'caption' (missing {', '.join(map(repr, missing))})"
    video, caption = record["video"], record["caption"]
    if not isinstance(video, str) or not video.strip():
        return f"has 'video': {json.dumps(video)}; it must be a file name"
    if not isinstance(caption, str):
        return f"has 'caption': {json.dumps(caption)}; it must be a string"
    if not (out_dir / video).is_file():
        return f"names {video}, which is not a file in {out_dir}"
    return None
