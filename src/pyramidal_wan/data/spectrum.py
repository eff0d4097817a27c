"""Detail-band energy of cached stage latents: what each stage's downsampling removes (METHOD.md 3.4)."""

from __future__ import annotations

import torch

from pyramidal_wan.data.cache import CachedLatents
from pyramidal_wan.pyramid import Pyramid


@torch.no_grad()
def detail_energies(data: CachedLatents, pyramid: Pyramid, max_items: int = 512, batch_size: int = 64):
    """e_i = E mean((x0^(i) - R_up x0^(i+1))^2) per transition, over the first `max_items` cached videos.

    With the pixel-space construction this is the energy the jump from stage i+1 discards; it includes
    the small low-band mismatch between encoding a downsampled video and downsampling its latent.
    """
    n = min(len(data), max_items)
    totals = [0.0] * (pyramid.num_stages - 1)
    for start in range(0, n, batch_size):
        batch = data.batch(torch.arange(start, min(start + batch_size, n)))["latents"]
        for i in range(pyramid.num_stages - 1):
            residual = batch[i] - pyramid.up(batch[i + 1], i)
            totals[i] += residual.square().mean(dim=(1, 2, 3, 4)).sum().item()
    return [t / n for t in totals]
