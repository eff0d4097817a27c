"""Video files and pixel conventions at the file boundary.

Files hold uint8 frames (F, H, W, 3); code works on float tensors (C, F, H, W) in [-1, 1] (with an
optional leading batch axis). `write_video` / `read_video` handle .mp4 (H.264, full-chroma yuv444p,
lossless by default, so small toy frames keep their colours to within 2 levels) and .gif.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import imageio.v3 as iio
import numpy as np
import torch

from pyramidal_wan.errors import InputError
from pyramidal_wan.utils.io import atomic_path

VIDEO_SUFFIXES = (".mp4", ".gif")


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise InputError(
            f"video frames must be uint8 (F, H, W, 3) with F >= 1, got {frames.dtype} {frames.shape}"
        )
    return np.ascontiguousarray(frames)


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise InputError(f"unsupported video file type {suffix!r} for {path}; use one of {VIDEO_SUFFIXES}")
    return suffix


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 8.0, crf: int = 0) -> Path:
    """Write uint8 frames (F, H, W, 3) to an .mp4 (H.264 yuv444p, quality `crf`) or .gif file, atomically.

    The default `crf=0` is lossless H.264: the only error left is the RGB -> YUV rounding (at most 2 levels
    on toy clips). Returns the path written; any frame size works because chroma is not subsampled. GIF is a
    preview format: its encoder merges identical consecutive frames into one longer frame (the timing is
    kept), so reading a GIF back can return fewer frames than were written.
    """
    path = Path(path)
    suffix = _check_suffix(path)
    frames = _check_frames(frames)
    if fps <= 0:
        raise InputError(f"fps must be positive, got {fps}")
    with atomic_path(path) as tmp:
        if suffix == ".mp4":
            _write_mp4(tmp, frames, fps, crf)
        else:
            # Pillow takes the frame duration in milliseconds; loop=0 repeats forever.
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
    return path


def _write_mp4(path: Path, frames: np.ndarray, fps: float, crf: int) -> None:
    from fractions import Fraction

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        # Full-resolution chroma: 4:2:0 would smear a 64x64 clip's colour edges over 2x2 blocks.
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Read all frames of an .mp4 or .gif file as uint8 (F, H, W, 3).

    Raises `InputError` (one line) if the file is missing, of an unsupported type, unreadable or empty.
    """
    path = Path(path)
    suffix = _check_suffix(path)
    if not path.is_file():
        raise InputError(f"video file not found: {path}")
    try:
        if suffix == ".mp4":
            with av.open(str(path)) as container:
                frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        else:
            frames = list(iio.imread(path, index=None, extension=".gif", mode="RGB"))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise InputError(
            f"cannot read video {path}: {str(err).splitlines()[0] if str(err) else err!r}"
        ) from err
    if not frames:
        raise InputError(f"video {path} has no frames")
    return np.stack(frames).astype(np.uint8, copy=False)


def to_pixel_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 frames (F, H, W, C) -> float32 video (C, F, H, W) in [-1, 1].

    A leading batch axis is kept: (B, F, H, W, C) -> (B, C, F, H, W).
    """
    video = torch.as_tensor(np.asarray(frames) if not torch.is_tensor(frames) else frames)
    if video.dtype != torch.uint8 or video.ndim not in (4, 5):
        raise InputError(
            f"expected uint8 frames (F, H, W, C) or (B, F, H, W, C), got {video.dtype} {tuple(video.shape)}"
        )
    video = video.movedim(-1, -4)  # (..., C, F, H, W)
    return video.float().div(127.5).sub(1.0)


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """Float video (C, F, H, W) in [-1, 1] -> uint8 frames (F, H, W, C), clamped and rounded.

    A leading batch axis is kept: (B, C, F, H, W) -> (B, F, H, W, C).
    """
    if video.ndim not in (4, 5) or not video.is_floating_point():
        raise InputError(
            f"expected a float video (C, F, H, W) or (B, C, F, H, W), got {video.dtype} {tuple(video.shape)}"
        )
    pixels = video.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.movedim(-4, -1).cpu().numpy()
