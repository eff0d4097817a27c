"""Write toy-world clips to disk in the training data format (`pyramidal_wan.data.dataset`).

Layout of `out_dir`:

    000000.mp4, 000001.mp4, ...   uint8 RGB clips (lossless H.264, see `pyramidal_wan.utils.video`)
    captions.jsonl                one JSON object per line: {"video": "000000.mp4", "caption": "...",
                                  "seed": S, "index": i, "split": "train", "scene": Scene.to_dict()}
    dataset.json                  how the clips were made (seed, split, world, fps), checked on resume

Clip i is `seeded_scene(seed, i, split, world)`, so a rerun skips the clips already written and reproduces
the rest.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tqdm.auto import tqdm

from pyramidal_wan.data.dataset import CAPTIONS_FILE
from pyramidal_wan.errors import InputError
from pyramidal_wan.toy.world import DEFAULT_WORLD, SPLITS, WorldConfig, seeded_scene
from pyramidal_wan.utils.io import atomic_path, write_json
from pyramidal_wan.utils.video import write_video

MANIFEST_FILE = "dataset.json"


def clip_name(index: int) -> str:
    """File name of clip `index` in a toy dataset folder."""
    return f"{index:06d}.mp4"


def _manifest(seed: int, split: str, config: WorldConfig, fps: float) -> dict:
    # A JSON round trip turns the config's tuples into lists, as they read back from disk.
    world = json.loads(json.dumps(dataclasses.asdict(config)))
    return {"kind": "pyramidal-wan toy dataset", "seed": seed, "split": split, "fps": fps, "world": world}


def make_dataset(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    split: str = "train",
    config: WorldConfig = DEFAULT_WORLD,
    fps: float = 8.0,
    progress: bool = True,
) -> Path:
    """Write clips 0..n-1 of the (seed, split) stream and their captions into `out_dir`.

    Returns the path of `captions.jsonl`. Resumable: clips already on disk are kept (every file is written
    atomically, so an existing file is complete). Raises `InputError` if `out_dir` holds a dataset made
    with a different seed, split, world or fps.
    """
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    if split not in SPLITS:
        raise InputError(f"--split must be one of {SPLITS}, got {split!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file; give a folder")
    manifest = _manifest(seed, split, config, fps)
    manifest_path = out_dir / MANIFEST_FILE
    if manifest_path.exists():
        existing = json.loads(manifest_path.read_text())
        if existing != manifest:
            raise InputError(
                f"{out_dir} holds a toy dataset made with seed {existing.get('seed')}, split "
                f"{existing.get('split')!r}; use the same settings to extend it, or another --out"
            )
    else:
        write_json(manifest_path, manifest)

    records = []
    for index in tqdm(range(n), desc="make-dataset", disable=not progress, unit="clip"):
        scene = seeded_scene(seed, index, split, config)
        name = clip_name(index)
        if not (out_dir / name).exists():
            write_video(out_dir / name, scene.render(), fps=fps)
        records.append(
            {
                "video": name,
                "caption": scene.caption(),
                "seed": seed,
                "index": index,
                "split": split,
                "scene": scene.to_dict(),
            }
        )
    captions_path = out_dir / CAPTIONS_FILE
    with atomic_path(captions_path) as tmp:
        tmp.write_text("".join(json.dumps(record) + "\n" for record in records))
    return captions_path
