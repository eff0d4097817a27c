"""Video export of pipeline outputs: MP4 (H.264 through PyAV) and GIF, written atomically."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from pyramidal_wan.errors import InputError
from pyramidal_wan.utils.io import atomic_path
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

    All files are written under temporary names first and renamed only once every one is complete, so a
    failure leaves none of them (not an MP4 without its GIF). Returns the paths written.
    """
    path = Path(path)
    pixels = to_uint8_video(frames)
    paths = [path, path.with_suffix(".gif")] if gif and path.suffix.lower() != ".gif" else [path]
    # Leaving the stack renames the last file first: if that rename fails, the earlier ones are not made.
    with ExitStack() as stack:
        for final in paths:
            write_video(stack.enter_context(atomic_path(final)), pixels, fps=fps)
    return paths
