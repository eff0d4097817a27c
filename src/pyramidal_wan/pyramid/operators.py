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
    """a[k] = sum_j taps[j] x[(2k + j) mod N] along `dim` (periodic, stride 2)."""
    pairs = x.unflatten(dim, (x.shape[dim] // 2, 2))
    phases = (pairs.select(dim + 1, 0), pairs.select(dim + 1, 1))  # x[2k + j] = phases[j % 2][k + j // 2]
    return sum(t * _roll(phases[j % 2], -(j // 2), dim) for j, t in enumerate(taps))


def _synthesis(a: torch.Tensor, taps: tuple[float, ...], dim: int) -> torch.Tensor:
    """Transpose of `_analysis`: x[(2k + j) mod N] += taps[j] a[k] along `dim`."""
    # Output phase r collects the taps j = r (mod 2), each from a[k - (j - r) / 2].
    phases = [sum(taps[j] * _roll(a, (j - r) // 2, dim) for j in range(r, len(taps), 2)) for r in (0, 1)]
    return torch.stack(phases, dim=dim + 1).flatten(dim, dim + 1)


def _repeat(y: torch.Tensor, factors) -> torch.Tensor:
    """Nearest-neighbour repetition of (B, C, T, H, W) by per-axis factors, in one copy."""
    b, c, t, h, w = y.shape
    ft, fh, fw = factors
    blocks = y[:, :, :, None, :, None, :, None].expand(b, c, t, ft, h, fh, w, fw)
    return blocks.reshape(b, c, t * ft, h * fh, w * fw)


def _roll(x: torch.Tensor, shift: int, dim: int) -> torch.Tensor:
    return x if shift % x.shape[dim] == 0 else torch.roll(x, shift, dims=dim)


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
        if up and self.wavelet == "haar":  # scaled Haar synthesis is nearest repetition: one copy pass
            return _repeat(x, axes_factors)
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

    def _per_frame(self, values: tuple[float, float], num_frames: int, like: torch.Tensor) -> torch.Tensor:
        """A (T, 1, 1) column holding values[0] on frame 0 and values[1] on frames >= 1."""
        column = like.new_full((num_frames, 1, 1), values[1])
        column[0] = values[0]
        return column

    def up_with_noise(self, y: torch.Tensor, sigma_e: float, generator=None) -> torch.Tensor:
        """R_up_N: upsample a clean-end sample at sigma_e, filling the detail band with correction noise.

        R_up_N(y) = lambda (R_up y + kappa Q z) with kappa = sqrt(K) sigma_e and
        lambda = 1 / (1 + (sqrt(K) - 1) sigma_e). For y = (1 - sigma_e) R_down x0 + sigma_e eps_low the
        result is distributed as (1 - sigma_n) P x0 + sigma_n eps with white eps and sigma_n = g_K(sigma_e)
        on every element: frame 0, which reaches only g_K0(sigma_e) < sigma_n, is topped up with fresh
        noise (METHOD.md 2.2, 2.5).
        """
        if not 0.0 <= sigma_e <= 1.0:
            raise ValueError(f"sigma_e must be in [0, 1], got {sigma_e}")
        root_k = (math.sqrt(self.first_frame_block_size), math.sqrt(self.block_size))
        kappa = tuple(r * sigma_e for r in root_k)
        lam = tuple(1.0 / (1.0 + (r - 1.0) * sigma_e) for r in root_k)
        fine_frames = 1 + (y.shape[2] - 1) * self.factors[0]
        z = randn((*y.shape[:2], fine_frames, *self.fine_spatial(y)), y, generator)
        # R_up y + kappa (z - R_up R_down z) = kappa z + R_up (y - kappa R_down z): one R_up instead of two.
        coarse = y - self._per_frame(kappa, y.shape[2], y) * self.down(z)
        x = self.up(coarse).addcmul_(self._per_frame(kappa, fine_frames, y), z)
        x.mul_(self._per_frame(lam, fine_frames, y))
        if self.splits_first_frame:
            sigma_a = jump_sigma(sigma_e, self.first_frame_block_size)
            x[:, :, :1] = top_up(x[:, :, :1], sigma_a, jump_sigma(sigma_e, self.block_size), generator)
        return x

    def fine_spatial(self, y: torch.Tensor) -> tuple[int, int]:
        return y.shape[3] * self.factors[1], y.shape[4] * self.factors[2]


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
