"""Initialisation tricks (lecture notes seed 001, Sec. 6.1): orthogonal matrices preserve norms exactly; the
measured squared-norm ratios match the exact moments E r = (E ρ)^L (e.g. (1 + σ²)^L for residual blocks)."""

from __future__ import annotations

import math

import pytest
import torch

from lossatlas.errors import UserInputError
from lossatlas.models.initialisation import (
    DeepMLP,
    expected_norm_ratio,
    layer_matrices,
    layer_moments,
    norm_ratios,
    orthogonal_matrices,
)


def test_orthogonal_matrices_preserve_norms() -> None:
    g = torch.Generator().manual_seed(0)
    q = orthogonal_matrices(20, 16, g)
    torch.testing.assert_close(q.transpose(1, 2) @ q, torch.eye(16, dtype=torch.float64).expand(20, 16, 16))
    r = norm_ratios("orthogonal", 50, 16, 100, g)  # 100 layers in float64
    assert float((r - 1).abs().max()) < 1e-12
    r32 = norm_ratios("orthogonal", 50, 16, 5, g, dtype=torch.float32)
    assert float((r32 - 1).abs().max()) < 1e-6


def test_orthogonal_matrices_are_haar() -> None:
    """Sign-fixed QR: each entry has mean 0 and E Q_ij² = 1/n (without the fix Q_00 would be biased)."""
    g = torch.Generator().manual_seed(1)
    q = orthogonal_matrices(4000, 4, g)
    corner = q[:, 0, 0]
    assert abs(float(corner.mean())) < 4 * math.sqrt(0.25 / 4000)
    assert float((q ** 2).mean()) == pytest.approx(0.25, rel=1e-12)  # rows are unit vectors: exact


@pytest.mark.parametrize("scheme", ["gaussian", "residual", "residual_beta"])
def test_single_layer_moments_match_monte_carlo(scheme: str) -> None:
    """E ρ and E ρ² of one layer against 20000 draws (within 4 standard errors of the exact value)."""
    n, depth, sigma2 = 8, 4, 0.7
    g = torch.Generator().manual_seed(2)
    u = torch.zeros(20000, n, 1, dtype=torch.float64)
    u[:, 0] = 1.0  # the law is rotation invariant: any unit vector
    rho = ((layer_matrices(scheme, 20000, n, depth, g, sigma2=sigma2) @ u) ** 2).sum(dim=(1, 2))
    m1, m2 = layer_moments(scheme, n, depth, sigma2)
    se1 = math.sqrt((m2 - m1 ** 2) / 20000)
    assert abs(float(rho.mean()) - m1) < 4 * se1
    se2 = float((rho ** 2).std()) / math.sqrt(20000)
    assert abs(float((rho ** 2).mean()) - m2) < 4 * se2


def test_closed_forms() -> None:
    assert expected_norm_ratio("residual", 64, 10, sigma2=1.0)[0] == pytest.approx(2.0 ** 10, rel=1e-14)
    assert expected_norm_ratio("residual_beta", 64, 10, sigma2=1.0)[0] == pytest.approx(1.1 ** 10, rel=1e-14)
    assert expected_norm_ratio("residual_beta", 64, 10 ** 6, sigma2=1.0)[0] == pytest.approx(math.e, rel=1e-5)
    assert expected_norm_ratio("gaussian", 64, 10) == pytest.approx((1.0, math.sqrt((1 + 2 / 64) ** 10 - 1)))
    assert expected_norm_ratio("orthogonal", 64, 10) == (1.0, 0.0)


@pytest.mark.parametrize("scheme", ["gaussian", "residual", "residual_beta"])
def test_measured_mean_ratio_through_depth(scheme: str) -> None:
    """Mean of r_ℓ over 3000 nets at ℓ = 3 and 10 within 4 exact standard errors of (E ρ)^ℓ."""
    g = torch.Generator().manual_seed(3)
    r = norm_ratios(scheme, 3000, 24, 10, g, sigma2=0.5)
    for ell in (3, 10):
        mean, sd = expected_norm_ratio(scheme, 24, 10, sigma2=0.5, layers=ell)
        assert abs(float(r[:, ell - 1].mean()) - mean) < 4 * sd / math.sqrt(3000)


def test_deep_mlp_blocks_are_the_layers() -> None:
    """With φ = identity, z^L = W^L ⋯ W^1 z⁰ with W = I + H (residual) or W (plain), H the block weights."""
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(4))
    for scheme in ("residual_beta", "orthogonal"):
        net = DeepMLP((12,), 3, width=6, depth=4, scheme=scheme, activation="linear",
                      generator=torch.Generator().manual_seed(5))
        z0, z = net.features(x)
        want = z0.T
        for block in net.blocks:
            w = block.weight + torch.eye(6) if scheme.startswith("residual") else block.weight
            want = w @ want
        torch.testing.assert_close(z, want.T, rtol=1e-5, atol=1e-5)
    same = DeepMLP((12,), 3, width=6, depth=4, scheme="residual", generator=torch.Generator().manual_seed(5))
    again = DeepMLP((12,), 3, width=6, depth=4, scheme="residual", generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(same.blocks[2].weight, again.blocks[2].weight, rtol=0, atol=0)


def test_bad_scheme_is_one_line_error() -> None:
    with pytest.raises(UserInputError, match="unknown initialisation"):
        norm_ratios("xavier", 2, 4, 2, torch.Generator())
    with pytest.raises(UserInputError):
        DeepMLP((4,), 2, width=4, depth=0, scheme="gaussian")
