"""Identities of METHOD.md 2.6 for every operator, stage shape and first-frame handling."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pyramid_helpers import dense

from pyramidal_wan.pyramid import Pyramid, Transfer, inverse_jump_sigma, jump_sigma
from pyramidal_wan.pyramid.operators import _analysis

WAVELETS = ["haar", "db2"]
# (factors, fine latent shape (B, C, T, H, W)): joint, spatial-only, temporal-only, filters longer than axes.
CASES = [
    ((2, 2, 2), (1, 1, 5, 4, 6)),
    ((2, 2, 2), (1, 2, 3, 2, 2)),
    ((1, 2, 2), (1, 1, 3, 4, 4)),
    ((2, 1, 1), (1, 1, 7, 2, 3)),
    ((1, 1, 2), (1, 2, 1, 2, 10)),
]


@pytest.fixture(params=[(w, f, s) for w in WAVELETS for f, s in CASES], ids=lambda p: f"{p[0]}-{p[1]}-{p[2]}")
def case(request):
    wavelet, factors, shape = request.param
    return Transfer(factors, wavelet), shape


def test_down_inverts_up(case):
    op, shape = case
    y = torch.randn(op.coarse_shape(shape), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op.down(op.up(y)), y, rtol=0, atol=1e-10)


def test_projection_identities(case):
    op, shape = case
    p = dense(op.project, shape)
    eye = torch.eye(p.shape[0], dtype=p.dtype)
    q = eye - p
    torch.testing.assert_close(p @ p, p, rtol=0, atol=1e-12)  # P^2 = P: R_up R_down R_up R_down = R_up R_down
    torch.testing.assert_close(p.T, p, rtol=0, atol=1e-12)  # orthogonal projection
    torch.testing.assert_close(p @ q, torch.zeros_like(p), rtol=0, atol=1e-12)
    x = torch.randn(p.shape[0], dtype=p.dtype, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close((p @ x).square().sum() + (q @ x).square().sum(), x.square().sum())
    # Rank of P = number of coarse elements.
    assert round(torch.trace(p).item()) == math.prod(op.coarse_shape(shape)[1:])


def test_constants_are_preserved(case):
    op, shape = case
    x = torch.full(shape, 0.37, dtype=torch.float64)
    torch.testing.assert_close(op.down(x), torch.full(op.coarse_shape(shape), 0.37, dtype=torch.float64))
    torch.testing.assert_close(op.up(op.down(x)), x)


def test_haar_is_average_pool_and_nearest():
    x = torch.randn(2, 3, 9, 8, 12, generator=torch.Generator().manual_seed(0))
    op = Transfer((2, 2, 2), "haar")
    y = op.down(x)
    torch.testing.assert_close(y[:, :, 1:], F.avg_pool3d(x[:, :, 1:], 2))
    torch.testing.assert_close(y[:, :, :1], F.avg_pool3d(x[:, :, :1], (1, 2, 2)))
    up = op.up(y)
    nearest = y[:, :, 1:].repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    torch.testing.assert_close(up[:, :, 1:], nearest, rtol=0, atol=0)
    torch.testing.assert_close(up[:, :, :1], y[:, :, :1].repeat_interleave(2, 3).repeat_interleave(2, 4))


@pytest.mark.parametrize("n", [2, 4, 6, 10])
def test_db2_rows_are_orthonormal_for_short_axes(n):
    from pyramidal_wan.pyramid.operators import WAVELETS as taps

    low = _analysis(torch.eye(n, dtype=torch.float64), taps["db2"], dim=1)  # (n, n/2): column k = L row k
    torch.testing.assert_close(low.T @ low, torch.eye(n // 2, dtype=torch.float64), rtol=0, atol=1e-12)


def test_db2_spans_the_pywavelets_periodization_approximation():
    pywt = pytest.importorskip("pywt")
    from pyramidal_wan.pyramid.operators import WAVELETS as taps

    n = 10
    ours = _analysis(torch.eye(n, dtype=torch.float64), taps["db2"], dim=1).T  # (n/2, n)
    theirs = torch.from_numpy(pywt.dwt(np.eye(n), "db2", mode="periodization", axis=1)[0]).T
    # Tap order and circular offsets differ between libraries; both are orthonormal bases of
    # shifted copies of the same filter, so their projections agree up to a circular shift.
    p_ours = ours.T @ ours
    p_theirs = theirs.to(torch.float64).T @ theirs.to(torch.float64)
    assert any(torch.allclose(p_ours, p_theirs.roll((s, s), (0, 1)), atol=1e-6) for s in range(n)), (
        "db2 projection differs from PyWavelets' for every circular shift"
    )


@pytest.mark.parametrize("wavelet", WAVELETS)
def test_detail_noise_and_down_noise_covariances(wavelet):
    """Cov(Q z) = Q and Cov(R_down z) = I / K (frame 0: I / K0), Monte Carlo with 40k samples."""
    op = Transfer((2, 2, 2), wavelet)
    shape = (1, 1, 5, 4, 4)
    n = 40_000
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, *shape[1:], dtype=torch.float64, generator=g)
    q = torch.eye(80, dtype=torch.float64) - dense(op.project, shape)
    qz = (z - op.project(z)).reshape(n, -1)
    tol = 4 / math.sqrt(n)  # 4 standard errors of a unit-variance sample covariance entry
    assert (qz.T @ qz / n - q).abs().max() < tol
    dz = op.down(z).reshape(n, -1)
    expected = torch.diag(torch.tensor([1 / 4] * 4 + [1 / 8] * 8, dtype=torch.float64))
    assert (dz.T @ dz / n - expected).abs().max() < tol / 4


def test_jump_sigma_values_and_inverse():
    assert jump_sigma(1 / 3, 8) == pytest.approx(0.585786, abs=1e-6)
    assert jump_sigma(2 / 3, 8) == pytest.approx(0.849779, abs=1e-6)
    assert jump_sigma(1 / 3, 4) == pytest.approx(0.5, abs=1e-12)
    assert jump_sigma(2 / 3, 4) == pytest.approx(0.8, abs=1e-12)
    assert jump_sigma(0.0, 8) == 0.0 and jump_sigma(1.0, 8) == 1.0 and jump_sigma(0.3, 1) == 0.3
    for s in (0.1, 0.5, 0.9):
        assert inverse_jump_sigma(jump_sigma(s, 8), 8) == pytest.approx(s)


def test_pyramid_flow_cross_check():
    """2-D Haar, K = 4, gamma = 1/3, sigma_e = 0.667: lambda = Pyramid Flow's alpha, noise std its beta."""
    sigma_e, k = 0.667, 4
    lam = 1 / (1 + (math.sqrt(k) - 1) * sigma_e)
    kappa = math.sqrt(k) * sigma_e
    assert lam == pytest.approx(0.5999, abs=1e-4)
    assert lam * kappa * math.sqrt(1 - 1 / k) == pytest.approx(0.6930, abs=1e-4)


def test_paper_boundaries_and_constants():
    p = Pyramid.build()
    got = [(s.sigma_c, s.sigma_n, s.b, s.d) for s in p.segments]
    expected = [(0, 0.585786, 1.707107, 1), (1 / 3, 0.849779, 1.290875, 1.096958), (2 / 3, 1, 1, 1)]
    for row, ref in zip(got, expected):
        assert row == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize(
    "bad", [torch.zeros(2, 3, 4, 4), torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 5, 3, 4)]
)
def test_bad_shapes_raise(bad):
    with pytest.raises(ValueError):
        Transfer((2, 2, 2)).down(bad)


def test_bad_sigma_and_stage_raise():
    p = Pyramid.build()
    y = torch.zeros(1, 1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"sigma_e must be in \[0, 1\]"):
        p.transfers[0].up_with_noise(y, 1.5)
    with pytest.raises(ValueError, match="stage 2 out of range"):
        p.up(y, 2)
    with pytest.raises(ValueError, match=r"rho must lie in \[0, 1\]"):
        p.training_point(torch.zeros(1, 1, 2, 4, 4), None, torch.zeros(1, 1, 2, 4, 4), 2, 1.5)
