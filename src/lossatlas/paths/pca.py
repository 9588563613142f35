"""The PCA plane of an optimisation trajectory (Li, Xu, Taylor, Studer & Goldstein 2018, Sec. 7), via the Gram matrix.

Random directions are nearly orthogonal to an optimisation path in high dimension (for a Gaussian direction
and a fixed step in R^n, E|cos| = Γ(n/2) / (√π Γ((n+1)/2)) ≈ √(2/(πn))), so a path projected on a random plane
barely moves. Li et al. instead take the matrix of differences to the final point,

    M = [θ₀ − θ_f; θ₁ − θ_f; …; θ_{n−2} − θ_f]    (one row per checkpoint but the last, θ_f),

and plot the loss on the plane through θ_f spanned by its first two principal directions. Their paper applies
PCA to M itself (uncentred, the default here); their code (``sklearn.decomposition.PCA``) subtracts the row mean
first (``centred=True`` here).

Everything is computed from the m×m Gram matrix G = M Mᵀ (or J G J, J = I − 11ᵀ/m, when centred), never a
d×d covariance: with G = U Λ Uᵀ and w_j = J u_j (u_j when uncentred),

    v_j = Mᵀ w_j / √λ_j   (unit, orthogonal),    coordinates c_ij = (G w_j)_i / √λ_j,

and the checkpoints are read one tensor slice at a time (safetensors are memory-mapped), so many checkpoints
of a large model never sit in memory together. Explained-variance ratios are λ_j / Σλ; a checkpoint's
off-plane residual is ‖(θ_i − θ_f) − Σ_j c_ij v_j‖ over *every* tensor (tensors left out of the PCA by
``ignore`` count entirely as off-plane).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lossatlas.directions import Ignore, ModelDirections, _as_enum
from lossatlas.errors import UserInputError
from lossatlas.params import ParamDict, file_sha256, read_state_dict
from lossatlas.training import list_checkpoints

CHUNK_ELEMENTS = 1 << 23
"""Largest (checkpoints × slice) block read at once, in elements (64 MiB in float64)."""


class CheckpointStack:
    """n checkpoint files read tensor slice by tensor slice: ``rows(key, start, stop)`` → ``(n, stop − start, …)``.

    Safetensors files are opened lazily (memory-mapped, only the slice is read); other files (``.pt``) are
    loaded once and kept.
    """

    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths = [Path(p) for p in paths]
        for p in self.paths:
            if not p.is_file():
                raise UserInputError(f"checkpoint '{p}' does not exist; pass the path of a .safetensors or .pt file")
        self._loaded: dict[int, dict[str, Tensor]] = {}
        self.shapes = self._shapes_of(0)
        for i, p in enumerate(self.paths[1:], start=1):
            other = self._shapes_of(i)
            for k, shape in self.shapes.items():
                if other.get(k) != shape:
                    got = f"shape {other[k]}" if k in other else "no such tensor"
                    raise UserInputError(f"checkpoint '{p}' has {got} for '{k}' but '{self.paths[0]}' has shape "
                                         f"{shape}; every checkpoint of a trajectory must share one architecture")

    def _state(self, i: int) -> dict[str, Tensor]:
        """A non-safetensors checkpoint, loaded once."""
        if i not in self._loaded:
            self._loaded[i] = read_state_dict(self.paths[i])
        return self._loaded[i]

    def _shapes_of(self, i: int) -> dict[str, tuple[int, ...]]:
        if self.paths[i].suffix != ".safetensors":
            return {k: tuple(t.shape) for k, t in self._state(i).items()}
        from safetensors import safe_open

        try:
            with safe_open(str(self.paths[i]), framework="pt") as fh:
                return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
        except Exception as exc:  # noqa: BLE001 - SafetensorError's home moved between releases
            raise UserInputError(f"checkpoint '{self.paths[i]}' is not a readable safetensors file ({exc})") from None

    def __len__(self) -> int:
        return len(self.paths)

    def rows(self, key: str, start: int, stop: int) -> Tensor:
        """``(n, stop − start, …)`` float64: rows ``start:stop`` (first dim) of ``key`` in every checkpoint; a
        0-d tensor is read whole as ``(n, 1)``."""
        parts = []
        for i, p in enumerate(self.paths):
            if p.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(p), framework="pt") as fh:
                    t = fh.get_tensor(key) if not self.shapes[key] else fh.get_slice(key)[start:stop]
            else:
                t = self._state(i)[key]
                t = t if t.dim() == 0 else t[start:stop]
            parts.append(t.reshape(1, -1).double())
        return torch.cat(parts)

    def blocks(self, key: str) -> Iterator[tuple[int, int]]:
        """Row ranges of ``key`` such that one block of all checkpoints has at most :data:`CHUNK_ELEMENTS`."""
        shape = self.shapes[key]
        if not shape:
            yield 0, 1
            return
        per_row = max(1, math.prod(shape[1:])) * len(self)
        step = max(1, CHUNK_ELEMENTS // per_row)
        for start in range(0, shape[0], step):
            yield start, min(start + step, shape[0])


@dataclass(frozen=True)
class TrajectoryPCA:
    """PCA of a trajectory (see the module docstring). Arrays over the n checkpoints in training order.

    Attributes:
        checkpoints, epochs: the files and their epochs (from ``epoch_NNNN`` names, else their index).
        directions: the first two principal directions ``(v₁, v₂)``: unit, orthogonal, float64 dicts over the
            keys asked for (zero on tensors left out by ``ignore``).
        coords: ``(n, 2)`` plane coordinates of θ_i − θ_f (the final checkpoint is at (0, 0)).
        residuals: ``(n,)`` distances of the checkpoints from the plane through θ_f.
        distances: ``(n,)`` ‖θ_i − θ_f‖.
        explained_variance_ratio: ``(n − 1,)`` λ_j / Σλ, descending.
        dimension: number of coordinates the PCA saw (after ``ignore``).
        cos_mean: mean |cos| between ``cos_samples`` Gaussian directions (seeded) and the path's steps
            θ_{i+1} − θ_i; ``cos_stderr`` its standard error across directions.
        cos_expected: √(2/(π · dimension)) (Li et al.); ``cos_exact`` = Γ(n/2) / (√π Γ((n+1)/2)).
    """

    checkpoints: tuple[Path, ...]
    epochs: np.ndarray
    directions: tuple[ParamDict, ParamDict]
    coords: np.ndarray
    residuals: np.ndarray
    distances: np.ndarray
    explained_variance_ratio: np.ndarray
    singular_values: np.ndarray
    dimension: int
    centred: bool
    ignore: Ignore
    cos_mean: float
    cos_stderr: float
    cos_expected: float
    cos_exact: float
    cos_samples: int
    seed: int


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoints of a ``lossatlas train`` run directory in training order; one-line error if fewer than 3."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserInputError(f"run directory '{run}' does not exist; pass the --out of lossatlas train")
    ckpts = list_checkpoints(run)
    if len(ckpts) < 3:
        raise UserInputError(f"run directory '{run}' has {len(ckpts)} checkpoints in checkpoints/; a trajectory "
                             "needs at least 3 (train more epochs or a smaller --save-every)")
    return ckpts


def checkpoint_epoch(path: Path, index: int) -> int:
    """The epoch in an ``epoch_NNNN`` file name, else ``index``."""
    match = re.search(r"epoch_(\d+)", path.name)
    return int(match.group(1)) if match else index


def expected_abs_cos(n: int) -> tuple[float, float]:
    """E|cos(r, s)| for a Gaussian r and a fixed s in R^n: ``(√(2/(πn)), exact Γ(n/2) / (√π Γ((n+1)/2)))``."""
    exact = math.exp(math.lgamma(n / 2) - math.lgamma((n + 1) / 2)) / math.sqrt(math.pi)
    return math.sqrt(2.0 / (math.pi * n)), exact


def trajectory_pca(checkpoints: Sequence[str | Path], keys: Sequence[str] | None = None,
                   ignore: Ignore | str = Ignore.biasbn, centred: bool = False, cos_samples: int = 10,
                   seed: int = 0) -> TrajectoryPCA:
    """PCA of θ_i − θ_f over checkpoints in training order (the last is θ_f), via the Gram matrix.

    Args:
        checkpoints: ≥ 3 files (safetensors read slice by slice; ``.pt`` loaded whole).
        keys: tensors that make up θ (default: every tensor of the first file).
        ignore: ``biasbn`` leaves tensors with ≤ 1 dim out of the PCA (zero in the directions; Li et al.).
        centred: subtract the mean difference before the PCA (what Li et al.'s code does via scikit-learn).
        cos_samples: Gaussian directions (``torch.Generator`` seeded by ``seed``) for the |cos| statistic.
    """
    ignore = Ignore(_as_enum(Ignore, ignore, "--ignore"))
    if len(checkpoints) < 3:
        raise UserInputError(f"a trajectory needs at least 3 checkpoints, got {len(checkpoints)}")
    if cos_samples < 1:
        raise UserInputError(f"the |cos| statistic needs at least one random direction, got {cos_samples}")
    stack = CheckpointStack(checkpoints)
    keys = list(keys) if keys is not None else list(stack.shapes)
    missing = [k for k in keys if k not in stack.shapes]
    if missing:
        raise UserInputError(f"checkpoint '{stack.paths[0]}' has no tensor '{missing[0]}'; the checkpoints must "
                             "belong to the model given by --model")
    pca_keys = [k for k in keys if not (ignore is Ignore.biasbn and len(stack.shapes[k]) <= 1)]
    if not pca_keys:
        raise UserInputError("--ignore biasbn leaves no tensor with 2 or more dimensions; use --ignore none")
    n = len(stack)
    m = n - 1
    gram = torch.zeros(m, m, dtype=torch.float64)
    off_plane = torch.zeros(n, dtype=torch.float64)  # squared distance on tensors left out of the PCA
    generator = torch.Generator().manual_seed(seed)
    dots = torch.zeros(cos_samples, n - 1, dtype=torch.float64)
    r_norm2 = torch.zeros(cos_samples, dtype=torch.float64)
    s_norm2 = torch.zeros(n - 1, dtype=torch.float64)
    for key in keys:  # pass 1: Gram matrix, |cos| sums, off-plane distances of ignored tensors
        for start, stop in stack.blocks(key):
            x = stack.rows(key, start, stop)
            diff = x - x[-1]
            if key not in pca_keys:
                off_plane += (diff ** 2).sum(dim=1)
                continue
            gram += diff[:-1] @ diff[:-1].T
            steps = x[1:] - x[:-1]
            r = torch.randn(cos_samples, x.shape[1], generator=generator, dtype=torch.float64)
            dots += r @ steps.T
            r_norm2 += (r ** 2).sum(dim=1)
            s_norm2 += (steps ** 2).sum(dim=1)
    target = gram
    if centred:
        centring = torch.eye(m, dtype=torch.float64) - 1.0 / m
        target = centring @ gram @ centring
    lam, u = torch.linalg.eigh((target + target.T) / 2)
    lam, u = lam.flip(0).clamp_min(0.0), u.flip(1)
    if lam[0] <= 0 or lam[1] <= 1e-12 * lam[0]:
        raise UserInputError(f"the {n} checkpoints span fewer than two directions (after --ignore {ignore.value}); "
                             "a PCA plane needs a path that turns")
    w = u[:, :2] - (u[:, :2].mean(dim=0) if centred else 0.0)
    sigma = lam[:2].sqrt()
    coords_m = (gram @ w) / sigma  # (m, 2)
    pivot = [int(torch.argmax(coords_m[:, j].abs())) if abs(float(coords_m[0, j])) < 1e-12 * float(sigma[j])
             else 0 for j in range(2)]
    signs = torch.tensor([1.0 if coords_m[pivot[j], j] >= 0 else -1.0 for j in range(2)], dtype=torch.float64)
    w, coords_m = w * signs, coords_m * signs  # the initial point gets positive coordinates
    coords = torch.cat([coords_m, torch.zeros(1, 2, dtype=torch.float64)])
    directions: tuple[ParamDict, ParamDict] = ({}, {})
    residual2 = off_plane.clone()
    for key in keys:  # pass 2: the directions v_j = Mᵀ w_j / σ_j and the exact residuals
        shape = stack.shapes[key]
        if key not in pca_keys:
            for d in directions:
                d[key] = torch.zeros(shape, dtype=torch.float64)
            continue
        pieces: list[list[Tensor]] = [[], []]
        for start, stop in stack.blocks(key):
            x = stack.rows(key, start, stop)
            diff = x[:-1] - x[-1]
            v = (w.T @ diff) / sigma[:, None]  # (2, block)
            residual2[:-1] += ((diff - coords_m @ v) ** 2).sum(dim=1)
            for j in range(2):
                pieces[j].append(v[j])
        for j in range(2):
            directions[j][key] = torch.cat(pieces[j]).reshape(shape)
    distances2 = off_plane.clone()
    distances2[:-1] += gram.diagonal()
    cos = dots.abs() / (r_norm2.sqrt()[:, None] * s_norm2.sqrt()[None, :])
    cos = cos[:, s_norm2 > 0]
    per_direction = cos.mean(dim=1)
    dimension = sum(math.prod(stack.shapes[k]) for k in pca_keys)
    expected, exact = expected_abs_cos(dimension)
    total = float(lam.sum())
    paths = tuple(stack.paths)
    return TrajectoryPCA(
        checkpoints=paths, epochs=np.array([checkpoint_epoch(p, i) for i, p in enumerate(paths)]),
        directions=directions, coords=coords.numpy(), residuals=residual2.clamp_min(0).sqrt().numpy(),
        distances=distances2.sqrt().numpy(), explained_variance_ratio=(lam / total).numpy(),
        singular_values=lam.sqrt().numpy(), dimension=dimension, centred=centred, ignore=ignore,
        cos_mean=float(per_direction.mean()) if cos.numel() else float("nan"),
        cos_stderr=float(per_direction.std() / math.sqrt(cos_samples)) if cos_samples > 1 else float("nan"),
        cos_expected=expected, cos_exact=exact, cos_samples=cos_samples, seed=seed)


@dataclass(frozen=True)
class PCASpec:
    """``pca:RUN_DIR``: the PCA plane of a training run, centred at its final checkpoint (Li et al. 2018).

    Passed as ``surface(..., directions=PCASpec(run_dir))``; the surface then also stores the path (each
    checkpoint's plane coordinates, residual, true loss and plane loss) and the PCA's statistics.
    """

    run_dir: Path
    ignore: Ignore = Ignore.biasbn
    centred: bool = False
    cos_samples: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        object.__setattr__(self, "ignore", _as_enum(Ignore, self.ignore, "--ignore"))

    @classmethod
    def parse(cls, text: str, **kwargs: Any) -> PCASpec:
        """``"pca:RUN_DIR"`` → ``PCASpec(RUN_DIR, **kwargs)``."""
        run = text.split(":", 1)[1] if text.startswith("pca:") else ""
        if not run:
            raise UserInputError(f"--directions pca needs a run directory: pca:RUN_DIR, got '{text}'")
        return cls(Path(run), **kwargs)

    @property
    def centre(self) -> Path:
        """The final checkpoint θ_f (origin of the plane)."""
        return run_checkpoints(self.run_dir)[-1]

    def build(self, theta: Mapping[str, Tensor]) -> ModelDirections:
        """The PCA directions over θ's keys, with the path as anchors."""
        return model_directions(trajectory_pca(run_checkpoints(self.run_dir), list(theta), self.ignore,
                                               self.centred, self.cos_samples, self.seed), self.run_dir)


def model_directions(pca: TrajectoryPCA, run_dir: Path | str) -> ModelDirections:
    """A :class:`TrajectoryPCA` as the directions of a surface: inputs in ``attrs`` (hashed), results in
    ``results`` (explained variance, |cos| statistic), the checkpoints as the path's anchors."""
    attrs = {"directions": f"pca:{run_dir}", "norm": "unit", "ignore": pca.ignore.value, "seed": pca.seed,
             "pca_centred": pca.centred, "pca_cos_samples": pca.cos_samples,
             "pca_checkpoints_sha256": file_sha256_list(pca.checkpoints)}
    ratio = pca.explained_variance_ratio
    results = {"pca_explained_variance": [float(v) for v in ratio[:2]],
               "pca_explained_variance_total": float(ratio[:2].sum()), "pca_dimension": pca.dimension,
               "random_cos_mean": pca.cos_mean, "random_cos_stderr": pca.cos_stderr,
               "random_cos_expected": pca.cos_expected, "random_cos_exact": pca.cos_exact}
    return ModelDirections("pca", pca.directions, pca.checkpoints[-1], pca.checkpoints, pca.epochs, pca.coords,
                           pca.residuals, attrs, results, {"distance": pca.distances},
                           {"explained_variance_ratio": ("component", ratio)})


def file_sha256_list(paths: Sequence[Path]) -> str:
    """One hash over the contents of several files, in order."""
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        h.update(file_sha256(p).encode())
    return h.hexdigest()


__all__ = ["CheckpointStack", "PCASpec", "TrajectoryPCA", "checkpoint_epoch", "expected_abs_cos",
           "model_directions", "run_checkpoints", "trajectory_pca"]
