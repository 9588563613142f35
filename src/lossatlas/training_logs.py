"""What a training run logs beside its checkpoints: CSV rows, weight norms, weight histograms, sharpness.

* ``metrics.csv`` columns ``param_norm`` (‖θ‖₂ over every parameter) and ``norm:<name>`` (per tensor): Li et al.
  2018 (Fig. 2 b, e) watch ‖θ‖₂ grow without weight decay;
* ``weight_histograms.npz``: per saved checkpoint, counts of the *weights* (tensors with ≥ 2 dims: biases and
  BatchNorm scales excluded, all parameters if a model has no such tensor) over fixed bins chosen at
  initialisation (±3 max|w₀|, 100 bins) plus the counts below and above them (Li et al. 2018, Fig. 2 c, f: small
  batches give more large weights without weight decay, more small weights with it). Arrays: ``epochs (k,)``,
  ``edges (101,)``, ``counts (k, 100)``, ``below (k,)``, ``above (k,)``;
* ``sharpness.csv``: λmax of the training loss (certified Lanczos on a fixed subset) every K steps beside 2/lr.

Every writer is atomic (a temporary file, then rename), so a killed run never leaves half a file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

HISTOGRAMS = "weight_histograms.npz"
SHARPNESS = "sharpness.csv"
HISTOGRAM_BINS = 100
HISTOGRAM_RANGE = 3.0
"""Bins span ± this many times the largest |weight| at initialisation."""
SHARPNESS_TOL = 1e-3
SHARPNESS_MAX_MATVECS = 200


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file (``[]`` if it does not exist)."""
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def write_rows(path: Path, fields: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Replace ``path`` atomically with a header and ``rows`` (missing cells left empty)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def append_rows(path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str] | None = None) -> None:
    """Append ``rows``; a missing or empty file gets a header first (``fields``, default the first row's keys)."""
    if not path.exists() or path.stat().st_size == 0:
        write_rows(path, list(fields or rows[0]), rows)
        return
    with path.open(newline="") as fh:
        header = next(csv.reader(fh))
    with path.open("a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=header, extrasaction="ignore").writerows(rows)


def norm_columns(model: nn.Module) -> list[str]:
    """The norm columns of ``metrics.csv``: ``param_norm`` then ``norm:<name>`` per parameter tensor."""
    return ["param_norm", *(f"norm:{name}" for name, _ in model.named_parameters())]


def weights_of(model: nn.Module) -> Tensor:
    """All weights (parameters with ≥ 2 dims; every parameter if there is none) as one flat float64 vector."""
    params = [p.detach() for p in model.parameters()]
    chosen = [p for p in params if p.dim() >= 2] or params
    return torch.cat([p.reshape(-1).double().cpu() for p in chosen])


def read_histograms(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of ``weight_histograms.npz`` (None if there is none)."""
    if not path.exists():
        return None
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def append_histogram(path: Path, epoch: int, model: nn.Module) -> None:
    """Add the weight histogram of ``model`` after ``epoch`` epochs; the bins are fixed by the first call."""
    w = weights_of(model).numpy()
    old = read_histograms(path)
    if old is None:
        bound = HISTOGRAM_RANGE * float(np.abs(w).max()) or 1.0
        edges = np.linspace(-bound, bound, HISTOGRAM_BINS + 1)
        old = {"epochs": np.zeros(0, np.int64), "edges": edges, "counts": np.zeros((0, HISTOGRAM_BINS), np.int64),
               "below": np.zeros(0, np.int64), "above": np.zeros(0, np.int64)}
    edges = old["edges"]
    counts, _ = np.histogram(w, bins=edges)
    keep = old["epochs"] != epoch
    _save_npz(path, {"epochs": np.append(old["epochs"][keep], epoch), "edges": edges,
                     "counts": np.vstack([old["counts"][keep], counts[None]]),
                     "below": np.append(old["below"][keep], int((w < edges[0]).sum())),
                     "above": np.append(old["above"][keep], int((w > edges[-1]).sum()))})


def trim_histograms(path: Path, max_epoch: int) -> None:
    """Drop histograms of epochs after ``max_epoch`` (a resumed run repeats them); ``max_epoch < 0`` deletes all."""
    old = read_histograms(path)
    if old is None:
        return
    if max_epoch < 0:
        path.unlink()
        return
    keep = old["epochs"] <= max_epoch
    if not keep.all():
        _save_npz(path, {"epochs": old["epochs"][keep], "edges": old["edges"], "counts": old["counts"][keep],
                         "below": old["below"][keep], "above": old["above"][keep]})


def sharpness_row(model: nn.Module, data: Any, *, loss: str, batch_size: int, samples: int, seed: int, lr: float,
                  optimizer: str, step: int, epoch: int, device: str) -> dict[str, Any]:
    """λmax of the training loss at the model's current weights (BN in eval mode with its running statistics),
    on a fixed stratified subset of ``samples`` training samples (seed ``seed``; all of them if there are no more),
    by certified thick-restart Lanczos (:mod:`lossatlas.curvature.krylov`), beside 2/``lr`` of the ``optimizer``
    in use. Plain arguments rather than the ``TrainSpec``, so that this module does not import the training loop
    that imports it."""
    from lossatlas.batch import num_rows
    from lossatlas.curvature.hvp import HessianOperator
    from lossatlas.engine import EvalSpec, Evaluator
    from lossatlas.errors import NonFiniteError

    n_train = num_rows(data.split("train")[0])
    subset = samples if samples < n_train else None
    evaluator = Evaluator(model, data, EvalSpec(loss=loss, batch_size=batch_size, splits=("train",), subset=subset,
                                                subset_seed=seed), device=device)
    row = {"step": step, "epoch": epoch, "lambda_max": float("nan"), "residual": float("nan"), "converged": 0,
           "matvecs": 0, "optimizer": optimizer, "lr": lr, "two_over_lr": 2.0 / lr}
    try:
        result = HessianOperator(evaluator).eigenpairs(1, "largest", tol=SHARPNESS_TOL,
                                                       max_matvecs=SHARPNESS_MAX_MATVECS, seed=seed)
    except NonFiniteError:  # a diverged run: log NaN and let training (and its own log) go on
        return row
    return {**row, "lambda_max": float(result.eigenvalues[0]), "residual": float(result.residuals[0]),
            "converged": int(bool(result.converged[0])), "matvecs": result.matvecs}
