"""The pyramid value object: transfer operators + stage boundaries, and the forward process on them.

Stage i covers sigma in [sigma_c^(i), sigma_n^(i)] with local level rho in [0, 1]. For one shared eps
(METHOD.md 3.2-3.3):

    y_c = (1 - sigma_c) x0 + sigma_c eps,    y_n = (1 - sigma_n) u + sigma_n eps,    u = R_up x0^(i+1),
    x = (1 - rho) y_c + rho y_n,            sigma = sigma_c + rho (sigma_n - sigma_c),
    v* = dx/dsigma = (y_n - y_c) / (sigma_n - sigma_c).

The noise in x is white with standard deviation exactly sigma at every stage, so sigma is the network's
only conditioning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pyramidal_wan.pyramid.geometry import check_factors
from pyramidal_wan.pyramid.noise import stage_boundaries
from pyramidal_wan.pyramid.operators import Transfer


def default_clean_ends(num_stages: int) -> tuple[float, ...]:
    """Equal splits of [0, 1] (Pyramid Flow's thirds for S = 3; METHOD.md 3.1)."""
    return tuple(i / num_stages for i in range(1, num_stages))


@dataclass(frozen=True)
class Segment:
    """The sigma interval [sigma_c, sigma_n] of one stage and the constants of its forward process."""

    stage: int
    sigma_c: float
    sigma_n: float

    @property
    def delta(self) -> float:
        return self.sigma_n - self.sigma_c

    @property
    def b(self) -> float:
        """(1 - sigma_c) / Delta: the detail band's data coefficient in v* (METHOD.md 4.1)."""
        return (1.0 - self.sigma_c) / self.delta

    @property
    def d(self) -> float:
        """D = sigma_n (1 - sigma_c) / Delta: divides the detail band of x0 estimates (METHOD.md 7.4)."""
        return self.sigma_n * (1.0 - self.sigma_c) / self.delta

    def sigma(self, rho: float) -> float:
        return self.sigma_c + rho * self.delta

    def rho(self, sigma: float) -> float:
        return (sigma - self.sigma_c) / self.delta


PLAIN_SEGMENT = Segment(stage=0, sigma_c=0.0, sigma_n=1.0)


def _check_rho(rho) -> None:
    values = rho if isinstance(rho, torch.Tensor) else torch.as_tensor(rho)
    if values.numel() and (values.min() < 0 or values.max() > 1):
        raise ValueError(f"rho must lie in [0, 1], got values in [{values.min():.4g}, {values.max():.4g}]")


def _per_sample(value, x: torch.Tensor) -> torch.Tensor | float:
    """A float stays a float; a (B,) tensor is broadcast over (B, C, T, H, W)."""
    if isinstance(value, torch.Tensor) and value.ndim > 0:
        return value.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return float(value)


@dataclass(frozen=True)
class Pyramid:
    """S stages (0 = full resolution): one Transfer per transition and one Segment per stage."""

    transfers: tuple[Transfer, ...]
    segments: tuple[Segment, ...]

    @classmethod
    def build(cls, num_stages: int = 3, factors=None, clean_ends=None, wavelet: str = "haar") -> Pyramid:
        """A pyramid from its configuration; defaults are the paper's 3 stages of (2, 2, 2)."""
        factors = check_factors(factors, num_stages)
        transfers = tuple(Transfer(f, wavelet) for f in factors)
        if clean_ends is None:
            clean_ends = default_clean_ends(num_stages)
        bounds = stage_boundaries(clean_ends, [t.block_size for t in transfers])
        segments = tuple(Segment(i, sc, sn) for i, (sc, sn) in enumerate(bounds))
        return cls(transfers, segments)

    @property
    def num_stages(self) -> int:
        return len(self.segments)

    @property
    def wavelet(self) -> str:
        return self.transfers[0].wavelet if self.transfers else "haar"

    def segment(self, stage: int | Segment) -> Segment:
        """The Segment of a stage index (a Segment, e.g. the plain [0, 1] one, is returned as is)."""
        if isinstance(stage, Segment):
            return stage
        self._check_stage(stage)
        return self.segments[stage]

    def _check_stage(self, stage: int, coarser: bool = False) -> None:
        top = self.num_stages - (2 if coarser else 1)
        if not 0 <= stage <= top:
            raise ValueError(f"stage {stage} out of range 0..{top} for a {self.num_stages}-stage pyramid")

    # Operators ---------------------------------------------------------------------------------------
    def down(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """R_down of transition `stage`: a stage-`stage` latent to stage `stage + 1`."""
        self._check_stage(stage, coarser=True)
        return self.transfers[stage].down(x)

    def up(self, y: torch.Tensor, stage: int) -> torch.Tensor:
        """R_up of transition `stage`: a stage-`stage + 1` latent to stage `stage`."""
        self._check_stage(stage, coarser=True)
        return self.transfers[stage].up(y)

    def project(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """P_i x (the identity at the lowest stage, which has no coarser neighbour)."""
        self._check_stage(stage)
        return x if stage == self.num_stages - 1 else self.transfers[stage].project(x)

    def down_to(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Repeated R_down from full resolution to `stage` (latent-space stage signals)."""
        self._check_stage(stage)
        for i in range(stage):
            x = self.transfers[i].down(x)
        return x

    def jump(self, x: torch.Tensor, stage: int, generator=None) -> torch.Tensor:
        """Carry a sample at the clean end of stage `stage + 1` to the noisy end of stage `stage`.

        R_up_N with sigma_e = sigma_c^(stage+1), then the frame-0 top-up: the result is a y_n^(stage)
        sample at sigma_n^(stage) on every element (METHOD.md 5.2).
        """
        self._check_stage(stage, coarser=True)
        return self.transfers[stage].up_with_noise(x, self.segments[stage + 1].sigma_c, generator)

    # Forward process ---------------------------------------------------------------------------------
    def noisy_end_signal(self, x0_coarser: torch.Tensor | None, stage: int) -> torch.Tensor | None:
        """u^(i) = R_up x0^(i+1); None at the lowest stage, where the noisy end is pure noise."""
        self._check_stage(stage)
        if stage == self.num_stages - 1:
            return None
        if x0_coarser is None:
            raise ValueError(f"stage {stage} needs the clean latent of stage {stage + 1} for its noisy end")
        return self.transfers[stage].up(x0_coarser)

    def boundary_samples(self, x0: torch.Tensor, u: torch.Tensor | None, noise: torch.Tensor, stage):
        """(y_c, y_n) of a stage (index or Segment) with one shared eps; u is unused where sigma_n = 1."""
        seg = self.segment(stage)
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != stage latent shape {tuple(x0.shape)}")
        if u is not None and u.shape != x0.shape:
            raise ValueError(f"noisy-end signal shape {tuple(u.shape)} != stage latent {tuple(x0.shape)}")
        y_c = (1.0 - seg.sigma_c) * x0 + seg.sigma_c * noise
        y_n = noise if seg.sigma_n == 1.0 else (1.0 - seg.sigma_n) * u + seg.sigma_n * noise
        return y_c, y_n

    def training_point(self, x0: torch.Tensor, u: torch.Tensor | None, noise: torch.Tensor, stage, rho):
        """(x, sigma, v*) at local level rho (a float or a (B,) tensor) of a stage (index or Segment)."""
        _check_rho(rho)
        seg = self.segment(stage)
        y_c, y_n = self.boundary_samples(x0, u, noise, stage)
        r = _per_sample(rho, x0)
        x = (1.0 - r) * y_c + r * y_n
        sigma = seg.sigma_c + rho * seg.delta
        target = (y_n - y_c) / seg.delta
        return x, sigma, target

    # Closed forms (METHOD.md 6.1, 7.4) -----------------------------------------------------------------
    def to_x0(self, x: torch.Tensor, sigma, velocity: torch.Tensor, segment: Segment) -> torch.Tensor:
        """x0_hat = P(x - sigma F) + Q(x - sigma F) / D: exact for the pyramidal process with u = P x0.

        With the plain segment [0, 1] (or at stages 0 and S-1, where D = 1) this is x - sigma F.
        """
        plain = x - _per_sample(sigma, x) * velocity
        if segment.d == 1.0:
            return plain
        low = self.project(plain, segment.stage)
        return low + (plain - low) / segment.d

    def to_noise(self, x: torch.Tensor, sigma, velocity: torch.Tensor, segment: Segment) -> torch.Tensor:
        """eps_hat = P(x + (1 - sigma) F) + Q(x / sigma_n + (A / D) F), A = (1 - rho)(1 - sigma_c)."""
        s = _per_sample(sigma, x)
        plain = x + (1.0 - s) * velocity
        if segment.sigma_n == 1.0:  # plain segment or lowest stage: P + Q = I, no detail rescaling
            return plain
        a = (1.0 - (s - segment.sigma_c) / segment.delta) * (1.0 - segment.sigma_c)
        high = x / segment.sigma_n + (a / segment.d) * velocity
        return self.project(plain, segment.stage) + high - self.project(high, segment.stage)
