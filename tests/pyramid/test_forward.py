"""The forward process, the jump and the closed forms (METHOD.md 2.2, 2.5, 3, 7.4); fixed seeds."""

import math

import pytest
import torch
from pyramid_helpers import dense, exponential_covariance

from pyramidal_wan.pyramid import Pyramid, jump_sigma, randn

SHAPE = (1, 1, 5, 4, 4)  # stage-0 latent of the test pyramid: 80 elements, frame 0 = the first 16
N = 40_000


def gaussian_latents(n, shape, mean=0.3, seed=0):
    m, cov = exponential_covariance(shape[1:], mean=mean)
    chol = torch.linalg.cholesky(cov)
    z = torch.randn(n, m.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return (m + z @ chol.T).reshape(n, *shape[1:])


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
@pytest.mark.parametrize("stage", [0, 1])
def test_jump_residual_is_white_at_sigma_n(wavelet, stage):
    """R_up_N(y_c^(i+1)) - (1 - sigma_n) P x0 has mean 0 and covariance sigma_n^2 I, frame 0 included."""
    p = Pyramid.build(3, wavelet=wavelet)
    g = torch.Generator().manual_seed(1)
    x0 = p.down_to(gaussian_latents(N, SHAPE), stage)  # stage-i clean latents
    coarse = p.down(x0, stage)
    sigma_e, sigma_n = p.segments[stage + 1].sigma_c, p.segments[stage].sigma_n
    y_c = (1 - sigma_e) * coarse + sigma_e * randn(coarse.shape, coarse, g)
    residual = (p.jump(y_c, stage, generator=g) - (1 - sigma_n) * p.project(x0, stage)).reshape(N, -1)

    frame0 = x0[0, 0, 0].numel()
    cov = residual.T @ residual / N
    tol = 5 * sigma_n**2 * math.sqrt(2 / N)  # 5 standard errors of a sample-covariance entry
    assert residual.mean(0).abs().max() < 5 * sigma_n / math.sqrt(N)
    assert (cov - sigma_n**2 * torch.eye(cov.shape[0], dtype=cov.dtype)).abs().max() < tol
    assert cov[:frame0, :frame0].diagonal().mean() == pytest.approx(sigma_n**2, abs=tol / 4)
    # Without the frame-0 top-up, frame 0 would sit at g_K0(sigma_e): far outside the tolerance.
    assert abs(jump_sigma(sigma_e, 4) ** 2 - sigma_n**2) > 3 * tol


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_jumped_clean_end_matches_the_noisy_end_in_distribution(wavelet):
    """Mean and covariance of R_up_N(y_c^(1)) equal those of y_n^(0) built directly (latent construction)."""
    p = Pyramid.build(3, wavelet=wavelet)
    g = torch.Generator().manual_seed(2)
    x0 = gaussian_latents(N, SHAPE, seed=3)
    coarse = p.down(x0, 0)
    y_c, _ = p.boundary_samples(
        coarse, p.noisy_end_signal(p.down(coarse, 1), 1), randn(coarse.shape, coarse, g), 1
    )
    jumped = p.jump(y_c, 0, generator=g).reshape(N, -1)
    _, y_n = p.boundary_samples(x0, p.noisy_end_signal(coarse, 0), randn(x0.shape, x0, g), 0)
    direct = y_n.reshape(N, -1)
    torch.testing.assert_close(jumped.mean(0), direct.mean(0), rtol=0, atol=0.03)
    cov_j, cov_d = torch.cov(jumped.T), torch.cov(direct.T)
    assert (cov_j - cov_d).abs().max() < 8 * math.sqrt(2 / N)


def test_training_point_is_on_a_straight_segment_with_true_noise_level():
    p = Pyramid.build(3)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(3, 2, 5, 4, 4, dtype=torch.float64, generator=g)
    u = p.noisy_end_signal(p.down(x0, 0), 0)
    noise = torch.randn(x0.shape, dtype=torch.float64, generator=g)
    seg = p.segments[0]
    x1, s1, v = p.training_point(x0, u, noise, 0, 0.2)
    x2, s2, v2 = p.training_point(x0, u, noise, 0, 0.7)
    torch.testing.assert_close((x2 - x1) / (s2 - s1), v)  # v* = dx/dsigma, constant along the segment
    torch.testing.assert_close(v, v2)
    rho = 0.2
    expected = (1 - rho) * (1 - seg.sigma_c) * x0 + rho * (1 - seg.sigma_n) * u + s1 * noise
    torch.testing.assert_close(x1, expected)
    # Per-sample rho tensors broadcast per batch item.
    rhos = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    xb, sb, _ = p.training_point(x0, u, noise, 0, rhos)
    torch.testing.assert_close(sb, seg.sigma_c + rhos * seg.delta)
    torch.testing.assert_close(xb[1], p.training_point(x0, u, noise, 0, 0.5)[0][1])


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
@pytest.mark.parametrize("stage", [0, 1, 2])
@pytest.mark.parametrize("rho", [0.0, 0.3, 1.0])
def test_closed_forms_recover_x0_and_noise(wavelet, stage, rho):
    """x0_hat and eps_hat (METHOD.md 7.4) are exact from (x_sigma, v*) when u = P x0."""
    p = Pyramid.build(3, wavelet=wavelet)
    g = torch.Generator().manual_seed(5)
    x0 = p.down_to(torch.randn(2, 3, 9, 8, 8, dtype=torch.float64, generator=g), stage)
    noise = torch.randn(x0.shape, dtype=torch.float64, generator=g)
    u = None if stage == 2 else p.project(x0, stage)
    x, sigma, v = p.training_point(x0, u, noise, stage, rho)
    seg = p.segments[stage]
    torch.testing.assert_close(p.to_x0(x, sigma, v, seg), x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(p.to_noise(x, sigma, v, seg), noise, rtol=0, atol=1e-10)


def test_plain_segment_closed_forms_are_the_flow_matching_identities():
    from pyramidal_wan.pyramid import PLAIN_SEGMENT

    p = Pyramid.build(3)
    g = torch.Generator().manual_seed(6)
    x0, noise = torch.randn(2, 1, 5, 4, 4, generator=g), torch.randn(2, 1, 5, 4, 4, generator=g)
    x, sigma, v = p.training_point(x0, None, noise, PLAIN_SEGMENT, 0.4)
    torch.testing.assert_close(x, 0.6 * x0 + 0.4 * noise)
    torch.testing.assert_close(v, noise - x0)
    torch.testing.assert_close(p.to_x0(x, sigma, v, PLAIN_SEGMENT), x0)
    torch.testing.assert_close(p.to_noise(x, sigma, v, PLAIN_SEGMENT), noise)


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_jump_of_white_noise_is_white(wavelet):
    """R_up_N at sigma_e = 1 turns coarse white noise into fine white noise: covariance I, within and
    across blocks, frame 0 included (5 standard errors of a sample-covariance entry, 40k samples)."""
    p = Pyramid.build(3, wavelet=wavelet)
    g = torch.Generator().manual_seed(7)
    y = torch.randn(N, 1, 3, 2, 2, dtype=torch.float64, generator=g)
    x = p.transfers[0].up_with_noise(y, 1.0, generator=g).reshape(N, -1)
    cov = x.T @ x / N
    assert (cov - torch.eye(80, dtype=cov.dtype)).abs().max() < 5 * math.sqrt(2 / N)


def test_dense_projection_matches_operator():
    p = Pyramid.build(3)
    pm = dense(lambda x: p.project(x, 0), SHAPE)
    x = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close((pm @ x.reshape(-1)).reshape(SHAPE), p.project(x, 0))
