"""Optimisation trajectories on their PCA plane: ``lossatlas trajectory`` (Li et al. 2018, Sec. 7, Fig. 9).

The loss surface around a run's final checkpoint θ_f on the plane of the first two principal directions of
θ_i − θ_f (:mod:`lossatlas.paths.pca`), with the path drawn on it. The store is an ordinary 2D ``surface`` store
(plots, comparison, export and the report work as for any surface) that also holds, on a dimension ``epoch``
(of each checkpoint):

* ``path_x``, ``path_y``: each checkpoint's coordinates in the plane (projection of θ_i − θ_f);
* ``path_residual``: its distance from the plane, beside ``path_distance`` = ‖θ_i − θ_f‖;
* ``path_<metric>``: its metrics *as it is* (its own BatchNorm statistics under ``--bn eval``), beside
  ``path_plane_<metric>``: the metrics at its projection onto the plane (the classic complaint: a path drawn
  on a PCA contour and the losses it went through disagree when the residual is large);
* ``explained_variance_ratio`` on ``component``; attrs ``pca_explained_variance`` (first two),
  ``random_cos_mean`` ± ``random_cos_stderr`` beside ``random_cos_expected`` = √(2/(πn)) (why random
  directions cannot show a path).

The grid is computed by :func:`lossatlas.landscape.surface` (resume, executors and progress as for any surface).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xarray as xr
from torch import nn

from lossatlas.directions import Ignore
from lossatlas.engine import BNPolicy, EvalSpec
from lossatlas.execute import Executor
from lossatlas.grid import Axis, Progress
from lossatlas.landscape import AUTO_POINTS, anchor_axes, surface
from lossatlas.params import float_buffer_names, parameters_of
from lossatlas.paths.pca import model_directions, run_checkpoints, trajectory_pca


def trajectory(model: nn.Module, data: Any, run_dir: str | Path, *, out: str | Path,
               ignore: Ignore | str = Ignore.biasbn, centred: bool = False, x: Axis | str | None = None,
               y: Axis | str | None = None, points: int = AUTO_POINTS, cos_samples: int = 10, seed: int = 0,
               eval_spec: EvalSpec | None = None, overwrite: bool = False, provenance: Mapping[str, Any] | None = None,
               executor: Executor | None = None, progress: Progress | None = None, device: str = "cpu") -> xr.Dataset:
    """The loss surface on a training run's PCA plane, centred at its final checkpoint, with the path.

    Args:
        model: the architecture of the run's checkpoints (its weights are not used).
        data: a :class:`lossatlas.data.Dataset`.
        run_dir: a ``lossatlas train`` run directory (≥ 3 checkpoints).
        ignore: ``biasbn`` leaves 1-D tensors (biases, BatchNorm) out of the PCA (Li et al.); ``none`` keeps them.
        centred: centre the differences before the PCA (Li et al.'s code) instead of the paper's uncentred PCA.
        x, y: grid axes; default: the path's extent with a 25% margin, ``points`` per axis.
        cos_samples, seed: Gaussian directions for the |cos| statistic.

    Returns:
        The store's Dataset (see the module docstring).
    """
    spec = eval_spec or EvalSpec()
    keys = list(parameters_of(model))
    if spec.bn is BNPolicy.states:
        keys += float_buffer_names(model)
    pca = trajectory_pca(run_checkpoints(run_dir), keys, ignore, centred, cos_samples, seed)
    if x is None and y is None:
        x, y = anchor_axes(pca.coords, points)
    anchors = model_directions(pca, run_dir)
    return surface(model, data, x=x, y=y, directions=anchors, eval_spec=spec, out=out, overwrite=overwrite,
                   provenance=provenance, executor=executor, progress=progress, device=device)


def summary_lines(ds: xr.Dataset) -> list[str]:
    """What ``lossatlas trajectory`` prints: explained variance, the |cos| statistic, true vs plane loss."""
    a = ds.attrs
    ratio = a.get("pca_explained_variance", [float("nan")] * 2)
    lines = [f"PCA ({'centred' if a.get('pca_centred') else 'uncentred'}, ignore {a.get('ignore')}): explained "
             f"variance {100 * ratio[0]:.2f}% + {100 * ratio[1]:.2f}% = {100 * sum(ratio):.2f}% of n = "
             f"{a.get('pca_dimension')} coordinates",
             f"random directions vs the path's steps: mean |cos| {a.get('random_cos_mean', float('nan')):.3g} ± "
             f"{a.get('random_cos_stderr', float('nan')):.2g} (sqrt(2/(pi n)) = "
             f"{a.get('random_cos_expected', float('nan')):.3g})"]
    for metric in ("train_loss", "test_loss"):
        if f"path_{metric}" not in ds:
            continue
        true, plane = ds[f"path_{metric}"].values, ds[f"path_plane_{metric}"].values
        worst = int(abs(true - plane).argmax())
        lines.append(f"{metric.replace('_', ' ')} along the path: as is {true[0]:.4g} → {true[-1]:.4g}, on the plane "
                     f"{plane[0]:.4g} → {plane[-1]:.4g}; largest gap {abs(true - plane)[worst]:.3g} at "
                     f"epoch {int(ds['epoch'].values[worst])} (residual {ds['path_residual'].values[worst]:.3g})")
    return lines


__all__ = ["summary_lines", "trajectory"]
