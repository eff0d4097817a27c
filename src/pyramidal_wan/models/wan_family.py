"""The Wan family: what each published Wan model needs beyond its transformer, and Wan2.2's expert switch.

Wan2.2-T2V-A14B and I2V-A14B are mixtures of two experts of one architecture: diffusers' `WanPipeline` runs
`transformer` (the high-noise expert) while the timestep t = 1000 sigma is >= 1000 * `boundary_ratio`, and
`transformer_2` (the low-noise expert) below. `ExpertVelocity` makes that choice per model evaluation from
the sigma the sampler passes, so inside a pyramid every stage's evaluations go to the expert of their own
(stage-local) noise level, exactly as the plain 0-...-0-N schedule does at full resolution.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.models.conditioning import ImageCondition
from pyramidal_wan.models.denoiser import TIMESTEP_SCALE, per_sample

# model_index.json keys of a two-expert folder: the second transformer and the switch level.
EXPERT_COMPONENT = "transformer_2"
BOUNDARY_KEY = "boundary_ratio"
# Wan2.1-I2V's CLIP image encoder and its preprocessing, as `WanImageToVideoPipeline` names them.
IMAGE_ENCODER_COMPONENTS = ("image_encoder", "image_processor")
# Wan2.1-I2V's image embedding: the 257 tokens (16 x 16 patches + class) of CLIP ViT-H/14 at 224 px.
CLIP_IMAGE_TOKENS = 257


@dataclass(frozen=True)
class WanVariant:
    """One published Wan model: its transformer preset and what the pipeline around it needs.

    `image` says how a video is conditioned on an image: None (text-to-video only), "clip" (Wan2.1-I2V: a
    CLIP image embedding plus first-frame latent and mask channels), "channels" (Wan2.2-I2V-A14B: the
    latent and mask channels only) or "first_frame" (Wan2.2-TI2V-5B: a clean first latent frame with
    per-token timesteps, `expand_timesteps`). `size` is the default (frames, height, width) for FLOPs: a
    size every stage of a 3-stage (2, 2, 2) pyramid divides.
    """

    transformer: str  # key of models.presets.PRESETS
    vae_scale_temporal: int = 4
    vae_scale_spatial: int = 8
    boundary_ratio: float | None = None  # two experts: high-noise `transformer` at t >= 1000 * ratio
    expand_timesteps: bool = False
    image: str | None = None
    size: tuple[int, int, int] = (81, 448, 832)

    @property
    def experts(self) -> int:
        return 1 if self.boundary_ratio is None else 2


# diffusers' scripts/convert_wan_to_diffusers.py: boundary_ratio 0.875 (T2V-A14B) and 0.9 (I2V-A14B),
# expand_timesteps for TI2V-5B, whose Wan2.2 VAE compresses 4x16x16 into 48 channels. Wan2.2's own sizes
# (81x480x832, 81x720x1280, 121x704x1280) do not divide into three stages; the defaults are the nearest ones
# that do (81x448x832 as in the paper; 129x768x1280 is the smallest covering TI2V-5B's 121x704x1280).
VARIANTS: dict[str, WanVariant] = {
    "wan2.1-1.3b": WanVariant("wan2.1-1.3b"),
    "wan2.1-14b": WanVariant("wan2.1-14b"),
    "wan2.1-i2v-14b": WanVariant("wan2.1-i2v-14b", image="clip"),
    "wan2.2-ti2v-5b": WanVariant(
        "wan2.2-ti2v-5b",
        vae_scale_spatial=16,
        expand_timesteps=True,
        image="first_frame",
        size=(129, 768, 1280),
    ),
    "wan2.2-t2v-a14b": WanVariant("wan2.2-t2v-a14b", boundary_ratio=0.875),
    "wan2.2-i2v-a14b": WanVariant("wan2.2-i2v-a14b", boundary_ratio=0.9, image="channels"),
}


def uses_high_noise_expert(sigma: torch.Tensor, boundary_ratio: float) -> torch.Tensor:
    """Per noise level: True where the high-noise expert runs (t = 1000 sigma >= 1000 * boundary_ratio).

    The comparison is made on float32 timesteps, as `WanPipeline` compares its scheduler's timesteps.
    """
    timestep = TIMESTEP_SCALE * torch.as_tensor(sigma, dtype=torch.float32)
    return timestep >= boundary_ratio * TIMESTEP_SCALE


class ExpertVelocity(nn.Module):
    """Two velocity models of a Wan2.2 A14B pair as one: `high` where sigma is at or above the boundary.

    A batch whose noise levels straddle the boundary (training draws one sigma per sample) is split, each
    expert evaluating its own samples; tensor arguments with the batch size as their first axis are split
    alongside. Sampling batches share one sigma, so they make one call to one expert.
    """

    def __init__(self, high: nn.Module, low: nn.Module, boundary_ratio: float):
        super().__init__()
        if not 0.0 < boundary_ratio < 1.0:
            raise InputError(f"boundary_ratio {boundary_ratio} must lie strictly between 0 and 1")
        self.high, self.low, self.boundary_ratio = high, low, float(boundary_ratio)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor, *args, **kwargs) -> torch.Tensor:
        batch = x.shape[0]
        sigma = per_sample(sigma, batch, x)
        high = uses_high_noise_expert(sigma, self.boundary_ratio)
        if bool(high.all()):
            return self.high(x, sigma, *args, **kwargs)
        if not bool(high.any()):
            return self.low(x, sigma, *args, **kwargs)
        out = torch.empty_like(x)
        for expert, rows in ((self.high, high), (self.low, ~high)):
            pick = [_rows(a, rows, batch) for a in (x, sigma, *args)]
            out[rows] = expert(*pick, **{k: _rows(v, rows, batch) for k, v in kwargs.items()})
        return out


def _rows(value: Any, rows: torch.Tensor, batch: int) -> Any:
    """`value[rows]` for a tensor batched along its first axis (or an image condition); anything else
    unchanged."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return value[rows]
    if isinstance(value, ImageCondition):
        return value.rows(rows)
    return value


def evaluation_sigmas(grid, sampler: str) -> tuple[tuple[int, tuple[float, ...]], ...]:
    """(stage, noise levels the model is evaluated at) per grid entry, in sampling order.

    Multi-step (Euler) grids end each stage on a level that is stepped to, not evaluated; few-step grids
    evaluate every level.
    """
    return tuple((st.segment.stage, st.sigmas if sampler == "fewstep" else st.sigmas[:-1]) for st in grid)


def expert_evaluations(grid, sampler: str, boundary_ratio: float) -> tuple[dict[str, int], ...]:
    """Per grid entry (sampling order, lowest resolution first): {"stage", "high", "low"} evaluations."""
    rows = []
    for stage, sigmas in evaluation_sigmas(grid, sampler):
        high = int(uses_high_noise_expert(torch.tensor(sigmas, dtype=torch.float64), boundary_ratio).sum())
        rows.append({"stage": stage, "high": high, "low": len(sigmas) - high})
    return tuple(rows)


def describe_experts(counts: tuple[dict[str, int], ...]) -> str:
    """'high 8 + low 12 / low 20 / low 10' (lowest resolution first): the expert split of every stage."""

    def one(row: dict[str, int]) -> str:
        parts = [f"{name} {row[name]}" for name in ("high", "low") if row[name]]
        return " + ".join(parts) or "none"

    return " / ".join(one(row) for row in counts)


# ---------------------------------------------------------------------------------------------------------
# folders


def expert_split(index: Mapping[str, Any], folder: str | os.PathLike) -> float | None:
    """The boundary_ratio of a pipeline folder's model_index.json (None: one transformer), checked.

    A folder with `transformer_2` but no `boundary_ratio`, or the reverse, cannot be sampled as the model
    was trained, so it is refused rather than half-used.
    """
    entry = index.get(EXPERT_COMPONENT)
    has_second = entry not in (None, [None, None])
    ratio = index.get(BOUNDARY_KEY)
    source = Path(folder) / "model_index.json"
    if has_second and ratio is None:
        raise CheckpointError(
            f"{source}: has {EXPERT_COMPONENT} but no {BOUNDARY_KEY}; set the noise level where the "
            "low-noise expert takes over (Wan2.2-T2V-A14B: 0.875, I2V-A14B: 0.9)"
        )
    if ratio is not None and not has_second:
        raise CheckpointError(
            f"{source}: {BOUNDARY_KEY} {ratio} names a two-expert model but the folder has no "
            f"{EXPERT_COMPONENT}; add the low-noise expert or remove {BOUNDARY_KEY}"
        )
    if ratio is not None and not (isinstance(ratio, (int, float)) and 0.0 < ratio < 1.0):
        raise CheckpointError(f"{source}: {BOUNDARY_KEY} {ratio!r} must be a number strictly between 0 and 1")
    return None if ratio is None else float(ratio)


def image_mode(config: Mapping[str, Any], expand_timesteps: bool = False) -> str | None:
    """How a transformer with `config` takes a conditioning image (`WanVariant.image`): "clip" (a CLIP
    branch, `image_dim`), "channels" (more input than output channels: mask and image latent), "first_frame"
    (`expand_timesteps` with plain channels: Wan2.2-TI2V-5B, which also runs text-to-video) or None."""
    if config.get("image_dim") is not None:
        return "clip"
    if config["in_channels"] != config["out_channels"]:
        return "channels"
    return "first_frame" if expand_timesteps else None


def check_image_given(mode: str | None, given: bool, source: str | os.PathLike) -> None:
    """An image-to-video model ("clip", "channels") needs an image; a text-to-video one (None) takes none."""
    if mode in ("clip", "channels") and not given:
        raise InputError(
            f"{source}: an image-to-video model (image conditioning {mode!r}) needs a conditioning image; "
            "pass one (generate --image PATH, or image= in Python)"
        )
    if mode is None and given:
        raise InputError(
            f"{source}: a text-to-video model takes no conditioning image; drop the image (--image) or use "
            "an image-to-video model"
        )


def check_image_model(
    config: Mapping[str, Any], expand_timesteps: bool, vae_channels: int, vae_scale_temporal: int, source
) -> str | None:
    """The image mode of a transformer, checked against the VAE: "clip" and "channels" take the noisy latent,
    the mask (one channel per pixel frame of a latent frame) and the image latent; "first_frame" cannot also
    take extra channels. Returns `image_mode`."""
    mode = image_mode(config, expand_timesteps)
    expected = 2 * vae_channels + vae_scale_temporal
    if mode in ("clip", "channels") and config["in_channels"] != expected:
        raise InputError(
            f"{source}: in_channels {config['in_channels']} of an image-to-video transformer must be "
            f"{expected} ({vae_channels} latent + {vae_scale_temporal} mask + {vae_channels} image latent "
            "channels of this VAE)"
        )
    if expand_timesteps and config["in_channels"] != config["out_channels"]:
        raise InputError(
            f"{source}: expand_timesteps (a clean first latent frame) with in_channels "
            f"{config['in_channels']} != out_channels {config['out_channels']}; a model uses one or the other"
        )
    return mode


def variant_video_settings(
    name: str, num_frames: int | None = None, height: int | None = None, width: int | None = None
) -> dict[str, int]:
    """The keywords of `stage_geometry` for a preset: its default size (unless given) and VAE factors."""
    variant = VARIANTS[name]
    given = (num_frames, height, width)
    frames, h, w = (d if g is None else g for g, d in zip(given, variant.size))
    return {
        "num_frames": frames,
        "height": h,
        "width": w,
        "vae_scale_temporal": variant.vae_scale_temporal,
        "vae_scale_spatial": variant.vae_scale_spatial,
    }
