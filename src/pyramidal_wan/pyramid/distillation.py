"""Pure math of few-step distillation: student inputs, re-noising, the DMD gradient (METHOD.md 6-8).

Everything here acts on tensors shaped like a stage latent (B, C, T, H, W); per-sample levels are (B,)
tensors. The plain process is x = (1 - sigma) x0 + sigma eps on the segment [0, 1]; the pyramidal process
of stage i is the forward process of METHOD.md 3.3 with noisy-end content u = P_i x0 (how a student
estimate is re-noised, METHOD.md 7.2). Grid points (n, k) index `grid[n].sigmas[k]` of a few-step grid
(`get_fewstep_grid`): n counts stages in sampling order (lowest resolution first), k the steps within it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from pyramidal_wan.pyramid.geometry import is_baseline_schedule
from pyramidal_wan.pyramid.pyramid import PLAIN_SEGMENT, Pyramid, Segment
from pyramidal_wan.pyramid.sampling import (
    StageSteps,
    get_fewstep_grid,
    get_ppf_grid,
    sample_ppf_few_step,
    sample_pyramid_few_step,
)

# Forms of the detail-band weight w_Q of the DMD gradient (METHOD.md 7.4 table).
DETAIL_WEIGHTS = ("one", "eps", "x0")
# The per-sample normaliser mean|F_T - v_true| is floored here, so a teacher that matches the re-noised
# velocity exactly gives a finite gradient (METHOD.md 7.2).
NORMALISER_FLOOR = 1e-6


def _per_sample(value, x: torch.Tensor):
    """A float stays a float; a (B,) tensor is shaped (B, 1, 1, 1, 1) to broadcast over x."""
    if isinstance(value, torch.Tensor) and value.ndim > 0:
        return value.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return float(value)


# Grid points ---------------------------------------------------------------------------------------------
def grid_points(grid: tuple[StageSteps, ...]) -> list[tuple[int, int]]:
    """Every student evaluation (n, k) of a few-step grid, in sampling order."""
    return [(n, k) for n, steps in enumerate(grid) for k in range(steps.num_steps)]


def choose_grid_point(grid: tuple[StageSteps, ...], generator: torch.Generator) -> tuple[int, int]:
    """A stage uniformly over the grid's stages, then a step uniformly within it (METHOD.md 7.2, step 1)."""
    n = int(torch.randint(len(grid), (1,), generator=generator))
    k = int(torch.randint(grid[n].num_steps, (1,), generator=generator))
    return n, k


def next_sigma(grid: tuple[StageSteps, ...], n: int, k: int) -> float:
    """The level a student step at (n, k) moves to: the next grid level, or the stage's clean end."""
    sigmas = grid[n].sigmas
    return sigmas[k + 1] if k + 1 < len(sigmas) else grid[n].segment.sigma_c


# Student inputs (METHOD.md 7.2, step 2) -------------------------------------------------------------------
def data_noised_input(
    pyramid: Pyramid, segment: Segment, x0: torch.Tensor, u: torch.Tensor | None, noise: torch.Tensor, sigma
) -> torch.Tensor:
    """The student input at noise level `sigma` of `segment`, built from a data latent (Neodragon-style).

    Pyramidal stage: x = (1 - rho) y_c + rho y_n with y_n carrying u = R_up x0^(i+1) (METHOD.md 3.3).
    Plain segment [0, 1]: x = (1 - sigma) x0 + sigma eps (u is ignored). All tensors (B, C, T, H, W).
    """
    x, _, _ = pyramid.training_point(x0, u, noise, segment, segment.rho(sigma))
    return x


class _StopSimulation(Exception):
    """Raised by the capturing model wrapper to end a simulation at the requested grid point."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.x = x


@torch.no_grad()
def simulated_input(
    model, noise: torch.Tensor, sampler, grid, n: int, k: int, extra_args=None, generator=None
) -> torch.Tensor:
    """The student input at grid point (n, k) by backward simulation from `noise` (METHOD.md 7.2 option).

    Runs the few-step sampler (METHOD.md 6.2) without gradient and returns the state it would feed the
    model at (n, k); the model is not evaluated there. `sampler(model, x, grid=..., extra_args=...,
    disable=..., generator=...)` is the student's: `sample_pyramid_few_step` with its pyramid bound, or
    `sample_ppf_few_step`. `noise` has the shape of the sampler's start latent.
    """
    target, calls = grid_points(grid).index((n, k)), 0

    def capture(x, sigma, **kwargs):
        nonlocal calls
        if calls == target:
            raise _StopSimulation(x)
        calls += 1
        return model(x, sigma, **kwargs)

    try:
        sampler(capture, noise, grid=grid, extra_args=extra_args, disable=True, generator=generator)
    except _StopSimulation as stop:
        return stop.x
    raise AssertionError(f"grid point {(n, k)} was never reached")  # unreachable: index() checked it


# Re-noising (METHOD.md 7.2, no gradient) ------------------------------------------------------------------
def renoise_plain(x_hat: torch.Tensor, noise: torch.Tensor, tau) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_tau, v_true): x_tau = (1 - tau) x_hat + tau eps', v_true = eps' - x_hat; tau a float or (B,)."""
    t = _per_sample(tau, x_hat)
    return (1.0 - t) * x_hat + t * noise, noise - x_hat


def renoise_pyramidal(
    pyramid: Pyramid, segment: Segment, x_hat: torch.Tensor, noise: torch.Tensor, rho
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_tau, v_true) on stage `segment` at local level rho with u = P x_hat (METHOD.md 7.2).

    x_tau = (1 - rho)[(1 - s_c) x_hat + s_c eps'] + rho[(1 - s_n) P x_hat + s_n eps'] and
    v_true = eps' - P x_hat - b Q x_hat, the pyramidal velocity of that path (METHOD.md 4.1).
    """
    u = None if segment.sigma_n == 1.0 else pyramid.project(x_hat, segment.stage)
    x_tau, _, v_true = pyramid.training_point(x_hat, u, noise, segment, rho)
    return x_tau, v_true


# The DMD gradient (METHOD.md 7.2, 7.4) --------------------------------------------------------------------
def detail_weight(segment: Segment, tau, form: str):
    """w_Q, the weight of the detail band Q_i (F_T - F_phi) in the DMD gradient (METHOD.md 7.4 table).

    "one": OT, the Wan-DMD baselines and PT* (w_Q = 1). "eps": DMD-PT's closed-form eps route,
    gamma_1 = A / ((1 - tau) D) with A = (1 - rho_tau)(1 - sigma_c). "x0": DMD-PT option, 1 / D.
    At a stage whose noisy end is pure noise (the lowest stage, or the plain segment), P = I and every
    form is 1. `tau` is a float or a (B,) tensor; the result has the same kind.
    """
    if form not in DETAIL_WEIGHTS:
        raise ValueError(f"unknown detail weight form {form!r}; choose one of {', '.join(DETAIL_WEIGHTS)}")
    if form == "one" or segment.sigma_n == 1.0:
        return torch.ones_like(tau) if isinstance(tau, torch.Tensor) else 1.0
    if form == "x0":
        w = 1.0 / segment.d
        return torch.full_like(tau, w) if isinstance(tau, torch.Tensor) else w
    a = (1.0 - segment.rho(tau)) * (1.0 - segment.sigma_c)
    return a / ((1.0 - tau) * segment.d)


def dmd_gradient(
    pyramid: Pyramid,
    segment: Segment,
    v_teacher: torch.Tensor,
    v_fake: torch.Tensor,
    v_true: torch.Tensor,
    w_q=1.0,
    generated: torch.Tensor | None = None,
) -> torch.Tensor:
    """g = (P_i + w_Q Q_i)(F_T - F_phi) / mean|F_T - v_true|, per sample, in float32 (METHOD.md 7.2).

    Equals Delta x0_hat / eta with Delta x0_hat = tau (P + w_Q Q)(F_T - F_phi) (the fake-minus-teacher x0
    estimates for the plain process) and eta = tau mean|F_T - v_true| (= mean|x_hat - x0_hat_real| for the
    plain process, the DMD2 normaliser). Velocities (B, C, T, H, W); w_Q a float or (B,) tensor.
    `generated` (B, 1, T, 1, 1), optional: 1 on generated frames, 0 on given ones (an image-to-video clean
    first frame), which get g = 0 and are left out of eta's mean.
    Descending 0.5 mean((x_hat - sg(x_hat - g))^2) moves x_hat along -g: toward the teacher's estimate.
    """
    diff = (v_teacher.float() - v_fake.float()).detach()
    uniform = not isinstance(w_q, torch.Tensor) and float(w_q) == 1.0
    if not (uniform or segment.sigma_n == 1.0):  # P = I where the noisy end is pure noise
        low = pyramid.project(diff, segment.stage)
        diff = low + _per_sample(w_q, diff) * (diff - low)
    dims = tuple(range(1, diff.ndim))
    error = (v_teacher.float() - v_true.float()).abs()
    if generated is None:
        eta = error.mean(dim=dims)
    else:  # P keeps frame 0 apart (`operators`: block-diagonal), so masking after it drops only that frame
        kept = generated.expand_as(error)
        diff, eta = diff * generated, (error * kept).sum(dim=dims) / kept.sum(dim=dims)
    eta = eta.clamp_min(NORMALISER_FLOOR)  # (B,)
    return torch.nan_to_num(diff / _per_sample(eta, diff))


def dmd_loss(x_hat: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """L_DMD = 0.5 mean((x_hat - sg(x_hat - g))^2) in float32, so dL/dx_hat = g / numel (METHOD.md 7.2)."""
    x = x_hat.float()
    return 0.5 * (x - (x - grad).detach()).square().mean()


# Where a few-step student samples ------------------------------------------------------------------------
STUDENT_PROCESSES = ("plain", "resolution", "patch")


@dataclass(frozen=True)
class StudentProcess:
    """Plain Wan, the resolution pyramid or the patch pyramid, as the few-step objectives see it.

    - `grid`: the student's few-step grid (METHOD.md 6.2), in sampling order;
    - `segments[n]`: the forward-process segment at grid stage n: its data latent (cache stage `.stage`),
      noisy end and x0 closed form. For the resolution pyramid and plain Wan this is the grid's own
      segment; the patch pyramid stays at full resolution on the plain process (`PLAIN_SEGMENT`) while its
      grid stage (the sigma interval where the student evaluates and tau is drawn) only picks a kernel;
    - `pyramidal_renoising`: re-noise a clean estimate on the stage's pyramidal path with noisy-end content
      P(x) (DMD-PT, Adv-P; METHOD.md 7.2), else on the plain path at tau;
    - `sampler`: the few-step sampler of the grid, `sampler(model, x, grid=..., ...)`.
    """

    name: str  # one of STUDENT_PROCESSES
    pyramid: Pyramid
    grid: tuple[StageSteps, ...]
    segments: tuple[Segment, ...]
    pyramidal_renoising: bool = False

    @property
    def sampler(self):
        if self.name == "patch":
            return sample_ppf_few_step
        return functools.partial(sample_pyramid_few_step, pyramid=self.pyramid)

    def to_x0(self, x: torch.Tensor, sigma, velocity: torch.Tensor, n: int) -> torch.Tensor:
        """X0_hat at grid stage n (METHOD.md 6.1)."""
        return self.pyramid.to_x0(x, sigma, velocity, self.segments[n])

    def renoise(self, n: int, x: torch.Tensor, noise: torch.Tensor, rho, tau):
        """(x_tau, v_true) of a clean latent at grid stage n (METHOD.md 7.2, re-noising)."""
        if self.pyramidal_renoising:
            return renoise_pyramidal(self.pyramid, self.segments[n], x, noise, rho)
        return renoise_plain(x, noise, tau)


def student_process(
    pyramid_config, steps: tuple[int, ...], pyramidal_renoising: bool = False
) -> StudentProcess:
    """The `StudentProcess` of a few-step schedule (parsed steps) on a `PyramidConfig`'s stage layout:
    "patch" for a patch pyramid, "plain" for the 0-...-0-N baseline, else "resolution"."""
    pyramid = pyramid_config.pyramid()
    if pyramid_config.kind == "patch":
        grid = get_ppf_grid(pyramid_config.clean_ends, steps, "fewstep")
        return StudentProcess("patch", pyramid, grid, (PLAIN_SEGMENT,) * len(grid), False)
    grid = get_fewstep_grid(pyramid, steps)
    name = "plain" if is_baseline_schedule(steps) else "resolution"
    renoise = pyramidal_renoising and name == "resolution"
    return StudentProcess(name, pyramid, grid, tuple(g.segment for g in grid), renoise)
