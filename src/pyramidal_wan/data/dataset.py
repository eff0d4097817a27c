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
    """The records of a dataset folder's `captions.jsonl`, checking each has "video" and "caption" keys."""
    path = Path(out_dir) / CAPTIONS_FILE
    if not path.is_file():
        raise InputError(f"no {CAPTIONS_FILE} in {out_dir}; make one with `pyramidal-wan toy make-dataset`")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number} is not JSON ({err.msg})") from err
        if not isinstance(record, dict) or not {"video", "caption"} <= record.keys():
            raise InputError(f"{path}:{number} needs the keys 'video' and 'caption'")
        records.append(record)
    return records
