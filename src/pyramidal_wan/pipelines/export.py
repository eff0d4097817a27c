"""Video export of pipeline outputs: MP4 (H.264 through PyAV) and GIF, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pyramidal_wan.errors import InputError
from pyramidal_wan.utils.video import write_video

# Wan2.1's `sample_fps`.
DEFAULT_FPS = 16.0


def to_uint8_video(frames) -> np.ndarray:
    """One video of pipeline output (`output_type="np"`: (F, H, W, 3) floats in [0, 1]) as uint8 frames."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or not np.issubdtype(frames.dtype, np.floating):
        raise InputError(
            f"expected one video as float (F, H, W, 3) in [0, 1], got {frames.dtype} {frames.shape}"
        )
    return (frames.clip(0.0, 1.0) * 255.0).round().astype(np.uint8)


def export_video(frames, path: str | os.PathLike, fps: float = DEFAULT_FPS, gif: bool = False) -> list[Path]:
    """Write one video (`output_type="np"` frames) to `path` (.mp4 or .gif) and, with `gif`, a GIF beside it.

    Every file is written atomically (temporary file, then rename). Returns the paths written.
    """
    path = Path(path)
    pixels = to_uint8_video(frames)
    written = [write_video(path, pixels, fps=fps)]
    if gif and path.suffix.lower() != ".gif":
        written.append(write_video(path.with_suffix(".gif"), pixels, fps=fps))
    return written
