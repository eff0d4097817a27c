"""Step caches of `diffusers.hooks` inside the pyramid samplers.

diffusers' caches (first-block cache, TaylorSeer) keep per-call state keyed by a cache context: residuals
or features of the previous step. A pyramid stage change changes the token grid, so the state of the
previous stage is of the wrong shape and the wrong process; `StageCachedVelocity` resets it whenever the
latent's shape changes, so the first step of every stage is computed in full.
"""

from __future__ import annotations

import functools

import torch
from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig
from torch import nn

from pyramidal_wan.errors import InputError

# The Wan block modules TaylorSeer forecasts: diffusers' default patterns ("^blocks.*attn", matched in full)
# miss Wan's attn1 / attn2, so it would silently cache nothing.
WAN_TAYLORSEER_MODULES = (r"^blocks\.\d+\.attn[12]$", r"^blocks\.\d+\.ffn$")
# Cache names of `generate --cache` and the pipeline's `cache` argument: diffusers' default settings (the
# TaylorSeer factors in float32, the latents' dtype).
CACHES = {
    "first-block": FirstBlockCacheConfig,
    "taylorseer": functools.partial(
        TaylorSeerCacheConfig,
        cache_identifiers=list(WAN_TAYLORSEER_MODULES),
        taylor_factors_dtype=torch.float32,
    ),
}


def check_cache(name: str | None, sampler: str, kind: str = "resolution") -> str | None:
    """`name` if a step cache of that name can run with `sampler` on a `kind` pyramid, else an InputError."""
    if name is None:
        return None
    if name not in CACHES:
        raise InputError(f"unknown cache {name!r}; choose one of {', '.join(CACHES)}")
    if sampler != "multistep":
        raise InputError(f"cache {name!r} needs multistep sampling (few-step runs too few steps to reuse)")
    if kind != "resolution":
        raise InputError(f"cache {name!r} is not supported on a patch-pyramid (PPF) model; drop --cache")
    return name


class StageCachedVelocity(nn.Module):
    """A velocity model whose transformer carries a diffusers step cache, reset at every stage change.

    The stage is recognised by the latent's (T, H, W): a resolution pyramid changes it at every jump. The
    wrapped model must open the transformer's `cache_context` around its calls (`CFGVelocity` does, one
    context per CFG branch, with `branch_context=transformer.cache_context`).
    """

    def __init__(self, model: nn.Module, transformer: nn.Module):
        super().__init__()
        self.model = model
        self.transformer = transformer
        self.stage_shape = None

    def forward(self, x, sigma, *args, **kwargs):
        if tuple(x.shape) != self.stage_shape:
            self.transformer._reset_stateful_cache()
            self.stage_shape = tuple(x.shape)
        return self.model(x, sigma, *args, **kwargs)
