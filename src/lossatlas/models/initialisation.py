"""Initialisation tricks for deep nets and the exact norm propagation they give (lecture notes, seed 001, Sec. 6.1).

Through L layers z^ℓ = W^ℓ z^{ℓ−1}, z⁰ = x, the squared-norm ratio r_L = ‖z^L‖² / ‖x‖² is a product of
independent per-layer ratios ρ_ℓ = ‖W^ℓ u‖² (u = z^{ℓ−1}/‖z^{ℓ−1}‖), because each W^ℓ is independent of
z^{ℓ−1} and its law is rotation invariant. So E r_L = (E ρ)^L and E r_L² = (E ρ²)^L exactly:

* ``gaussian``: W_ij ~ N(0, 1/n) i.i.d. (n × n), so E[WWᵀ] = I (the notes' condition Σ_j E W_ij² = 1):
  ρ ~ χ²_n / n, E ρ = 1, E ρ² = 1 + 2/n.
* ``orthogonal``: W Haar-distributed orthogonal (QR of a Gaussian matrix with the signs of diag(R) fixed,
  Mezzadri 2007): ρ = 1 in every run, up to rounding.
* ``residual``: W = I + H, H_ij ~ N(0, σ²/n): ρ = ‖u + Hu‖² ~ (s/n) χ'²_n(n/s) with s = σ² (noncentral
  χ²), E ρ = 1 + s, E ρ² = (1 + s)² + 2s²/n + 4s/n; so E r_L = (1 + σ²)^L explodes with depth.
* ``residual_beta``: the same with H's variance scaled by β = 1/L (s = σ²/L): E r_L = (1 + σ²/L)^L → e^{σ²},
  ‖z^L‖/‖x‖ = O(1) at any depth (the notes' "β-scaling" for ResNets).

:class:`DeepMLP` puts these blocks in a trainable net (embed → L blocks → readout) for the consequence: how
deep plain and residual nets train from each initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lossatlas.errors import UserInputError

SCHEMES = ("gaussian", "orthogonal", "residual", "residual_beta")
"""Initialisation schemes, in the notes' order (Remark 6.1)."""


def _check(scheme: str, width: int, depth: int) -> None:
    if scheme not in SCHEMES:
        raise UserInputError(f"unknown initialisation '{scheme}'; choose one of: {', '.join(SCHEMES)}")
    if width < 1 or depth < 1:
        raise UserInputError(f"width and depth must be >= 1, got width={width}, depth={depth}")


def gaussian_matrices(runs: int, width: int, generator: torch.Generator, dtype: torch.dtype = torch.float64,
                      variance: float = 1.0) -> Tensor:
    """(runs, n, n) matrices with i.i.d. N(0, variance/n) entries: E[WWᵀ] = variance · I."""
    return torch.randn(runs, width, width, generator=generator, dtype=dtype) * math.sqrt(variance / width)


def orthogonal_matrices(runs: int, width: int, generator: torch.Generator,
                        dtype: torch.dtype = torch.float64) -> Tensor:
    """(runs, n, n) Haar-distributed orthogonal matrices: Q of a Gaussian matrix's QR, columns multiplied by
    sign(diag R) so the law is uniform (Mezzadri 2007, "How to generate random matrices from the classical
    compact groups")."""
    q, r = torch.linalg.qr(torch.randn(runs, width, width, generator=generator, dtype=dtype))
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs[signs == 0] = 1
    return q * signs[..., None, :]


def layer_matrices(scheme: str, runs: int, width: int, depth: int, generator: torch.Generator, *,
                   sigma2: float = 1.0, dtype: torch.dtype = torch.float64) -> Tensor:
    """One layer's matrices W^ℓ for ``runs`` independent nets: (runs, n, n) under ``scheme`` (see module doc);
    ``depth`` enters only through β = 1/L of ``residual_beta``; ``sigma2`` is σ² of the residual branch."""
    _check(scheme, width, depth)
    if scheme == "gaussian":
        return gaussian_matrices(runs, width, generator, dtype)
    if scheme == "orthogonal":
        return orthogonal_matrices(runs, width, generator, dtype)
    scale = sigma2 / depth if scheme == "residual_beta" else sigma2
    eye = torch.eye(width, dtype=dtype)
    return eye + gaussian_matrices(runs, width, generator, dtype, variance=scale)


def norm_ratios(scheme: str, runs: int, width: int, depth: int, generator: torch.Generator, *,
                sigma2: float = 1.0, dtype: torch.dtype = torch.float64) -> Tensor:
    """r_ℓ = ‖z^ℓ‖² / ‖x‖² for ℓ = 1 … ``depth`` in ``runs`` independent linear nets: (runs, depth).

    x is a random unit vector per run; z^ℓ = W^ℓ z^{ℓ−1} with fresh matrices per layer (batched matmuls).
    For ``residual_beta`` the variance uses β = 1/``depth``, so r at ℓ < depth belongs to a net of depth
    ``depth`` seen part way, not to a net of depth ℓ.
    """
    x = torch.randn(runs, width, 1, generator=generator, dtype=dtype)
    z = x / x.norm(dim=1, keepdim=True)
    out = torch.empty(runs, depth, dtype=dtype)
    for layer in range(depth):
        z = layer_matrices(scheme, runs, width, depth, generator, sigma2=sigma2, dtype=dtype) @ z
        out[:, layer] = (z * z).sum(dim=(1, 2))
    return out


def layer_moments(scheme: str, width: int, depth: int, sigma2: float = 1.0) -> tuple[float, float]:
    """(E ρ, E ρ²) of one layer's squared-norm ratio under ``scheme`` (exact; see module docstring)."""
    _check(scheme, width, depth)
    n = float(width)
    if scheme == "gaussian":
        return 1.0, 1.0 + 2.0 / n
    if scheme == "orthogonal":
        return 1.0, 1.0
    s = sigma2 / depth if scheme == "residual_beta" else sigma2
    return 1.0 + s, (1.0 + s) ** 2 + 2 * s * s / n + 4 * s / n


def expected_norm_ratio(scheme: str, width: int, depth: int, sigma2: float = 1.0,
                        layers: int | None = None) -> tuple[float, float]:
    """Exact (E r, SD r) of r = ‖z^ℓ‖²/‖x‖² after ``layers`` (default ``depth``) layers of a depth-``depth`` net.

    E r = (E ρ)^ℓ, Var r = (E ρ²)^ℓ − (E ρ)^{2ℓ}; e.g. (1 + σ²)^L for unscaled residual blocks.
    """
    ell = depth if layers is None else layers
    m1, m2 = layer_moments(scheme, width, depth, sigma2)
    mean = m1 ** ell
    return mean, math.sqrt(max(m2 ** ell - mean * mean, 0.0))


class DeepMLP(nn.Module):
    """x → ``embed`` (Linear, PyTorch default init) → ``depth`` blocks of width n → ``readout`` (Linear).

    Blocks: ``plain`` z ← φ(W z) (``gaussian`` or ``orthogonal`` W); ``residual`` z ← z + H φ(z) with
    H ~ N(0, σ²/n) (``residual``) or N(0, σ²/(nL)) (``residual_beta``). With φ = identity these are exactly the
    layers of :func:`norm_ratios`. Parameters ``blocks.{ℓ}.weight`` (n, n), no biases in the blocks.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, *, width: int, depth: int, scheme: str,
                 activation: str = "relu", sigma2: float = 1.0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        _check(scheme, width, depth)
        if activation not in ("relu", "tanh", "linear"):
            raise UserInputError(f"activation must be relu, tanh or linear, got '{activation}'")
        generator = generator or torch.Generator().manual_seed(0)
        self.scheme, self.activation = scheme, activation
        self.embed = nn.Linear(math.prod(input_shape), width)
        layers = [nn.Linear(width, width, bias=False) for _ in range(depth)]
        with torch.no_grad():
            for layer in layers:
                w = layer_matrices(scheme, 1, width, depth, generator, sigma2=sigma2, dtype=torch.float32)[0]
                layer.weight.copy_(w - torch.eye(width) if scheme.startswith("residual") else w)
        self.blocks = nn.ModuleList(layers)
        self.readout = nn.Linear(width, num_classes)

    def _phi(self, z: Tensor) -> Tensor:
        if self.activation == "relu":
            return torch.relu(z)
        return torch.tanh(z) if self.activation == "tanh" else z

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(z⁰ after the embedding, z^L after the blocks), each (N, n)."""
        z0 = self.embed(x.reshape(x.shape[0], -1))
        z = z0
        for block in self.blocks:
            z = z + block(self._phi(z)) if self.scheme.startswith("residual") else self._phi(block(z))
        return z0, z

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.features(x)[1])


__all__ = ["DeepMLP", "SCHEMES", "expected_norm_ratio", "gaussian_matrices", "layer_matrices", "layer_moments",
           "norm_ratios", "orthogonal_matrices"]
