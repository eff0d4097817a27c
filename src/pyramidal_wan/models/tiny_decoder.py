"""A tiny causal video decoder for Wan latents, in the style of the community's tiny Wan decoders.

Wan's VAE decoder runs 3D convolutions one latent frame at a time against a feature cache. On a few-step
model it dominates the video's cost (the toy's DMD-OT 2-2-1 in the speed-up table of docs/results.md:
decode 0.077 s, all stages 0.014 s; Wan2.1's decoder at 81x480x832: 275 TFLOPs,
`benchmarks/decoder_flops.py`). `TinyWanDecoder` replaces it with 2D convolutions over every frame at once:

- time mixes only through `MemoryBlock`s, which see their own input one frame earlier (causal, like Wan's
  cache), so a clip decodes in one batched pass, or in chunks of latent frames carrying one frame of state;
- time grows by `TimeGrow`: a 1x1 convolution makes `factor` times the channels, which become `factor`
  frames; space grows by nearest-neighbour upsampling followed by a 3x3 convolution;
- the first latent frame of Wan's causal layout is one pixel frame, not `temporal_factor`, so the decoder
  drops the first `temporal_factor - 1` frames it makes.

It takes the latents `AutoencoderKLWan.decode` takes (un-normalised) and returns pixels in [-1, 1], so it
stands in for `vae.decode`. A trained one is a diffusers model folder (`save_pretrained` / `from_pretrained`:
config.json and safetensors weights); `toy train-vae --decoder tiny` trains one against a toy VAE's encoder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.models.presets import read_config_json


def _conv(channels_in: int, channels_out: int, kernel_size: int = 3) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, kernel_size, padding=kernel_size // 2)


class MemoryBlock(nn.Module):
    """A residual block over frames (B, T, C, H, W) whose first convolution also sees the previous frame.

    `past` is the block's input at the frame before the first of `x` (zeros at the start of a clip); the
    block returns its output and the input's last frame, the `past` of the next chunk.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.mix = _conv(2 * channels, channels)
        self.conv = _conv(channels, channels)

    def forward(self, x: torch.Tensor, past: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, c, h, w = x.shape
        first = torch.zeros_like(x[:, :1]) if past is None else past
        previous = torch.cat([first, x[:, :-1]], dim=1)
        frames = torch.cat([x, previous], dim=2).flatten(0, 1)  # (B*T, 2C, H, W)
        y = self.conv(F.relu(self.mix(frames)))
        return F.relu(y.view(b, t, c, h, w) + x), x[:, -1:]


class TimeGrow(nn.Module):
    """`factor` output frames per input frame, from `factor` times the channels (a 1x1 convolution)."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.factor = factor
        self.expand = _conv(channels, channels * factor, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = x.shape
        y = self.expand(x.flatten(0, 1)).view(b, t, self.factor, c, h, w)
        return y.flatten(1, 2)  # frame t * factor + k is the k-th made from input frame t


class TinyWanDecoder(ModelMixin, ConfigMixin):
    r"""
    A tiny causal decoder from Wan latents (B, C, T, H, W) to pixel videos (B, 3, F, H', W') in [-1, 1].

    Args:
        latent_channels (`int`, defaults to 16): the VAE's `z_dim`.
        channels (`list[int]`, defaults to `[64, 32, 16]`): feature channels per level, from the latent
            resolution up; each level after the first doubles the height and width, so the spatial factor
            is `2 ** (len(channels) - 1)` (the toy VAE's 4; Wan2.1's 8 needs four levels).
        blocks (`list[int]`, defaults to `[2, 2, 0]`): `MemoryBlock`s per level. The defaults are the toy's:
            the full-resolution level costs most (4x the pixels and frames of the one below), so it gets
            none (`benchmarks/decode_cost.py`).
        time_factors (`list[int]`, defaults to `[2, 2]`): frames made per frame entering each level after the
            first; their product is the VAE's temporal factor (4 for Wan2.1 and the toy).
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 16,
        channels: tuple[int, ...] = (64, 32, 16),
        blocks: tuple[int, ...] = (2, 2, 0),
        time_factors: tuple[int, ...] = (2, 2),
    ):
        super().__init__()
        if len(blocks) != len(channels) or len(time_factors) != len(channels) - 1:
            raise InputError(
                f"TinyWanDecoder needs one block count per level and one time factor per level after the "
                f"first; got channels {list(channels)}, blocks {list(blocks)}, "
                f"time_factors {list(time_factors)}"
            )
        self.conv_in = _conv(latent_channels, channels[0])
        self.levels = nn.ModuleList(
            nn.ModuleList(MemoryBlock(width) for _ in range(count)) for width, count in zip(channels, blocks)
        )
        self.grows = nn.ModuleList(TimeGrow(width, f) for width, f in zip(channels[:-1], time_factors))
        self.ups = nn.ModuleList(_conv(a, b) for a, b in zip(channels[:-1], channels[1:]))
        self.conv_out = _conv(channels[-1], 3)

    @property
    def temporal_factor(self) -> int:
        return math.prod(self.config.time_factors)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.config.channels) - 1)

    def forward(self, latents: torch.Tensor, chunk_frames: int | None = None) -> torch.Tensor:
        """Decode (B, C, T, H, W) latents to (B, 3, 1 + temporal_factor * (T - 1), H', W') pixels.

        chunk_frames: latent frames decoded per pass (default: all at once). Chunks carry each block's last
        input frame, so the video is the same; they bound the activation memory for long, large videos.
        """
        if latents.ndim != 5 or latents.shape[1] != self.config.latent_channels:
            raise InputError(
                f"TinyWanDecoder takes latents (B, {self.config.latent_channels}, T, H, W), "
                f"got shape {tuple(latents.shape)}"
            )
        frames = latents.transpose(1, 2)  # (B, T, C, H, W): frames are the batch of every 2D convolution
        step = frames.shape[1] if chunk_frames is None else max(int(chunk_frames), 1)
        pasts: list[torch.Tensor | None] = [None] * sum(self.config.blocks)
        chunks = [self._decode_chunk(frames[:, i : i + step], pasts) for i in range(0, frames.shape[1], step)]
        video = torch.cat(chunks, dim=1)[
            :, self.temporal_factor - 1 :
        ]  # Wan's first latent frame is one frame
        return video.transpose(1, 2).clamp(-1.0, 1.0)

    def _decode_chunk(self, frames: torch.Tensor, pasts: list[torch.Tensor | None]) -> torch.Tensor:
        """Decode consecutive latent frames (B, T, C, H, W); updates `pasts` (one per block) in place."""
        b, t = frames.shape[:2]
        x = F.relu(self.conv_in(frames.flatten(0, 1)))
        x = x.view(b, t, *x.shape[1:])
        index = 0
        for level, blocks in enumerate(self.levels):
            if level > 0:
                x = self.grows[level - 1](x)
                n = x.shape[1]
                # Channels-last: PyTorch's CPU nearest upsampling of contiguous NCHW is several times
                # slower (a third of the toy decode in a profile); the values are the same.
                up = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)
                up = F.interpolate(up, scale_factor=2.0, mode="nearest")
                x = F.relu(self.ups[level - 1](up))
                x = x.view(b, n, *x.shape[1:])
            for block in blocks:
                x, pasts[index] = block(x, pasts[index])
                index += 1
        n = x.shape[1]
        return torch.tanh(self.conv_out(x.flatten(0, 1))).view(b, n, 3, *x.shape[-2:])


def load_tiny_decoder(path: str | Path, vae_config: Mapping[str, Any] | None = None) -> TinyWanDecoder:
    """A `TinyWanDecoder` from a diffusers model folder; a missing or foreign folder is a `CheckpointError`.

    With `vae_config` (a VAE's config.json), a decoder that does not fit that VAE is an `InputError`.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{folder} is not a tiny-decoder folder (no config.json); train one with "
            "`pyramidal-wan toy train-vae --decoder tiny`, or save one with TinyWanDecoder.save_pretrained"
        )
    try:
        decoder = TinyWanDecoder.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, RuntimeError, TypeError) as err:
        first_line = str(err).splitlines()[0] if str(err) else repr(err)
        raise CheckpointError(f"{folder}: not a TinyWanDecoder folder ({first_line})") from err
    if vae_config is not None:
        check_decoder_fits(
            decoder,
            vae_config.get("z_dim", 16),
            vae_config.get("scale_factor_temporal", 4),  # AutoencoderKLWan's defaults
            vae_config.get("scale_factor_spatial", 8),
        )
    return decoder.eval()


def check_decoder_fits(decoder: TinyWanDecoder, z_dim: int, temporal: int, spatial: int) -> None:
    """A decoder stands in for a VAE's decode only with the same latent channels and factors."""
    have = (decoder.config.latent_channels, decoder.temporal_factor, decoder.spatial_factor)
    if have != (z_dim, temporal, spatial):
        raise InputError(
            f"the tiny decoder decodes {have[0]} latent channels at {have[1]}x time / {have[2]}x space, the "
            f"VAE {z_dim} at {temporal}x / {spatial}x: use a decoder trained for this VAE"
        )


def load_folder_decoder(model_folder: str | Path, decoder: str | Path | None) -> TinyWanDecoder | None:
    """The tiny decoder at `decoder` checked against the VAE of the pipeline folder `model_folder` (None: no
    decoder), loaded before any of the pipeline's weights so that a wrong one fails in a second."""
    if decoder is None:
        return None
    vae_config = read_config_json(Path(model_folder) / "vae" / "config.json", "a VAE config.json")
    return load_tiny_decoder(decoder, vae_config)
