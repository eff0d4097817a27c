"""Adversarial-distillation discriminator: frozen Wan block features and conv heads (METHOD.md 8, D12).

The backbone is a frozen velocity model (`WanVelocity` around a `WanTransformer3DModel`); `block_features`
runs it through the velocity wrapper (so the 1000 * sigma conversion stays in one place) and captures the
hidden states after the hooked blocks, stopping the forward right after the last of them. Each hooked
block gets one `DiscriminatorHead`: tokens -> (d, T', H', W') grid -> channel LayerNorm (no affine) ->
1x1x1 conv d -> C -> a spatial and a temporal conv branch, each ending in one logit per token. All strides
are 1, so the smallest stage grid works.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def default_blocks(num_layers: int) -> tuple[int, ...]:
    """Half, three-quarter and full depth: floor(L/2)-1, floor(3L/4)-1, L-1 (14, 21, 29 for L = 30)."""
    picks = (num_layers // 2 - 1, (3 * num_layers) // 4 - 1, num_layers - 1)
    return tuple(sorted({max(0, b) for b in picks}))


def token_grid(x: torch.Tensor, patch_size) -> tuple[int, int, int]:
    """(T', H', W'): the transformer's token grid for a latent x of shape (B, C, T, H, W)."""
    p_t, p_h, p_w = patch_size
    return x.shape[2] // p_t, x.shape[3] // p_h, x.shape[4] // p_w


class _StopForward(Exception):
    """Raised by the hook after the last hooked block: the rest of the backbone is not run."""


def block_features(
    model, x: torch.Tensor, sigma, encoder_hidden_states, blocks, **kwargs
) -> list[torch.Tensor]:
    """Hidden states (B, N, d) after each block in `blocks` (0-based) of a velocity model's transformer;
    `kwargs` go to the model (an image-to-video model's `image_condition`).

    The state after block j is read as the input of the module that consumes it (block j+1, or the output
    norm after the last block), by a forward pre-hook: that tensor is the block's grad-connected output
    even when the blocks run under gradient checkpointing. The hook of the last hooked block raises, so
    later blocks, the output norm and the projection never run. Gradients flow into `x` when it requires
    them; the backbone's frozen parameters get none.
    """
    transformer = model.transformer
    num_layers = len(transformer.blocks)
    blocks = tuple(blocks)
    if not blocks or any(not 0 <= b < num_layers for b in blocks) or len(set(blocks)) != len(blocks):
        raise ValueError(f"hooked blocks {blocks} must be distinct indices in 0..{num_layers - 1}")
    last, captured, handles = max(blocks), {}, []

    def make_hook(block):
        def hook(module, args):
            captured[block] = args[0]  # (B, N, d): the output of `block`
            if block == last:
                raise _StopForward

        return hook

    for b in blocks:
        consumer = transformer.blocks[b + 1] if b + 1 < num_layers else transformer.norm_out
        handles.append(consumer.register_forward_pre_hook(make_hook(b)))
    try:
        model(x, sigma, encoder_hidden_states, **kwargs)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return [captured[b] for b in blocks]


def _conv_block(conv, channels: int, groups: int) -> list[nn.Module]:
    return [conv(channels, channels, 3, padding=1), nn.GroupNorm(groups, channels), nn.SiLU()]


class DiscriminatorHead(nn.Module):
    """One hooked block's head: spatial and temporal logits per token (METHOD.md 8, "Head")."""

    def __init__(self, dim: int, channels: int = 256):
        super().__init__()
        groups = math.gcd(32, channels)  # GroupNorm(32) at the default width; fewer groups for narrow heads
        self.stem = nn.Conv3d(dim, channels, 1)
        self.spatial = nn.Sequential(
            *_conv_block(nn.Conv2d, channels, groups),
            *_conv_block(nn.Conv2d, channels, groups),
            nn.Conv2d(channels, 1, 1),
        )
        self.temporal = nn.Sequential(
            *_conv_block(nn.Conv1d, channels, groups),
            *_conv_block(nn.Conv1d, channels, groups),
            nn.Conv1d(channels, 1, 1),
        )

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Logits (B, 2, T', H', W'): [spatial, temporal], kept elementwise, from tokens (B, N, d)."""
        b, n, d = tokens.shape
        t, h, w = grid
        if n != t * h * w:
            raise ValueError(f"{n} tokens do not fill a {t}x{h}x{w} grid")
        # Channel LayerNorm without affine, in float32: block outputs of a bf16 backbone have large norms.
        x = F.layer_norm(tokens.float(), (d,))
        x = x.transpose(1, 2).reshape(b, d, t, h, w)  # Wan's token order is t-major, then h, then w
        x = self.stem(x)  # (B, C, T', H', W')
        c = x.shape[1]
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # one (C, H', W') map per frame
        spatial = self.spatial(frames).reshape(b, t, h, w)
        series = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, c, t)  # one (C, T') sequence per location
        temporal = self.temporal(series).reshape(b, h, w, t).permute(0, 3, 1, 2)  # (B, T', H', W')
        return torch.stack([spatial, temporal], dim=1)


class Discriminator(nn.Module):
    """The trainable part of the discriminator: one head per hooked block of a frozen backbone."""

    def __init__(self, dim: int, blocks, channels: int = 256):
        super().__init__()
        self.blocks = tuple(blocks)
        self.heads = nn.ModuleList(DiscriminatorHead(dim, channels) for _ in self.blocks)

    def forward(self, features: list[torch.Tensor], grid: tuple[int, int, int]) -> torch.Tensor:
        """Logits (B, n_blocks, 2, T', H', W') from the hooked blocks' hidden states, each (B, N, d)."""
        if len(features) != len(self.heads):
            raise ValueError(f"{len(features)} feature maps for {len(self.heads)} heads")
        return torch.stack([head(f, grid) for head, f in zip(self.heads, features)], dim=1)
