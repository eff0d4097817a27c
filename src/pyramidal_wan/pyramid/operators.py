"""Resolution transfer operators built on separable orthogonal wavelets (METHOD.md section 2).

For one transition with per-axis factors (f_t, f_h, f_w), an orthogonal analysis transform T = [L; H]
splits the fine signal into approximation (L) and detail (H) coefficients. With c = K^(-1/2):

    R_down x = c L x,    R_up y = L^T y / c,    P = R_up R_down = L^T L,    Q = I - P = H^T H.

Every 1-D low-pass filter sums to sqrt(2), so R_down and R_up preserve constants and coarse latents stay
at the natural VAE scale. Haar gives exactly average pooling / nearest repetition.

The causal first latent frame has no temporal partner: when f_t = 2 every operator is block-diagonal,
(frame 0, spatial-only transform, K0 = f_h f_w) + (frames >= 1, joint transform, K = f_t f_h f_w).
The temporal transform runs periodically over frames 1..T-1 only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pyramidal_wan.pyramid.noise import jump_sigma, randn

# Orthonormal low-pass analysis filters: sum(h) = sqrt(2), sum_n h[n] h[n + 2k] = delta_k.
WAVELETS: dict[str, tuple[float, ...]] = {
    "haar": (1 / math.sqrt(2), 1 / math.sqrt(2)),
    "db2": (0.48296291314469025, 0.836516303737469, 0.22414386804185735, -0.12940952255092145),
}


def _analysis(x: torch.Tensor, taps: tuple[float, ...], dim: int) -> torch.Tensor:
    """a[k] = sum_n taps[n] x[(2k + n) mod N] along `dim` (periodic, stride 2)."""
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    if len(taps) > 2:  # periodic wrap; an index handles filters longer than the axis too
        x = x.index_select(-1, torch.arange(n + len(taps) - 2, device=x.device) % n)
    out = sum(t * x[..., j : j + n : 2] for j, t in enumerate(taps))
    return out.movedim(-1, dim)


def _synthesis(a: torch.Tensor, taps: tuple[float, ...], dim: int) -> torch.Tensor:
    """Transpose of `_analysis`: x[(2k + n) mod N] += taps[n] a[k] along `dim`."""
    a = a.movedim(dim, -1)
    n = 2 * a.shape[-1]
    if len(taps) == 2:  # no wrap: interleave directly (the Haar / nearest fast path)
        out = torch.stack([taps[0] * a, taps[1] * a], dim=-1).flatten(-2)
    else:
        out = a.new_zeros(*a.shape[:-1], n)
        base = torch.arange(0, n, 2, device=a.device)
        for j, t in enumerate(taps):
            out.index_add_(-1, (base + j) % n, t * a)
    return out.movedim(-1, dim)


def _check_latent(x: torch.Tensor, name: str) -> None:
    if x.ndim != 5:
        raise ValueError(f"{name} must be a latent shaped (B, C, T, H, W), got shape {tuple(x.shape)}")


@dataclass(frozen=True)
class Transfer:
    """The operators of one transition: fine stage i <-> coarse stage i+1 (latents (B, C, T, H, W))."""

    factors: tuple[int, int, int]
    wavelet: str = "haar"

    def __post_init__(self):
        if self.wavelet not in WAVELETS:
            raise ValueError(f"unknown wavelet {self.wavelet!r}; choose one of {sorted(WAVELETS)}")

    @property
    def block_size(self) -> int:
        """K: fine elements per coarse element on frames >= 1."""
        return math.prod(self.factors)

    @property
    def first_frame_block_size(self) -> int:
        """K0: fine elements per coarse element on frame 0 (spatial only when f_t = 2)."""
        ft, fh, fw = self.factors
        return fh * fw if ft == 2 else ft * fh * fw

    @property
    def splits_first_frame(self) -> bool:
        return self.factors[0] == 2

    def _scaled_taps(self, up: bool) -> tuple[float, ...]:
        # down: c L per axis is h / sqrt(2) (taps sum to 1); up: L^T / c per axis is sqrt(2) h.
        scale = math.sqrt(2) if up else 1 / math.sqrt(2)
        return tuple(scale * t for t in WAVELETS[self.wavelet])

    def _apply(self, x: torch.Tensor, axes_factors, up: bool) -> torch.Tensor:
        taps = self._scaled_taps(up)
        op = _synthesis if up else _analysis
        for dim, f in zip((2, 3, 4), axes_factors):
            if f == 2:
                x = op(x, taps, dim)
        return x

    def _by_part(self, x: torch.Tensor, fn: Callable[[torch.Tensor, tuple[int, int, int]], torch.Tensor]):
        """Apply fn(part, factors) to frame 0 (spatial only) and frames >= 1 when f_t = 2, else to all."""
        if not self.splits_first_frame:
            return fn(x, self.factors)
        first = fn(x[:, :, :1], (1, *self.factors[1:]))
        rest = fn(x[:, :, 1:], self.factors)
        return torch.cat([first, rest], dim=2)

    def check_fine(self, x: torch.Tensor) -> None:
        """Raise ValueError unless x is a fine latent this transition can downsample."""
        _check_latent(x, "fine latent")
        ft, fh, fw = self.factors
        t, h, w = x.shape[2:]
        if ft == 2 and (t < 3 or (t - 1) % 2):
            raise ValueError(f"fine latent has {t} frames; halving time needs T - 1 even and >= 2")
        if h % fh or w % fw:
            raise ValueError(f"fine latent {h}x{w} is not divisible by the spatial factors ({fh}, {fw})")

    def coarse_shape(self, fine_shape) -> tuple[int, ...]:
        b, c, t, h, w = fine_shape
        ft, fh, fw = self.factors
        return (b, c, 1 + (t - 1) // ft, h // fh, w // fw)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """R_down: fine (B, C, T, H, W) -> coarse (B, C, 1 + (T-1)/f_t, H/f_h, W/f_w)."""
        self.check_fine(x)
        return self._by_part(x, lambda part, fac: self._apply(part, fac, up=False))

    def up(self, y: torch.Tensor) -> torch.Tensor:
        """R_up: coarse -> fine; R_down(R_up(y)) == y exactly."""
        _check_latent(y, "coarse latent")
        if self.splits_first_frame and y.shape[2] < 2:
            raise ValueError(f"coarse latent has {y.shape[2]} frame(s); temporal upsampling needs >= 2")
        return self._by_part(y, lambda part, fac: self._apply(part, fac, up=True))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """P = R_up R_down: the low band of x, at fine resolution."""
        return self.up(self.down(x))

    def detail_noise(self, like: torch.Tensor, generator=None) -> torch.Tensor:
        """Q z for white z: Gaussian noise confined to the detail band (covariance Q)."""
        z = randn(like.shape, like, generator)
        return z - self.project(z)

    def up_with_noise(self, y: torch.Tensor, sigma_e: float, generator=None) -> torch.Tensor:
        """R_up_N: upsample a clean-end sample at sigma_e, filling the detail band with correction noise.

        For y = (1 - sigma_e) R_down x0 + sigma_e eps_low the result is distributed as
        (1 - sigma_n) P x0 + sigma_n eps with white eps and sigma_n = g_K(sigma_e) on every element:
        frame 0, which reaches only g_K0(sigma_e) < sigma_n, is topped up with fresh noise (METHOD.md 2.5).
        """
        if not 0.0 <= sigma_e <= 1.0:
            raise ValueError(f"sigma_e must be in [0, 1], got {sigma_e}")
        fine = self.up(y)
        detail = self.detail_noise(fine, generator)
        sigma_n = jump_sigma(sigma_e, self.block_size)

        def renoise(parts: tuple[torch.Tensor, torch.Tensor], factors) -> torch.Tensor:
            signal, noise = parts
            root_k = math.sqrt(math.prod(factors))
            lam = 1.0 / (1.0 + (root_k - 1.0) * sigma_e)
            return lam * (signal + root_k * sigma_e * noise)

        if not self.splits_first_frame:
            return renoise((fine, detail), self.factors)
        rest = renoise((fine[:, :, 1:], detail[:, :, 1:]), self.factors)
        first = renoise((fine[:, :, :1], detail[:, :, :1]), (1, *self.factors[1:]))
        first = top_up(first, jump_sigma(sigma_e, self.first_frame_block_size), sigma_n, generator)
        return torch.cat([first, rest], dim=2)


def top_up(x: torch.Tensor, sigma_from: float, sigma_to: float, generator=None) -> torch.Tensor:
    """One forward-noising step of the plain process from sigma_from to sigma_to >= sigma_from.

    x_b = a x_a + s n with a = (1 - sigma_b) / (1 - sigma_a), s = sqrt(sigma_b^2 - a^2 sigma_a^2):
    if x_a = (1 - sigma_a) m + sigma_a eps_a then x_b = (1 - sigma_b) m + sigma_b eps_b (METHOD.md 2.5).
    """
    if sigma_to < sigma_from:
        raise ValueError(f"top_up only adds noise: sigma_to {sigma_to} < sigma_from {sigma_from}")
    if sigma_from >= 1.0:
        return x
    a = (1.0 - sigma_to) / (1.0 - sigma_from)
    s = math.sqrt(max(sigma_to**2 - (a * sigma_from) ** 2, 0.0))
    return a * x + s * randn(x.shape, x, generator)
