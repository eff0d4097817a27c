"""Step grids and samplers over a velocity model `model(x, sigma, **extra_args) -> dx/dsigma`.

Samplers know nothing about transformers, text or VAEs: `sigma` is a (B,) tensor of noise levels in
[0, 1] and the model returns the velocity dx/dsigma. A grid is data (a tuple of StageSteps in sampling
order, lowest resolution first); samplers walk it without hidden state.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from tqdm.auto import trange

from pyramidal_wan.pyramid.geometry import is_baseline_schedule
from pyramidal_wan.pyramid.noise import randn
from pyramidal_wan.pyramid.pyramid import PLAIN_SEGMENT, Pyramid, Segment

# diffusers' Wan `flow_shift` at 480p, for the plain "0-...-0-N" baseline (METHOD.md 5.4).
BASELINE_SHIFT = 3.0
# Slack on the PPF stage boundaries: a boundary level sigma_c^(i) that reaches a model as float32 (or as the
# timestep 1000 sigma) can round up by ~1e-7 and must still count as the noisy end of stage i - 1.
PPF_BOUNDARY_TOL = 1e-5


@dataclass(frozen=True)
class StageSteps:
    """The noise levels a sampler visits in one stage (for multi-step grids, ending at sigma_c)."""

    segment: Segment
    sigmas: tuple[float, ...]

    @property
    def num_steps(self) -> int:
        return len(self.sigmas)


def shift_levels(r: float, shift: float) -> float:
    """phi_s(r) = s r / (1 + (s - 1) r): concentrates steps near the noisy end for s > 1."""
    return shift * r / (1.0 + (shift - 1.0) * r)


def _stage_steps(steps, num_stages: int) -> tuple[int, ...]:
    """Parsed steps per stage (`geometry.parse_schedule`), one per stage: grids never parse text."""
    steps = tuple(steps)
    if len(steps) != num_stages or not all(isinstance(n, int) for n in steps):
        raise ValueError(f"expected {num_stages} parsed step counts (parse_schedule), got {steps!r}")
    return steps


def get_multistep_grid(
    pyramid: Pyramid, steps: tuple[int, ...], shift: float = 1.0, baseline_shift: float = BASELINE_SHIFT
) -> tuple[StageSteps, ...]:
    """Euler grids per stage: rho_k = phi_s(1 - k/n), k = 0..n, so the last step lands on sigma_c.

    `steps` are parsed steps per stage, lowest resolution first; (0, ..., 0, N) is the plain baseline: one
    full-resolution segment [0, 1] with shift `baseline_shift`.
    """
    steps = _stage_steps(steps, pyramid.num_stages)
    if is_baseline_schedule(steps):
        n = steps[-1]
        sigmas = tuple(shift_levels(1 - k / n, baseline_shift) for k in range(n + 1))
        return (StageSteps(PLAIN_SEGMENT, sigmas),)
    grid = []
    for stage, n in zip(reversed(range(pyramid.num_stages)), steps):
        seg = pyramid.segments[stage]
        grid.append(StageSteps(seg, tuple(seg.sigma(shift_levels(1 - k / n, shift)) for k in range(n + 1))))
    return tuple(grid)


def get_fewstep_grid(pyramid: Pyramid, steps: tuple[int, ...], rhos=None) -> tuple[StageSteps, ...]:
    """Few-step grids: stage i evaluates at rho = 1 - k/n_i, k = 0..n_i-1 (METHOD.md 6.2, 6.3).

    `steps` are parsed steps per stage; `rhos` optionally gives explicit rho lists per stage, lowest
    resolution first. (0, ..., 0, N) is the plain baseline: sigma = 1 - k/N on the segment [0, 1].
    """
    steps = _stage_steps(steps, pyramid.num_stages)
    if rhos is not None:
        _check_rhos(rhos, steps)
    if is_baseline_schedule(steps):
        r = rhos[-1] if rhos is not None else [1 - k / steps[-1] for k in range(steps[-1])]
        return (StageSteps(PLAIN_SEGMENT, tuple(float(v) for v in r)),)
    grid = []
    for j, (stage, n) in enumerate(zip(reversed(range(pyramid.num_stages)), steps)):
        seg = pyramid.segments[stage]
        r = rhos[j] if rhos is not None else [1 - k / n for k in range(n)]
        grid.append(StageSteps(seg, tuple(seg.sigma(float(v)) for v in r)))
    return tuple(grid)


def get_ppf_segments(clean_ends) -> tuple[Segment, ...]:
    """PPF stage intervals (METHOD.md 9): stage i spans [sigma_c^(i), sigma_c^(i+1)], sigma_c^(0) = 0 and
    sigma_c^(S) = 1; the stages partition [0, 1] at the resolution pyramid's split points, with no overlap."""
    ends = (0.0, *(float(c) for c in clean_ends), 1.0)
    if any(not a < b for a, b in zip(ends, ends[1:])):
        raise ValueError(f"clean-end levels {tuple(clean_ends)} must increase strictly inside (0, 1)")
    return tuple(Segment(i, lo, hi) for i, (lo, hi) in enumerate(zip(ends, ends[1:])))


def ppf_stage_of(sigma, clean_ends) -> torch.Tensor:
    """The PPF stage of each noise level (METHOD.md 9): i for sigma in (sigma_c^(i), sigma_c^(i+1)].

    A boundary belongs to the coarser stage's neighbour below it (the stage whose noisy end it is) because
    both samplers enter a stage at its noisy end: the first evaluation of stage i sits at sigma_c^(i+1), and
    a "20-20-10" schedule must spend exactly 20 evaluations at stage 2. METHOD.md 9 writes the intervals
    half-open the other way; the two differ only on the boundaries themselves (measure zero in training).
    """
    sigma = torch.as_tensor(sigma)
    bounds = torch.tensor(clean_ends, dtype=torch.float64, device=sigma.device) + PPF_BOUNDARY_TOL
    return torch.bucketize(sigma.to(torch.float64).reshape(-1), bounds)  # (B,) long


def get_ppf_grid(
    clean_ends,
    steps: tuple[int, ...],
    sampler: str = "multistep",
    shift: float = 1.0,
    baseline_shift=BASELINE_SHIFT,
) -> tuple[StageSteps, ...]:
    """Grids of the patch pyramid (METHOD.md 9): plain sigma levels over each PPF stage interval.

    "multistep": n + 1 levels rho_k = phi_s(1 - k/n) per stage, from sigma_c^(i+1) down to sigma_c^(i), so
    consecutive stages meet exactly (the latent never changes resolution). "fewstep": n evaluations at
    rho = 1 - k/n per stage (METHOD.md 6.2 on the PPF intervals). "0-...-0-N" is the plain baseline, as for
    the resolution pyramid.
    """
    segments = get_ppf_segments(clean_ends)
    steps = _stage_steps(steps, len(segments))
    if is_baseline_schedule(steps):
        plain = Pyramid.build(len(segments))  # the baseline grid uses no stage boundaries
        if sampler == "fewstep":
            return get_fewstep_grid(plain, steps)
        return get_multistep_grid(plain, steps, baseline_shift=baseline_shift)
    grid = []
    for stage, n in zip(reversed(range(len(segments))), steps):
        seg = segments[stage]
        if sampler == "fewstep":
            levels = [1 - k / n for k in range(n)]
        else:
            levels = [shift_levels(1 - k / n, shift) for k in range(n + 1)]
        # rho = 1 is set to sigma_n itself, so a stage starts exactly where the previous one ended.
        grid.append(StageSteps(seg, tuple(seg.sigma_n if r == 1 else seg.sigma(r) for r in levels)))
    return tuple(grid)


def _check_rhos(rhos, steps) -> None:
    if [len(r) for r in rhos] != list(steps):
        raise ValueError(f"explicit rho lists {rhos} do not match the schedule {steps}")
    for r in rhos:
        # A stage is entered at its noisy end (rho = 1), so its first evaluation must be there.
        if r and (r[0] != 1 or any(not 0 < b < a for a, b in zip(r, r[1:]))):
            raise ValueError(f"rho list {list(r)} must start at 1 and decrease strictly inside (0, 1]")


def solver_function(name: str):
    """The within-stage solver called `name` (a key of `SOLVERS`)."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    return SOLVERS[name]


def start_stage(grid: tuple[StageSteps, ...]) -> int:
    """The stage whose resolution the initial noise must have."""
    return grid[0].segment.stage


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, desc=None):
    """Euler steps in sigma on dx/dsigma = v (rectified flow; Karras et al. 2022, Algorithm 1 with v)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable, desc=desc, leave=False):
        velocity = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "velocity": velocity})
        x = x + (sigmas[i + 1] - sigmas[i]) * velocity
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None, desc=None):
    """DPM-Solver++(2M) (Lu et al. 2022) in the flow-matching parameterisation, on the straight path
    between the ends of `sigmas`.

    With rho = (sigma - sigmas[-1]) / (sigmas[0] - sigmas[-1]) the path is x = (1 - rho) y_c + rho y_n
    (a plain flow in rho for the baseline grid, a pyramid stage's local process otherwise), the data
    prediction is D = x - (sigma - sigmas[-1]) v and dx/drho = (x - D) / rho. Each step integrates the
    linear part exactly and D linearly in lambda = log((1 - rho) / rho) from the last two evaluations (the
    first step and the step after rho = 1, where lambda = -inf, are first order: Euler). The step onto
    rho = 0 (lambda = +inf) is first order too, x = D, as in diffusers' solver with zero final sigma: on
    the Gaussian exact denoiser this beats extrapolating D linearly in rho from 10 steps per stage on.
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    end, width = sigmas[-1], sigmas[0] - sigmas[-1]
    rhos = [(s - end) / width for s in sigmas]
    lambdas = [_log_snr(r) for r in rhos]
    previous = None  # (lambda, D) of the last evaluation
    for i in trange(len(sigmas) - 1, disable=disable, desc=desc, leave=False):
        velocity = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "velocity": velocity})
        rho, rho_next = rhos[i], rhos[i + 1]
        denoised = x - (sigmas[i] - end) * velocity
        # Exact for constant D: x' = (rho'/rho) x + (1 - rho'/rho) D, i.e. one Euler step.
        correction = 0.0
        if previous is not None and math.isfinite(previous[0]) and rho_next > 0:
            h, h_last = lambdas[i + 1] - lambdas[i], lambdas[i] - previous[0]
            # alpha' (1 - e^-h) = 1 - rho'/rho; D1 = (D_0 - D_-1) / r with r = h_last / h.
            correction = 0.5 * (1 - rho_next / rho) * (h / h_last) * (denoised - previous[1])
        x = (rho_next / rho) * x + (1 - rho_next / rho) * denoised + correction
        previous = (lambdas[i], denoised)
    return x


def _log_snr(rho: float) -> float:
    """lambda = log(alpha / sigma) of the flow x = (1 - rho) x0 + rho eps; -inf at rho = 1."""
    if rho >= 1.0:
        return -math.inf
    return math.inf if rho <= 0.0 else math.log((1.0 - rho) / rho)


# Within-stage solvers of the multi-step samplers, by the name schedules and configs use.
SOLVERS = {"euler": sample_euler, "dpm2m": sample_dpmpp_2m}


def _plain_x0(x: torch.Tensor, sigma: float, velocity: torch.Tensor) -> torch.Tensor:
    """x0_hat = x - sigma v: the clean estimate of the plain process (every PPF stage runs it)."""
    return x - sigma * velocity


def _sample_stage(model, x, stage_steps: StageSteps, to_x0, extra_args, callback, disable, solver):
    """One stage of a grid with a within-stage solver of `SOLVERS` (a fresh history: the state jumps in
    resolution and noise between stages); the callback also gets the stage and the clean estimate
    `to_x0(x, sigma, velocity)` of the calling sampler's process (pyramidal, or plain for PPF)."""
    stage = stage_steps.segment.stage

    def stage_callback(info):
        callback({**info, "stage": stage, "denoised": to_x0(info["x"], info["sigma"], info["velocity"])})

    return solver_function(solver)(
        model,
        x,
        stage_steps.sigmas,
        extra_args,
        stage_callback if callback is not None else None,
        disable,
        desc=f"stage {stage}",
    )


@torch.no_grad()
def sample_pyramid_euler(
    model,
    x,
    pyramid: Pyramid,
    grid,
    extra_args=None,
    callback=None,
    disable=None,
    generator=None,
    solver: str = "euler",
):
    """Multi-step pyramidal sampling with jumps between stages (PyramidalWan, METHOD.md 5.3).

    `x` is white noise at the resolution of `start_stage(grid)`. Each stage runs the within-stage
    `solver` (a name in `SOLVERS`; the paper's Euler by default). After each stage but the last, the
    sample at sigma_c^(i) is carried exactly to sigma_n^(i-1) by R_up_N plus the frame-0 top-up.
    """
    for n, stage_steps in enumerate(grid):
        to_x0 = functools.partial(pyramid.to_x0, segment=stage_steps.segment)
        x = _sample_stage(model, x, stage_steps, to_x0, extra_args, callback, disable, solver)
        if n + 1 < len(grid):
            x = pyramid.jump(x, stage_steps.segment.stage - 1, generator)
    return x


@torch.no_grad()
def sample_pyramid_few_step(
    model, x, pyramid: Pyramid, grid, extra_args=None, callback=None, disable=None, generator=None
):
    """Few-step pyramidal sampler: x0 prediction, then fresh re-noising (METHOD.md 6.2; DMD2-style).

    Inside a stage the clean estimate is re-noised onto the stage's path at the next rho (u = P x0_hat);
    at a stage change it becomes the noisy end of the finer stage with u = R_up x0_hat and fresh white
    noise, so neither correction noise nor a frame-0 top-up is needed. Returns the last clean estimate.
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    evaluations = [(n, k) for n, st in enumerate(grid) for k in range(st.num_steps)]
    for i in trange(len(evaluations), disable=disable, leave=False):
        n, k = evaluations[i]
        segment, sigmas = grid[n].segment, grid[n].sigmas
        velocity = model(x, sigmas[k] * s_in, **extra_args)
        denoised = pyramid.to_x0(x, sigmas[k], velocity, segment)
        if callback is not None:
            callback({"x": x, "i": i, "stage": segment.stage, "sigma": sigmas[k], "denoised": denoised})
        if k + 1 < len(sigmas):  # re-noise inside the stage
            u = None if segment.sigma_n == 1.0 else pyramid.project(denoised, segment.stage)
            noise = randn(denoised.shape, denoised, generator)
            x, _, _ = pyramid.training_point(denoised, u, noise, segment, segment.rho(sigmas[k + 1]))
        elif n + 1 < len(grid):  # stage change: the noisy end of the finer stage
            finer = grid[n + 1].segment
            u = pyramid.up(denoised, finer.stage)
            x = (1.0 - finer.sigma_n) * u + finer.sigma_n * randn(u.shape, u, generator)
    return denoised


@torch.no_grad()
def sample_ppf_euler(
    model, x, grid, extra_args=None, callback=None, disable=None, generator=None, solver: str = "euler"
):
    """Multi-step patch-pyramid sampling: the plain ODE in sigma over the PPF grid, no jumps (METHOD.md 9).

    `x` is full-resolution white noise; the model picks each stage's patch kernel from sigma, so a stage
    change switches only the kernel (and restarts the `solver`'s history: the velocity field changes
    there). `generator` is unused (the solvers draw no noise) and kept for the shared sampler signature.
    """
    for stage_steps in grid:
        x = _sample_stage(model, x, stage_steps, _plain_x0, extra_args, callback, disable, solver)
    return x


@torch.no_grad()
def sample_ppf_few_step(model, x, grid, extra_args=None, callback=None, disable=None, generator=None):
    """Few-step patch-pyramid sampler (METHOD.md 9 with 6.2): x0_hat = x - sigma v, then plain re-noising
    x = (1 - sigma') x0_hat + sigma' eps at the next grid level; returns the last clean estimate."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    evaluations = [(st.segment.stage, sigma) for st in grid for sigma in st.sigmas]
    for i in trange(len(evaluations), disable=disable, leave=False):
        stage, sigma = evaluations[i]
        denoised = x - sigma * model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "stage": stage, "sigma": sigma, "denoised": denoised})
        if i + 1 < len(evaluations):
            next_sigma = evaluations[i + 1][1]
            x = (1.0 - next_sigma) * denoised + next_sigma * randn(denoised.shape, denoised, generator)
    return denoised
