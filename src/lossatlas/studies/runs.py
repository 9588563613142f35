"""Training runs inside a study cell: a zoo model trained by :func:`lossatlas.training.train` into the cell's folder.

The empirical studies (Goodfellow et al., Li et al., Im et al., the MNIST-1D baselines) train a few real networks
each, so a cell trains with the project's one training loop rather than a batched runner: a run directory per
run under ``DIR/NAME/runs/`` (checkpoints, ``metrics.csv`` with ‖θ‖₂, weight histograms), resumed by ``train``
itself when a study is killed mid-run. What a cell needs back is read from that directory.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lossatlas.data import Dataset, load_data
from lossatlas.models import build_model
from lossatlas.params import load_checkpoint, parameters_of
from lossatlas.training import TrainSpec, checkpoint_path, list_checkpoints, train

SEED_MAX = 2**31 - 1


@lru_cache(maxsize=4)
def study_data(spec: str) -> Dataset:
    """The dataset of a study (built once per process; ``load_data`` caches generated data on disk)."""
    return load_data(spec)


def derived_seeds(seed: int, count: int) -> list[int]:
    """``count`` independent seeds in [0, 2³¹) from one cell seed (``numpy.random.SeedSequence``)."""
    return [int(s) % SEED_MAX for s in np.random.SeedSequence(int(seed)).generate_state(count)]


@dataclass(frozen=True)
class TrainedRun:
    """A finished run: its folder, the untrained template (its init θ₀), the trained model and its log."""

    folder: Path
    initial: nn.Module
    final: nn.Module
    metrics: dict[str, np.ndarray]

    def checkpoint(self, epoch: int) -> Path:
        """The checkpoint file after ``epoch`` epochs (0 = θ₀)."""
        return checkpoint_path(self.folder, epoch)

    def checkpoints(self) -> list[Path]:
        """Every checkpoint of the run, θ₀ first."""
        return list_checkpoints(self.folder)

    def at(self, epoch: int) -> nn.Module:
        """The model after ``epoch`` epochs."""
        return load_checkpoint(self.initial, self.checkpoint(epoch))


def train_run(folder: str | Path, *, model: str, data: Dataset, spec: TrainSpec, init_seed: int,
              device: str = "cpu", provenance: Mapping[str, Any] | None = None) -> TrainedRun:
    """Train ``model`` (a ``zoo:`` or other model spec, initialised from ``init_seed``) into ``folder``.

    A finished run in ``folder`` with the same configuration is read back, an interrupted one resumed
    (:func:`lossatlas.training.train`); the returned models live on the CPU in eval mode.
    """
    folder = Path(folder)
    initial = build_model(model, input_shape=data.input_shape, output_dim=data.output_dim, seed=int(init_seed))
    prov = {"model": model, "data": data.name, "init_seed": int(init_seed), **(provenance or {})}
    train(initial, data, spec, folder, provenance=prov, device=device)
    return read_run(folder, model=model, data=data, init_seed=init_seed, epochs=spec.epochs)


def read_run(folder: str | Path, *, model: str, data: Dataset, init_seed: int, epochs: int) -> TrainedRun:
    """A run :func:`train_run` finished, read back without writing anything (safe from parallel cells)."""
    folder = Path(folder)
    initial = build_model(model, input_shape=data.input_shape, output_dim=data.output_dim, seed=int(init_seed))
    final = load_checkpoint(initial, checkpoint_path(folder, epochs))
    return TrainedRun(folder, initial, final.eval(), read_metrics(folder))


def read_metrics(folder: str | Path) -> dict[str, np.ndarray]:
    """``metrics.csv`` as float64 columns (one row per epoch, epoch 0 = initialisation)."""
    with (Path(folder) / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) if r[k] != "" else np.nan for r in rows]) for k in rows[0]}


def weights(model: nn.Module) -> np.ndarray:
    """All weights of a model (tensors with ≥ 2 dims: biases and BatchNorm scales excluded), flat float64."""
    chosen = [p.detach() for p in model.parameters() if p.dim() >= 2] or [p.detach() for p in model.parameters()]
    return torch.cat([p.reshape(-1).double().cpu() for p in chosen]).numpy()


def parameter_distance(a: nn.Module, b: nn.Module) -> float:
    """‖θ_a − θ_b‖₂ over the parameters."""
    pa, pb = parameters_of(a), parameters_of(b)
    return float(torch.sqrt(sum(((pa[k].double() - pb[k].double()) ** 2).sum() for k in pa)))  # type: ignore[arg-type]


def climbs(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """How far a curve has climbed above its lowest value so far: ``v[j] − min_{i ≤ j} v[i]`` for every j.

    The largest entry is the height of the biggest bump walking along the curve (0 exactly when it never rises),
    whatever the grid spacing: a bump climbed in many small steps counts in full. A non-finite value counts
    as an infinite climb.
    """
    v = np.asarray(values, dtype=np.float64)
    out = v - np.minimum.accumulate(np.where(np.isfinite(v), v, np.inf))
    out[~np.isfinite(v)] = np.inf
    return out


__all__ = ["SEED_MAX", "TrainedRun", "derived_seeds", "parameter_distance", "read_metrics", "read_run", "study_data",
           "train_run", "climbs", "weights"]
