"""The convexified CNN of Zhang, Liang & Wainwright 2017 ("Convexified Convolutional Neural Networks", ICML;
arXiv:1609.01000) and the two-layer CNN it relaxes.

A two-layer CNN with r filters w_j on P patches z_p(x) ∈ R^{d₁} and output weights α computes (Sec. 3.1)

    f_k(x) = Σ_{j ≤ r} Σ_{p ≤ P} α_{k,j,p} σ(w_jᵀ z_p(x))                       (CNN-1, :class:`CNN1`)

Replacing σ(wᵀz) by a function in the RKHS of a patch kernel k(z, z') and a finite feature map
Q: R^{d₁} → R^m with ⟨Q(z), Q(z')⟩ ≈ k(z, z') (random Fourier features, Rahimi & Recht 2007, or Nyström,
Williams & Seeger 2001), the output is linear in one parameter matrix:

    f_k(x) = tr(Z(x) A_k) = Σ_p ⟨Q(z_p(x)), A_k[:, p]⟩,   Z(x) ∈ R^{P×m} with rows Q(z_p(x)),

and A = [A_1, …, A_K] ∈ R^{m × KP} has rank ≤ r. The CCNN drops the rank constraint for its convex envelope,
the nuclear-norm ball ‖A‖_* ≤ R (Sec. 3.2); :mod:`lossatlas.models.nuclear` solves that convex programme.
:class:`CCNN` is the resulting predictor as an ``nn.Module`` (parameters ``weight`` = A and ``bias``), so the
engine evaluates it like any other model (interpolations between two solutions, surfaces).

Average pooling over the patch grid (Zhang et al.'s Sec. 3.4; their code pools the features) is optional in
both models (``pool``): the CNN pools σ(w_jᵀ z_p), the CCNN pools Q(z_p); both are linear in α (resp. A).

Inputs: images (N, C, H, W) or signals (N, L) / (N, C, L); a signal is handled as an image of height 1 with
patches of height 1, so one code path serves digits (1, 8, 8) and MNIST-1D (40,).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lossatlas.errors import UserInputError


@dataclass(frozen=True)
class PatchSpec:
    """Patches z_p(x): square ``size`` × ``size`` windows (``size`` long for signals), ``stride``, zero
    ``padding``, then average pooling of ``pool`` × ``pool`` patch-grid cells (stride ``pool``; 1 = none)."""

    size: int = 3
    stride: int = 1
    padding: int = 0
    pool: int = 1

    def __post_init__(self) -> None:
        if self.size < 1 or self.stride < 1 or self.padding < 0 or self.pool < 1:
            raise UserInputError(f"patches need size >= 1, stride >= 1, padding >= 0 and pool >= 1, got size="
                                 f"{self.size}, stride={self.stride}, padding={self.padding}, pool={self.pool}")


def as_image(x: Tensor, input_shape: Sequence[int]) -> Tensor:
    """(N, *input_shape) → (N, C, H, W): images as they are, signals (L,) / (C, L) as height-1 images."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        return x.reshape(x.shape[0], *shape)
    if len(shape) == 1:
        return x.reshape(x.shape[0], 1, 1, shape[0])
    if len(shape) == 2:
        return x.reshape(x.shape[0], shape[0], 1, shape[1])
    raise UserInputError(f"convolutional models need inputs of shape (L,), (C, L) or (C, H, W), got {shape}")


def _kernel(spec: PatchSpec, image_shape: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(kernel, stride, padding) pairs for an image whose height is 1 (a signal) or not."""
    if int(image_shape[-2]) == 1:
        return (1, spec.size), (1, spec.stride), (0, spec.padding)
    return (spec.size, spec.size), (spec.stride, spec.stride), (spec.padding, spec.padding)


def patch_grid(spec: PatchSpec, input_shape: Sequence[int]) -> tuple[int, int]:
    """(rows, columns) of the patch grid before pooling; UserInputError when the patch does not fit."""
    image = as_image(torch.zeros(1, *input_shape), input_shape).shape[1:]
    kernel, stride, padding = _kernel(spec, image)
    grid = tuple((int(image[i + 1]) + 2 * padding[i] - kernel[i]) // stride[i] + 1 for i in range(2))
    if min(grid) < 1:
        raise UserInputError(f"a {spec.size}-wide patch does not fit inputs of shape {tuple(input_shape)}; "
                             "use a smaller patch size or more padding")
    return grid[0], grid[1]


def extract_patches(x: Tensor, spec: PatchSpec, input_shape: Sequence[int]) -> Tensor:
    """z_p(x) for every patch: (N, *input_shape) → (N, P, d₁), P = rows · columns of the grid, d₁ = C·size²
    (C·size for signals); patches in row-major grid order, each flattened channel-major like a conv filter."""
    image = as_image(x, input_shape)
    kernel, stride, padding = _kernel(spec, image.shape[1:])
    return F.unfold(image, kernel, padding=padding, stride=stride).transpose(1, 2)


def pool_patches(values: Tensor, spec: PatchSpec, grid: tuple[int, int]) -> Tensor:
    """Average-pool per-patch values (N, P, c) over ``spec.pool`` × ``spec.pool`` grid cells → (N, P', c)."""
    if spec.pool == 1:
        return values
    n, _, c = values.shape
    image = values.transpose(1, 2).reshape(n, c, *grid)
    window = (1, spec.pool) if grid[0] == 1 else (spec.pool, spec.pool)
    pooled = F.avg_pool2d(image, window, stride=window, ceil_mode=True)
    return pooled.reshape(n, c, -1).transpose(1, 2)


def pooled_positions(spec: PatchSpec, input_shape: Sequence[int]) -> int:
    """P after pooling: the number of positions the second layer sees."""
    rows, cols = patch_grid(spec, input_shape)
    if spec.pool == 1:
        return rows * cols
    if rows == 1:
        return math.ceil(cols / spec.pool)
    return math.ceil(rows / spec.pool) * math.ceil(cols / spec.pool)


# -- patch kernels and their finite feature maps ------------------------------------------------------
def rbf_kernel(a: Tensor, b: Tensor, gamma: float) -> Tensor:
    """k(a_i, b_j) = exp(−γ ‖a_i − b_j‖²) for rows of ``a`` (n, d) and ``b`` (m, d) → (n, m)."""
    sq = (a * a).sum(1, keepdim=True) + (b * b).sum(1) - 2 * a @ b.T
    return torch.exp(-gamma * sq.clamp_min(0))


def median_gamma(patches: Tensor, generator: torch.Generator, sample: int = 2000) -> float:
    """The median heuristic γ = 1 / median ‖z − z'‖² over random pairs of the rows of ``patches`` (n, d)."""
    n = patches.shape[0]
    i = torch.randint(n, (sample,), generator=generator)
    j = torch.randint(n, (sample,), generator=generator)
    sq = ((patches[i] - patches[j]) ** 2).sum(1)
    median = float(sq[sq > 0].median()) if bool((sq > 0).any()) else 1.0
    return 1.0 / median


class PatchFeatures(nn.Module):
    """Q: R^{d₁} → R^m with Q(z)ᵀQ(z') ≈ exp(−γ‖z − z'‖²), fixed after :meth:`fit` (buffers, not parameters).

    * ``rff``: random Fourier features Q(z) = √(2/m) cos(Wᵀz + b), W ~ N(0, 2γ I), b ~ U[0, 2π)
      (Rahimi & Recht 2007; what Zhang et al.'s code uses);
    * ``nystrom``: Q(z) = K_{LL}^{-1/2} k(L, z) on m landmark patches L drawn from the training patches
      (Williams & Seeger 2001): exact, QQᵀ = K, on the landmarks themselves.
    """

    projection: Tensor
    offset: Tensor
    whitening: Tensor
    gamma: Tensor

    def __init__(self, kind: str, dim: int, features: int) -> None:
        super().__init__()
        if kind not in ("rff", "nystrom"):
            raise UserInputError(f"patch features must be rff or nystrom, got '{kind}'")
        if features < 1:
            raise UserInputError(f"the number of kernel features m must be >= 1, got {features}")
        self.kind = kind
        self.register_buffer("gamma", torch.tensor(1.0, dtype=torch.float64))  # γ of the RBF kernel
        self.register_buffer("projection", torch.zeros(dim, features))  # W (rff) or landmarksᵀ (nystrom)
        self.register_buffer("offset", torch.zeros(features))  # b (rff)
        self.register_buffer("whitening", torch.eye(features))  # K_LL^{-1/2} (nystrom)

    def fit(self, patches: Tensor, gamma: float, generator: torch.Generator) -> PatchFeatures:
        """Draw the map from training patches (n, d₁) with a seeded generator; returns ``self``."""
        d, m = self.projection.shape
        with torch.no_grad():
            self.gamma.fill_(float(gamma))
            if self.kind == "rff":
                self.projection.copy_(torch.randn(d, m, generator=generator) * math.sqrt(2 * gamma))
                self.offset.copy_(torch.rand(m, generator=generator) * 2 * math.pi)
            else:
                pick = torch.randperm(patches.shape[0], generator=generator)[:m]
                if pick.numel() < m:
                    raise UserInputError(f"nystrom features need at least m={m} training patches, got "
                                         f"{patches.shape[0]}")
                landmarks = patches[pick].double()
                values, vectors = torch.linalg.eigh(rbf_kernel(landmarks, landmarks, gamma))
                inv_sqrt = 1 / values.clamp_min(1e-8 * float(values.max())).sqrt()
                self.projection.copy_(landmarks.T.float())
                self.whitening.copy_((vectors * inv_sqrt) @ vectors.T)
        return self

    def forward(self, z: Tensor) -> Tensor:
        """(..., d₁) → (..., m)."""
        m = self.projection.shape[1]
        if self.kind == "rff":
            return math.sqrt(2.0 / m) * torch.cos(z @ self.projection + self.offset)
        flat = z.reshape(-1, z.shape[-1])
        k = rbf_kernel(flat, self.projection.T.to(z.dtype), float(self.gamma))
        return (k @ self.whitening.to(z.dtype)).reshape(*z.shape[:-1], m)


class CCNN(nn.Module):
    """The convexified CNN predictor f_k(x) = Σ_p ⟨Q(z_p(x)), A_k[:, p]⟩ + b_k (Zhang et al. 2017, Sec. 3.2).

    ``weight`` is A ∈ R^{m × KP} laid out [A_1, …, A_K] (column k·P + p), the matrix whose nuclear norm is
    constrained; ``bias`` (K,) is unconstrained. Input (N, *input_shape) → logits (N, K).
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, patches: PatchSpec,
                 features: PatchFeatures) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.patches = patches
        self.grid = patch_grid(patches, self.input_shape)
        self.positions = pooled_positions(patches, self.input_shape)
        self.num_classes = int(num_classes)
        self.features = features
        m = features.projection.shape[1]
        self.weight = nn.Parameter(torch.zeros(m, self.num_classes * self.positions))
        self.bias = nn.Parameter(torch.zeros(self.num_classes))

    def feature_matrix(self, x: Tensor) -> Tensor:
        """Z(x): (N, *input_shape) → (N, P, m), the pooled patch features."""
        q = self.features(extract_patches(x, self.patches, self.input_shape))
        return pool_patches(q, self.patches, self.grid)

    def forward(self, x: Tensor) -> Tensor:
        return logits_from_features(self.feature_matrix(x), self.weight, self.bias)


def logits_from_features(z: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """tr(Z(x) A_k) + b_k: features (N, P, m), A (m, K·P), b (K,) → (N, K)."""
    m = weight.shape[0]
    a = weight.reshape(m, bias.shape[0], z.shape[1])  # A_k[:, p] = weight[:, k·P + p]
    return torch.einsum("npj,jkp->nk", z, a) + bias


def build_ccnn(input_shape: Sequence[int], num_classes: int, patches: PatchSpec, train_x: Tensor, *,
               kind: str = "rff", features: int = 64, gamma: float | None = None, seed: int = 0) -> CCNN:
    """A CCNN with A = 0 whose feature map is drawn (seeded) from the training inputs' patches.

    ``gamma=None`` takes the median heuristic on the training patches (:func:`median_gamma`).
    """
    generator = torch.Generator().manual_seed(seed)
    z = extract_patches(train_x, patches, input_shape)
    flat = z.reshape(-1, z.shape[-1])
    g = median_gamma(flat, generator) if gamma is None else float(gamma)
    if not g > 0:
        raise UserInputError(f"the RBF kernel needs gamma > 0, got {g}")
    q = PatchFeatures(kind, flat.shape[1], features).fit(flat, g, generator)
    return CCNN(input_shape, num_classes, patches, q)


class CNN1(nn.Module):
    """The two-layer CNN that the CCNN relaxes (Zhang et al.'s CNN-1): one convolution with ``filters`` filters
    w_j on the patches of :class:`PatchSpec`, the activation, optional average pooling, one linear layer α.

    Input (N, *input_shape) → logits (N, K). Parameters ``conv.weight`` (r, C, size, size) (height 1 for
    signals), ``conv.bias``, ``linear.weight`` (K, r·P), ``linear.bias``.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, patches: PatchSpec, filters: int,
                 activation: str = "relu") -> None:
        super().__init__()
        if filters < 1:
            raise UserInputError(f"zoo model 'cnn1' needs filters >= 1, got {filters}")
        if activation not in ("relu", "quadratic"):
            raise UserInputError(f"zoo model 'cnn1' takes activation relu or quadratic, got '{activation}'")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.patches = patches
        self.grid = patch_grid(patches, self.input_shape)
        channels = as_image(torch.zeros(1, *self.input_shape), self.input_shape).shape[1]
        kernel, stride, padding = _kernel(patches, as_image(torch.zeros(1, *self.input_shape),
                                                            self.input_shape).shape[1:])
        self.activation = activation
        self.conv = nn.Conv2d(channels, filters, kernel, stride=stride, padding=padding)
        self.linear = nn.Linear(filters * pooled_positions(patches, self.input_shape), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(as_image(x, self.input_shape))
        h = torch.relu(h) if self.activation == "relu" else h * h
        n, r = h.shape[:2]
        h = pool_patches(h.reshape(n, r, -1).transpose(1, 2), self.patches, self.grid)  # (N, P', r)
        return self.linear(h.transpose(1, 2).reshape(n, -1))


def cnn1(*, input_shape: tuple[int, ...], output_dim: int, filters: int = 16, size: int = 3, stride: int = 1,
         padding: int = 0, pool: int = 1, activation: str = "relu") -> nn.Module:
    """CNN-1 of Zhang et al. 2017: conv(``filters``, ``size``, ``stride``, ``padding``) → ReLU (or quadratic) →
    average pool ``pool`` → linear; on images (C, H, W) and signals (L,)."""
    return CNN1(input_shape, output_dim, PatchSpec(size, stride, padding, pool), filters, activation)


__all__ = ["CCNN", "CNN1", "PatchFeatures", "PatchSpec", "as_image", "build_ccnn", "cnn1", "extract_patches",
           "logits_from_features", "median_gamma", "patch_grid", "pool_patches", "pooled_positions", "rbf_kernel"]
