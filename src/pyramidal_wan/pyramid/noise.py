"""Noise levels across stage jumps, stage boundaries, and reproducible noise (METHOD.md sections 2.2, 3.1).

Convention: x_sigma = (1 - sigma) x0 + sigma eps, sigma in [0, 1], sigma = 1 is pure noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pyramidal_wan.errors import InputError


def jump_sigma(sigma_e: float, block_size: int) -> float:
    """g_K(sigma_e) = sqrt(K) sigma_e / (1 + (sqrt(K) - 1) sigma_e): the noise level after R_up_N."""
    root_k = math.sqrt(block_size)
    return root_k * sigma_e / (1.0 + (root_k - 1.0) * sigma_e)


def inverse_jump_sigma(sigma_s: float, block_size: int) -> float:
    """g_K^{-1}(s) = s / (sqrt(K) - (sqrt(K) - 1) s)."""
    root_k = math.sqrt(block_size)
    return sigma_s / (root_k - (root_k - 1.0) * sigma_s)


def stage_boundaries(
    clean_ends: Sequence[float], block_sizes: Sequence[int]
) -> tuple[tuple[float, float], ...]:
    """Per-stage (sigma_c, sigma_n) from the clean ends of the coarser stages (METHOD.md 3.1).

    `clean_ends` lists sigma_c^(1) < ... < sigma_c^(S-1) in (0, 1); sigma_c^(0) = 0, sigma_n^(S-1) = 1 and
    sigma_n^(i) = g_{K_i}(sigma_c^(i+1)), so a jump lands exactly on the finer stage's noisy end.
    """
    clean = (0.0, *(float(c) for c in clean_ends))
    if len(block_sizes) != len(clean) - 1:
        raise InputError(
            f"{len(clean)} stages need {len(clean) - 1} clean-end levels, got {len(clean_ends)}: {clean_ends}"
        )
    if any(not 0.0 < c < 1.0 for c in clean[1:]) or any(a >= b for a, b in zip(clean, clean[1:])):
        raise InputError(f"stage clean ends {list(clean_ends)} must be strictly increasing inside (0, 1)")
    noisy = tuple(jump_sigma(clean[i + 1], k) for i, k in enumerate(block_sizes)) + (1.0,)
    return tuple(zip(clean, noisy))


def randn(shape, like: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None):
    """Standard normal noise shaped `shape`, with the dtype and device of `like`.

    Noise is drawn on the generator's device and then moved, so CPU and GPU runs with a CPU generator
    start from the same numbers. A list of generators draws one batch item each.
    """
    shape = tuple(shape)
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([randn((1, *shape[1:]), like, g) for g in generator])
    device = generator.device if generator is not None else like.device
    noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype)


def detail_snr(sigma: float, detail_energy: float) -> float:
    """Per-element SNR of a detail band of energy e at noise level sigma: (1 - sigma)^2 e / sigma^2.

    This is twice METHOD.md 3.4's per-element KL kappa(sigma) of dropping that band at sigma.
    """
    return (1.0 - sigma) ** 2 * detail_energy / sigma**2


def clean_ends_from_spectrum(
    detail_energies: Sequence[float], block_sizes: Sequence[int], snr_threshold: float
) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """Stage boundaries where each transition's detail band is drowned by noise (METHOD.md 3.4).

    Transition i's detail band (energy e_i per element, measured on data) is pure noise at the noisy end
    sigma_n^(i) of stage i. Choose sigma_n^(i) where the band's SNR equals `snr_threshold`,
    sigma_n = 1 / (1 + sqrt(threshold / e_i)), so sigma_c^(i+1) = g_K^{-1}(sigma_n^(i)).

    The SNR bound is a lower bound on each noisy end. Where a coarser band carries no more energy than the
    finer one (white-ish latents, e.g. the toy world's), it is already met at any later boundary and
    does not place one; then the boundary falls back to the even split of the remaining noise range,
    sigma_c^(i+1) = sigma_c^(i) + (1 - sigma_c^(i)) / (S - 1 - i), the pattern of the default (1/3, 2/3).
    Returns (clean ends, the rule that set each: "spectrum" or "even split").
    """
    if snr_threshold <= 0:
        raise InputError(f"snr_threshold must be positive, got {snr_threshold}")
    if len(detail_energies) != len(block_sizes):
        raise ValueError(f"{len(detail_energies)} energies for {len(block_sizes)} transitions")
    transitions = len(block_sizes)
    clean, rules = [], []
    for i, (energy, k) in enumerate(zip(detail_energies, block_sizes)):
        if energy <= 0:
            raise InputError(f"detail energy must be positive, got {energy}: is the cache empty or constant?")
        spectral = inverse_jump_sigma(1.0 / (1.0 + math.sqrt(snr_threshold / energy)), k)
        if i == 0:
            clean.append(spectral)
            rules.append("spectrum")
            continue
        even = clean[-1] + (1.0 - clean[-1]) / (transitions + 1 - i)
        clean.append(max(spectral, even))
        rules.append("spectrum" if spectral >= even else "even split")
    return tuple(clean), tuple(rules)
