"""Samplers end to end: exact denoisers of known data make the stage transitions testable."""

import dataclasses
import functools
import math

import pytest
import torch
from pyramid_helpers import dense, exponential_covariance

from pyramidal_wan.pyramid import (
    PLAIN_SEGMENT,
    Pyramid,
    get_fewstep_grid,
    get_multistep_grid,
    parse_schedule,
    sample_dpmpp_2m,
    sample_euler,
    sample_pyramid_euler,
    sample_pyramid_few_step,
    start_stage,
)

SHAPE = (1, 1, 5, 4, 4)  # stage-0 latent; stages 1 and 2 are (3, 2, 2) and (2, 1, 1)


class StageOracle:
    """The exact velocity E[dx/dsigma | x] for Gaussian stage data x0^(i) ~ N(m_i, S_i) (latent construction).

    At stage i, x = M x0 + sigma eps and F = eps - N x0 with M = (1 - sigma) P + A Q, N = P + b Q
    (METHOD.md 7.4); on the plain segment M = (1 - sigma) I and N = I. The velocity is then the
    Gaussian conditional mean E[F] + C_Fx C_xx^-1 (x - E[x]).
    """

    def __init__(self, pyramid, mean, cov, plain=False):
        self.p, self.plain = pyramid, plain
        self.stages = {}
        for i in range(pyramid.num_stages):
            d = dense(lambda x, i=i: pyramid.down_to(x, i), SHAPE)
            shape = pyramid.down_to(torch.zeros(SHAPE, dtype=torch.float64), i).shape
            proj = dense(lambda x, i=i: pyramid.project(x, i), shape)
            self.stages[tuple(shape[2:])] = (i, d @ mean, d @ cov @ d.T, proj)

    def __call__(self, x, sigma):
        i, m, s, proj = self.stages[tuple(x.shape[2:])]
        seg = PLAIN_SEGMENT if self.plain else self.p.segments[i]
        sig = float(sigma[0])
        eye = torch.eye(m.numel(), dtype=torch.float64)
        if self.plain:
            big_m, big_n = (1 - sig) * eye, eye
        else:
            a = (1 - seg.rho(sig)) * (1 - seg.sigma_c)
            big_m, big_n = (1 - sig) * proj + a * (eye - proj), proj + seg.b * (eye - proj)
        c_xx = big_m @ s @ big_m.T + sig**2 * eye
        c_fx = sig * eye - big_n @ s @ big_m.T
        gain = torch.linalg.solve(c_xx, c_fx.T).T.to(x.dtype)
        offset = (-big_n @ m - gain.double() @ big_m @ m).to(x.dtype)
        return (x.reshape(x.shape[0], -1) @ gain.T + offset).reshape(x.shape)


def covariance_error(samples, mean, cov):
    flat = samples.reshape(samples.shape[0], -1).double()
    return (torch.cov(flat.T) - cov).norm() / cov.norm(), (flat.mean(0) - mean).abs().max().item()


def start_noise(pyramid, grid, n, seed, dtype=torch.float64):
    shape = pyramid.down_to(torch.zeros(SHAPE, dtype=torch.float64), start_stage(grid)).shape
    return torch.randn(n, *shape[1:], dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_gaussian_exact_denoiser_multistep_recovers_the_data_covariance(wavelet):
    """With the exact denoiser, pyramidal Euler (with jumps) samples the data distribution, like plain Euler.

    Tolerance: the relative Frobenius error of the sample covariance of n = 20k *true* data samples is
    0.029 here (measured, seed 0); with 100 Euler steps per stage (150 plain) both samplers measure
    0.032-0.033 and must stay below 0.045 (at 30 steps/stage Euler error lifts them to 0.056).
    A sampler whose jump drops the correction noise measures > 0.2.
    """
    n = 20_000
    mean, cov = exponential_covariance(SHAPE[1:], mean=0.3)
    p = Pyramid.build(3, wavelet=wavelet)

    grid = get_multistep_grid(p, (100, 100, 100))
    pyr = sample_pyramid_euler(
        StageOracle(p, mean, cov),
        start_noise(p, grid, n, 0, torch.float32),
        p,
        grid,
        disable=True,
        generator=torch.Generator().manual_seed(1),
    )
    plain_grid = get_multistep_grid(p, (0, 0, 150))
    plain = sample_pyramid_euler(
        StageOracle(p, mean, cov, plain=True),
        start_noise(p, plain_grid, n, 2, torch.float32),
        p,
        plain_grid,
        disable=True,
    )
    err_pyr, mean_pyr = covariance_error(pyr, mean, cov)
    err_plain, mean_plain = covariance_error(plain, mean, cov)
    assert err_pyr < 0.045 and err_plain < 0.045, (err_pyr, err_plain)
    assert mean_pyr < 0.05 and mean_plain < 0.05

    class NoCorrectionNoise(Pyramid):
        def jump(self, x, stage, generator=None):
            return self.up(x, stage)

    broken = NoCorrectionNoise(p.transfers, p.segments)
    bad = sample_pyramid_euler(
        StageOracle(broken, mean, cov), start_noise(p, grid, n, 0, torch.float32), broken, grid, disable=True
    )
    assert covariance_error(bad, mean, cov)[0] > 0.2


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
@pytest.mark.parametrize("schedule", ["3-3-2", "1-1-1", "0-0-4"])
def test_point_mass_data_is_reached_exactly(wavelet, schedule):
    """For a single data point the exact velocity is known in closed form; both samplers must end on it."""
    p = Pyramid.build(3, wavelet=wavelet)
    target = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    plain = schedule.startswith("0-0")
    oracle = StageOracle(p, target.reshape(-1), torch.zeros(80, 80, dtype=torch.float64), plain=plain)
    g = torch.Generator().manual_seed(4)
    for grid, sampler in (
        (get_multistep_grid(p, parse_schedule(schedule, 3)), sample_pyramid_euler),
        (
            get_multistep_grid(p, parse_schedule(schedule, 3)),
            functools.partial(sample_pyramid_euler, solver="dpm2m"),
        ),
        (get_fewstep_grid(p, parse_schedule(schedule, 3)), sample_pyramid_few_step),
    ):
        x = start_noise(p, grid, 2, 5)
        out = sampler(oracle, x, p, grid, disable=True, generator=g)
        torch.testing.assert_close(out, target.expand(2, *SHAPE[1:]), rtol=0, atol=1e-9)


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_each_stage_starts_on_its_noisy_end(wavelet):
    """Stage transitions: every stage after the first starts (its first model evaluation, at sigma_n^(i)) on
    the forward process's noisy end, x = (1 - sigma_n) R_up x0^(i+1) + sigma_n eps with eps white, for the
    multi-step sampler (jump with correction noise) and the few-step one (fresh noise at a stage change).

    Point-mass data and its exact velocity make every stage's Euler path exact, so the residual eps seen by
    the sampler is exactly the transition's noise: n = 20k samples give a covariance error ~0.06 (relative
    Frobenius, 80 elements at stage 0) and a mean error ~0.02. A jump of 3 R_up without correction noise
    fails both checks by far; one without correction noise fails the covariance (correlated blocks).
    """
    n = 20_000
    p = Pyramid.build(3, wavelet=wavelet)
    target = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    oracle = StageOracle(p, target.reshape(-1), torch.zeros(80, 80, dtype=torch.float64))
    for grid, sampler in (
        (get_multistep_grid(p, (3, 3, 2)), sample_pyramid_euler),
        (get_fewstep_grid(p, (2, 2, 1)), sample_pyramid_few_step),
    ):
        starts = {}

        def keep_first(info, starts=starts):
            starts.setdefault(int(info["stage"]), (info["x"].clone(), float(info["sigma"])))

        x = start_noise(p, grid, n, 5)
        sampler(
            oracle, x, p, grid, disable=True, generator=torch.Generator().manual_seed(6), callback=keep_first
        )
        assert sorted(starts) == [0, 1, 2]
        for stage in (0, 1):
            x_n, sigma = starts[stage]
            assert sigma == pytest.approx(p.segments[stage].sigma_n)
            u = p.up(p.down_to(target, stage + 1), stage)  # u^(i) = R_up x0^(i+1)
            eps = ((x_n - (1 - sigma) * u) / sigma).reshape(n, -1)
            identity = torch.eye(eps.shape[1], dtype=torch.float64)
            err_cov, err_mean = covariance_error(eps, torch.zeros(eps.shape[1]), identity)
            assert err_cov < 0.12 and err_mean < 0.06, (sampler.__name__, stage, err_cov, err_mean)


def test_single_stage_pyramid_is_plain_euler():
    p1 = Pyramid.build(1)
    grid = get_multistep_grid(p1, (12,))
    assert len(grid) == 1 and grid[0].sigmas[0] == 1.0 and grid[0].sigmas[-1] == 0.0

    def model(x, sigma):
        return torch.tanh(x) * (1 + sigma.reshape(-1, 1, 1, 1, 1))

    x = torch.randn(2, 3, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        sample_pyramid_euler(model, x, p1, grid, disable=True),
        sample_euler(model, x, grid[0].sigmas, disable=True),
        rtol=0,
        atol=0,
    )


def test_multistep_grid_values():
    p = Pyramid.build(3)
    grid = get_multistep_grid(p, (20, 20, 10))
    assert [g.segment.stage for g in grid] == [2, 1, 0]
    assert [g.num_steps - 1 for g in grid] == [20, 20, 10]
    for g in grid:
        assert g.sigmas[0] == pytest.approx(g.segment.sigma_n) and g.sigmas[-1] == pytest.approx(
            g.segment.sigma_c
        )
    steps = [g.sigmas[0] - g.sigmas[1] for g in grid]
    assert steps == pytest.approx([0.0167, 0.0258, 0.0586], abs=1e-4)  # METHOD.md 5.3
    plain = get_multistep_grid(p, (0, 0, 50))
    assert plain[0].segment == PLAIN_SEGMENT and plain[0].sigmas[0] == 1.0 and plain[0].sigmas[-1] == 0.0
    assert plain[0].sigmas[1] == pytest.approx(3 * 0.98 / (1 + 2 * 0.98))  # shift 3


def test_fewstep_grid_values():
    p = Pyramid.build(3)
    sigmas = [s for g in get_fewstep_grid(p, (2, 2, 1)) for s in g.sigmas]
    assert sigmas == pytest.approx([1.0, 0.833333, 0.849779, 0.591556, 0.585786], abs=1e-6)  # METHOD.md 6.2
    assert get_fewstep_grid(p, (0, 0, 2))[0].sigmas == (1.0, 0.5)
    with pytest.raises(ValueError, match="must start at 1"):
        get_fewstep_grid(p, (2, 2, 1), rhos=[[1.0, 0.5], [0.5, 0.25], [1.0]])


def test_callbacks_report_stage_and_denoised():
    p = Pyramid.build(3)
    seen = []
    grid = get_multistep_grid(p, (2, 2, 1))
    x = torch.randn(1, 1, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    sample_pyramid_euler(
        lambda x, s: -x,
        x,
        p,
        grid,
        callback=seen.append,
        disable=True,
        generator=torch.Generator().manual_seed(1),
    )
    assert [info["stage"] for info in seen] == [2, 2, 1, 1, 0]
    assert all(info["denoised"].shape == info["x"].shape for info in seen)
    assert math.isclose(seen[-1]["sigma"], p.segments[0].sigma_n)
    assert dataclasses.is_dataclass(grid[0])


@pytest.mark.parametrize("plain", [False, True])
def test_dpm2m_converges_faster_in_steps_than_euler(plain):
    """DPM-Solver++(2M) inside each stage (history reset at every jump) against Euler, on the exact
    Gaussian denoiser: same start noise and jump noise, error relative to a 400-steps-per-stage solution.

    Measured (seed 0, 64 samples; pyramid n-n-n / plain 0-0-n): Euler 0.098 / 0.157 at n = 10, 0.051 /
    0.082 at 20; DPM2M 0.029 / 0.073 at 10 and 0.0089 / 0.021 at 20 (first and last steps of a stage are
    first order, so it only pulls ahead from ~5 steps). Asserted with margin: DPM2M at 20 below a third of
    Euler at 20, and DPM2M at 10 below Euler at 20.
    """
    p = Pyramid.build(3)
    mean, cov = exponential_covariance(SHAPE[1:], mean=0.3)
    oracle = StageOracle(p, mean, cov, plain=plain)

    def run(n, solver):
        grid = get_multistep_grid(p, (0, 0, n) if plain else (n, n, n))
        x = start_noise(p, grid, 64, 0)
        g = torch.Generator().manual_seed(1)
        return sample_pyramid_euler(oracle, x, p, grid, disable=True, generator=g, solver=solver)

    reference = run(400, "dpm2m")

    def error(n, solver):
        return ((run(n, solver) - reference).norm() / reference.norm()).item()

    euler_20, dpm_20, dpm_10 = error(20, "euler"), error(20, "dpm2m"), error(10, "dpm2m")
    assert dpm_20 < euler_20 / 3 and dpm_10 < euler_20, (euler_20, dpm_20, dpm_10)
    # the reference itself: Euler at 400 steps per stage agrees to first order in 1/400
    assert error(400, "euler") < 0.01


def test_dpm2m_on_the_plain_grid_is_diffusers_flow_dpm_solver():
    """On the 0-0-N grid the solver is diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2,
    flow prediction, zero final sigma) given the same sigmas; float32 inside the scheduler: atol 1e-5."""
    diffusers = pytest.importorskip("diffusers")
    p = Pyramid.build(3)
    sigmas = get_multistep_grid(p, (0, 0, 12))[0].sigmas

    def model(x, sigma):
        return torch.tanh(x) * (1 + sigma.reshape(-1, 1, 1, 1, 1)) - 0.3 * x

    x = torch.randn(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        solver_order=2,
        algorithm_type="dpmsolver++",
        final_sigmas_type="zero",
    )
    scheduler.set_timesteps(len(sigmas) - 1)
    scheduler.sigmas = torch.tensor(sigmas, dtype=torch.float64)
    expected = x
    for i, t in enumerate(scheduler.timesteps):
        velocity = model(expected, scheduler.sigmas[i].expand(2))
        expected = scheduler.step(velocity, t, expected).prev_sample
    torch.testing.assert_close(sample_dpmpp_2m(model, x, sigmas, disable=True), expected, rtol=0, atol=1e-5)
