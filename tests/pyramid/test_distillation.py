"""Distillation math (METHOD.md 6-7): re-noising, w_Q, the DMD gradient and its surrogate loss."""

import functools

import pytest
import torch

from pyramidal_wan.pyramid import PLAIN_SEGMENT, Pyramid, get_fewstep_grid, sample_pyramid_few_step
from pyramidal_wan.pyramid.distillation import (
    NORMALISER_FLOOR,
    choose_grid_point,
    data_noised_input,
    detail_weight,
    dmd_gradient,
    dmd_loss,
    grid_points,
    next_sigma,
    renoise_plain,
    renoise_pyramidal,
    simulated_input,
)

SHAPE = (3, 2, 5, 8, 8)  # (B, C, T, H, W) at stage 0; stages 1 and 2 are (3, 4, 4) and (2, 2, 2)


@pytest.fixture
def pyramid():
    return Pyramid.build()


def stage_tensors(pyramid, stage, seed=0, dtype=torch.float64):
    """Random x_hat, eps', F_T, F_phi at the resolution of `stage`."""
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(4, *SHAPE, generator=g, dtype=dtype)
    return [pyramid.down_to(t, stage) for t in full]


# METHOD.md 7.4: gamma_1 = A / ((1 - tau) D) with the default boundaries, rho_tau in {0, .25, .5, .75, 1}.
GAMMA_1 = {
    0: (1.0, 0.8787, 0.7071, 0.4459, 0.0),
    1: (0.9116, 0.8479, 0.7440, 0.5439, 0.0),
    2: (1.0, 1.0, 1.0, 1.0, 1.0),
}


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_gamma_1_matches_the_method_table(pyramid, stage):
    seg = pyramid.segments[stage]
    rho = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    w = detail_weight(seg, seg.sigma(rho), "eps")
    # The table prints 4 decimals: agreement to 1e-4 is agreement to the last printed digit.
    torch.testing.assert_close(w, torch.tensor(GAMMA_1[stage], dtype=torch.float64), rtol=0, atol=1e-4)
    assert detail_weight(seg, seg.sigma(0.5), "eps") == pytest.approx(float(w[2]), abs=1e-12)


def test_x0_form_and_plain_weights(pyramid):
    tau = torch.tensor([0.1, 0.5])
    # 1 / D_1 = 1 / 1.096958 = 0.911612 (METHOD.md 3.1); the 7.4 table prints 0.911604, 8e-6 away.
    assert detail_weight(pyramid.segments[1], 0.5, "x0") == pytest.approx(1 / 1.096958, abs=1e-6)
    assert detail_weight(pyramid.segments[1], 0.5, "x0") == pytest.approx(0.911604, abs=1e-5)
    assert detail_weight(pyramid.segments[0], 0.3, "x0") == pytest.approx(1.0)
    assert detail_weight(pyramid.segments[2], 0.9, "x0") == 1.0
    assert torch.equal(detail_weight(pyramid.segments[1], tau, "one"), torch.ones(2))
    assert torch.equal(detail_weight(PLAIN_SEGMENT, tau, "eps"), torch.ones(2))
    with pytest.raises(ValueError, match="unknown detail weight"):
        detail_weight(PLAIN_SEGMENT, 0.5, "star")


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_eps_route_difference_is_the_weighted_velocity_difference(pyramid, stage):
    """eps_T - eps_phi = (1 - tau)(P + gamma_1 Q)(F_T - F_phi)
    and x0_phi - x0_T = tau (P + Q / D)(F_T - F_phi)
    from the closed forms (to_noise, to_x0): the derivation of w_Q in METHOD.md 7.4, checked numerically.
    """
    seg = pyramid.segments[stage]
    x, _, f_t, f_phi = stage_tensors(pyramid, stage)
    for rho in (0.0, 0.3, 0.7):
        tau = seg.sigma(rho)
        diff = f_t - f_phi
        low = pyramid.project(diff, stage)
        eps_diff = pyramid.to_noise(x, tau, f_t, seg) - pyramid.to_noise(x, tau, f_phi, seg)
        weighted = low + detail_weight(seg, tau, "eps") * (diff - low)
        torch.testing.assert_close(eps_diff, (1 - tau) * weighted, rtol=0, atol=1e-12)
        x0_diff = pyramid.to_x0(x, tau, f_phi, seg) - pyramid.to_x0(x, tau, f_t, seg)
        weighted = low + detail_weight(seg, tau, "x0") * (diff - low)
        torch.testing.assert_close(x0_diff, tau * weighted, rtol=0, atol=1e-12)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_pyramidal_renoising_is_the_stage_process_of_the_estimate(pyramid, stage):
    """x_tau and v_true are the stage path with u = P x_hat: the closed forms give x_hat and eps' back,
    and v_true = eps' - P x_hat - b Q x_hat (METHOD.md 7.2)."""
    seg = pyramid.segments[stage]
    x_hat, noise, _, _ = stage_tensors(pyramid, stage)
    rho = torch.tensor([0.02, 0.5, 0.98], dtype=torch.float64)
    x_tau, v_true = renoise_pyramidal(pyramid, seg, x_hat, noise, rho)
    tau = seg.sigma(rho)
    low = pyramid.project(x_hat, stage)
    torch.testing.assert_close(v_true, noise - low - seg.b * (x_hat - low), rtol=0, atol=1e-12)
    torch.testing.assert_close(pyramid.to_x0(x_tau, tau, v_true, seg), x_hat, rtol=0, atol=1e-12)
    torch.testing.assert_close(pyramid.to_noise(x_tau, tau, v_true, seg), noise, rtol=0, atol=1e-12)


def test_plain_delta_x0_and_normaliser(pyramid):
    """Plain process: x0_fake - x0_real = tau (F_T - F_phi) and
    tau mean|F_T - v_true| = mean|x_hat - x0_real|, so
    g = Delta x0 / mean|x_hat - x0_real| (the DMD2 / Self-Forcing normaliser, METHOD.md 7.2)."""
    x_hat, noise, f_t, f_phi = stage_tensors(pyramid, 0)
    tau = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x_tau, v_true = renoise_plain(x_hat, noise, tau)
    torch.testing.assert_close(v_true, noise - x_hat, rtol=0, atol=0)
    t = tau.view(-1, 1, 1, 1, 1)
    x0_real = pyramid.to_x0(x_tau, tau, f_t, PLAIN_SEGMENT)
    x0_fake = pyramid.to_x0(x_tau, tau, f_phi, PLAIN_SEGMENT)
    torch.testing.assert_close(x0_fake - x0_real, t * (f_t - f_phi), rtol=0, atol=1e-12)
    eta = (x_hat - x0_real).abs().mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(tau * (f_t - v_true).abs().mean(dim=(1, 2, 3, 4)), eta, rtol=1e-12, atol=0)
    g = dmd_gradient(pyramid, PLAIN_SEGMENT, f_t, f_phi, v_true)
    # g is float32 by design: compare at float32 precision.
    torch.testing.assert_close(
        g, ((x0_fake - x0_real) / eta.view(-1, 1, 1, 1, 1)).float(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("stage, form", [(0, "eps"), (1, "eps"), (1, "x0"), (1, "one"), (2, "eps")])
def test_descending_moves_the_estimate_toward_the_teachers_x0(pyramid, stage, form):
    """With a fake that reproduces the sample (F_phi = v_true, so x0_fake = x_hat), a small descent step on
    L_DMD brings x_hat closer to the teacher's x0 estimate, in total and in each band (METHOD.md 7.2)."""
    seg = pyramid.segments[stage]
    x_hat, noise, f_t, _ = stage_tensors(pyramid, stage, seed=1, dtype=torch.float32)
    rho = torch.tensor([0.2, 0.5, 0.8])
    tau = seg.sigma(rho)
    x_tau, v_true = renoise_pyramidal(pyramid, seg, x_hat, noise, rho)
    x0_real = pyramid.to_x0(x_tau, tau, f_t, seg)
    g = dmd_gradient(pyramid, seg, f_t, v_true, v_true, detail_weight(seg, tau, form))
    x = x_hat.clone().requires_grad_(True)
    dmd_loss(x, g).backward()
    # dL/dx = g / N, up to the float32 rounding of x - (x - g): a few ulp of |x|, divided by N.
    ulp = torch.finfo(torch.float32).eps * x_hat.abs().max()
    torch.testing.assert_close(x.grad, g / g.numel(), rtol=1e-6, atol=float(4 * ulp / g.numel()))
    stepped = x_hat - 0.05 * x.grad * g.numel()
    for band in (lambda t: pyramid.project(t, stage), lambda t: t - pyramid.project(t, stage)):
        before = band(x_hat - x0_real).square().sum()
        after = band(stepped - x0_real).square().sum()
        assert after <= before + 1e-6
    assert (stepped - x0_real).norm() < (x_hat - x0_real).norm()


def test_gradient_dtype_shape_floor_and_nan(pyramid):
    x_hat, noise, f_t, f_phi = stage_tensors(pyramid, 1, dtype=torch.bfloat16)
    seg = pyramid.segments[1]
    _, v_true = renoise_pyramidal(pyramid, seg, x_hat, noise, torch.full((3,), 0.5, dtype=torch.bfloat16))
    g = dmd_gradient(pyramid, seg, f_t, f_phi, v_true, torch.tensor([0.2, 0.5, 1.0]))
    assert g.dtype == torch.float32 and g.shape == x_hat.shape
    # Per-sample normalisation: scaling sample 0's teacher error leaves samples 1, 2 untouched.
    scaled = dmd_gradient(pyramid, seg, f_t, f_phi, v_true + torch.tensor([5.0, 0, 0]).view(-1, 1, 1, 1, 1))
    unscaled = dmd_gradient(pyramid, seg, f_t, f_phi, v_true)
    torch.testing.assert_close(scaled[1:], unscaled[1:], rtol=0, atol=0)
    # A teacher equal to v_true hits the floor; a NaN in the teacher becomes a finite gradient.
    g = dmd_gradient(pyramid, seg, v_true, f_phi, v_true)
    torch.testing.assert_close(g, (v_true.float() - f_phi.float()) / NORMALISER_FLOOR, rtol=1e-6, atol=0)
    bad = f_t.float().clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    assert torch.isfinite(dmd_gradient(pyramid, seg, bad, f_phi, v_true)).all()
    assert dmd_loss(x_hat, g).dtype == torch.float32


@pytest.mark.parametrize("stage, form", [(0, "one"), (1, "eps"), (2, "one")])
def test_a_given_first_frame_gets_no_gradient_and_stays_out_of_the_normaliser(pyramid, stage, form):
    """Rows 0 and 2 are image-to-video (their frame 0 is given): g is 0 there and the normaliser averages the
    generated frames only, so whatever the networks say on that frame leaves g unchanged; row 1 keeps the
    plain gradient."""
    seg = pyramid.segments[stage]
    x_hat, noise, f_t, f_phi = stage_tensors(pyramid, stage, seed=2, dtype=torch.float32)
    rho = torch.tensor([0.2, 0.5, 0.8])
    _, v_true = renoise_pyramidal(pyramid, seg, x_hat, noise, rho)
    w_q = detail_weight(seg, seg.sigma(rho), form)
    frames = x_hat.shape[2]
    generated = torch.ones(3, 1, frames, 1, 1)
    generated[[0, 2], :, 0] = 0.0
    g = dmd_gradient(pyramid, seg, f_t, f_phi, v_true, w_q, generated)
    assert (g[[0, 2], :, 0] == 0).all() and (g[[0, 2], :, 1:] != 0).any()
    torch.testing.assert_close(g[1], dmd_gradient(pyramid, seg, f_t, f_phi, v_true, w_q)[1], rtol=0, atol=0)
    moved = [t.clone() for t in (f_t, f_phi, v_true)]
    for t in moved:
        t[:, :, 0] += 100.0 * torch.randn(t[:, :, 0].shape, generator=torch.Generator().manual_seed(3))
    again = dmd_gradient(pyramid, seg, *moved, w_q, generated)
    torch.testing.assert_close(again[[0, 2]], g[[0, 2]], rtol=0, atol=0)
    assert not torch.equal(again[1], g[1])
    # The normaliser: with frame 0 made silent (no difference, no error) the plain formula averages it in
    # as zeros, a mean over T frames instead of the T - 1 generated ones.
    silent = [t.clone() for t in (f_t, f_phi, v_true)]
    for t in silent:
        t[:, :, 0] = v_true[:, :, 0]
    plain = dmd_gradient(pyramid, seg, *silent, w_q)
    torch.testing.assert_close(g[[0, 2]], plain[[0, 2]] * (frames - 1) / frames, rtol=1e-5, atol=1e-6)


def test_data_noised_input_lands_on_the_grid_level(pyramid):
    grid = get_fewstep_grid(pyramid, (2, 2, 1))
    x0_full, noise_full, _, _ = stage_tensors(pyramid, 0)
    for n, k in grid_points(grid):
        seg, sigma = grid[n].segment, grid[n].sigmas[k]
        x0, noise = pyramid.down_to(x0_full, seg.stage), pyramid.down_to(noise_full, seg.stage)
        u = None if seg.stage == 2 else pyramid.up(pyramid.down(x0, seg.stage), seg.stage)
        x = data_noised_input(pyramid, seg, x0, u, noise, sigma)
        expected, _, _ = pyramid.training_point(x0, u, noise, seg, seg.rho(sigma))
        torch.testing.assert_close(x, expected, rtol=0, atol=0)
    # Plain segment: x = (1 - sigma) x0 + sigma eps, and sigma = 1 is pure noise.
    x = data_noised_input(pyramid, PLAIN_SEGMENT, x0_full, None, noise_full, 0.25)
    torch.testing.assert_close(x, 0.75 * x0_full + 0.25 * noise_full, rtol=0, atol=1e-12)
    assert torch.equal(data_noised_input(pyramid, PLAIN_SEGMENT, x0_full, None, noise_full, 1.0), noise_full)


def test_grid_point_helpers(pyramid):
    grid = get_fewstep_grid(pyramid, (2, 2, 1))
    assert grid_points(grid) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    assert next_sigma(grid, 0, 0) == grid[0].sigmas[1]
    assert next_sigma(grid, 1, 1) == pyramid.segments[1].sigma_c
    assert next_sigma(grid, 2, 0) == 0.0
    g = torch.Generator().manual_seed(0)
    seen = {choose_grid_point(grid, g) for _ in range(200)}
    assert seen == set(grid_points(grid))


def test_simulated_input_is_the_samplers_state(pyramid):
    """Backward simulation stops where the few-step sampler would evaluate (n, k), with the same noise."""
    grid = get_fewstep_grid(pyramid, (2, 2, 1))

    def model(x, sigma):  # a fixed, input-dependent velocity
        return 0.5 * x + sigma.view(-1, 1, 1, 1, 1)

    noise = torch.randn(2, 2, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    states = []
    sample_pyramid_few_step(
        model,
        noise,
        pyramid,
        grid,
        callback=lambda info: states.append(info["x"]),
        disable=True,
        generator=torch.Generator().manual_seed(4),
    )
    for i, (n, k) in enumerate(grid_points(grid)):
        sampler = functools.partial(sample_pyramid_few_step, pyramid=pyramid)
        x = simulated_input(model, noise, sampler, grid, n, k, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(x, states[i], rtol=0, atol=0)
