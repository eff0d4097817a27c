"""Dense-matrix views of the pyramid operators, for exact identity and covariance tests."""

import math

import torch


def dense(op, shape, dtype=torch.float64) -> torch.Tensor:
    """The matrix of a linear map on tensors of `shape` (B = 1), applied to every basis vector at once."""
    n = math.prod(shape[1:])
    basis = torch.eye(n, dtype=dtype).reshape(n, *shape[1:])
    return op(basis).reshape(n, -1).T  # column j = op(e_j)


def exponential_covariance(shape, lengths=(1.5, 2.0, 2.0), mean=0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A separable exp(-|d| / l) covariance over (C=1, T, H, W): a 1/f^2 (Lorentzian) spectrum per axis."""
    _, t, h, w = shape

    def kernel(n, length):
        idx = torch.arange(n, dtype=torch.float64)
        return torch.exp(-(idx[:, None] - idx[None, :]).abs() / length)

    cov = torch.kron(torch.kron(kernel(t, lengths[0]), kernel(h, lengths[1])), kernel(w, lengths[2]))
    return torch.full((t * h * w,), float(mean), dtype=torch.float64), cov
