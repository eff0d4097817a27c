"""Stage clean signals in pixel space (METHOD.md 4.5): downsample the RGB video, then VAE-encode each stage.

Spatially a stage is a box (area) average over f_h x f_w pixels; temporally (f_t = 2) frame 0 is kept and
the pixel-frame pairs (1, 2), (3, 4), ... are averaged ("average") or their second frame kept
("subsample"). Low-res latent frame j >= 1 then covers the same high-res pixel frames 8j-7..8j as the
latent-space operator's pair (2j-1, 2j), so pixel and latent constructions pair up consistently.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyramidal_wan.errors import InputError

TEMPORAL_FILTERS = ("average", "subsample")


def downsample_video(video: torch.Tensor, factors: tuple[int, int, int], temporal: str = "average"):
    """One pyramid step of a pixel video (B, C, F, H, W) in [-1, 1] by (f_t, f_h, f_w), frame 0 kept."""
    if temporal not in TEMPORAL_FILTERS:
        raise InputError(f"unknown temporal filter {temporal!r}; choose one of {TEMPORAL_FILTERS}")
    if video.ndim != 5:
        raise ValueError(f"expected a video (B, C, F, H, W), got shape {tuple(video.shape)}")
    ft, fh, fw = factors
    frames, height, width = video.shape[2:]
    if height % fh or width % fw or (ft == 2 and (frames - 1) % 2):
        raise InputError(f"a {frames}x{height}x{width} video cannot be downsampled by {factors}")
    if fh * fw > 1:
        video = F.avg_pool3d(video, (1, fh, fw))
    if ft == 2:
        first, rest = video[:, :, :1], video[:, :, 1:]
        pairs = rest.unflatten(2, (rest.shape[2] // 2, 2))  # (B, C, (F-1)/2, 2, H, W)
        rest = pairs.mean(3) if temporal == "average" else pairs[:, :, :, 1]
        video = torch.cat([first, rest], dim=2)
    return video


def stage_videos(video: torch.Tensor, factors, temporal: str = "average") -> list[torch.Tensor]:
    """Pixel videos of every stage (index 0 = the input), one downsampling per transition."""
    videos = [video]
    for fac in factors:
        videos.append(downsample_video(videos[-1], tuple(fac), temporal))
    return videos
