"""lossatlas: a laboratory for the loss landscapes of neural networks.

The public API (everything else is internal; every name is imported lazily, on first use)::

    load_data(spec)                      -> Dataset
    build_model(spec, input_shape=, output_dim=, seed=) -> nn.Module
    load_checkpoint(model, path)         -> a copy of model with the checkpoint's weights
    train(model, data, TrainSpec(...), out)
    surface(model, data, x=, y=, directions=, eval_spec=, out=) -> xarray.Dataset
    interpolate(model_a, model_b, data, x=, out=)               -> xarray.Dataset
    open_surface(path)                   -> xarray.Dataset
    load_directions(path)                -> list[dict[str, Tensor]]
    plot_surface(ds)                     -> matplotlib Figure (oriented like the CLI's plots)
    DirectionSpec, EvalSpec, TrainSpec, Axis, Evaluator
    make_executor(workers=, scheduler=)  -> executor for surface(..., executor=)
    build_report(run_dir, out=)          -> one self-contained HTML page
    train_curve(model_a, model_b, data, CurveSpec(...), out=)    -> xarray.Dataset (Garipov et al. 2018)
    string_sampling(model_a, model_b, data, StringSpec(threshold=...), out=) -> xarray.Dataset (Freeman & Bruna)
    align_weights(model_a, model_b, example_input) -> (B's aligned state dict, permutations) (Ainsworth et al.)
    weight_matching(spec, theta_a, theta_b)          -> permutations
    sublevel_topology(values, coords)    -> xarray.Dataset (components of {L <= λ}, persistence, merge tree)
    trajectory(model, data, run_dir, out=) -> xarray.Dataset (a run's path on its PCA plane, Li et al. 2018)
    trajectory_pca(checkpoints)          -> TrajectoryPCA (Gram-matrix PCA of θᵢ − θ_final)
    PlaneSpec, PCASpec                   -> surface(..., directions=...) through three models / a run's PCA plane
    run_study(name, preset, overrides, seed=, out_dir=) -> StudyResult (rows: published vs measured, verdicts)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_data": "lossatlas.data",
    "Dataset": "lossatlas.data",
    "build_model": "lossatlas.models",
    "load_checkpoint": "lossatlas.params",
    "train": "lossatlas.training",
    "TrainSpec": "lossatlas.training",
    "surface": "lossatlas.landscape",
    "interpolate": "lossatlas.landscape",
    "Axis": "lossatlas.grid",
    "open_surface": "lossatlas.store",
    "load_directions": "lossatlas.store",
    "DirectionSpec": "lossatlas.directions",
    "EvalSpec": "lossatlas.engine",
    "Evaluator": "lossatlas.engine",
    "UserInputError": "lossatlas.errors",
    "make_executor": "lossatlas.execute",
    "build_report": "lossatlas.viz.report",
    "plot_surface": "lossatlas.viz.plot",
    "train_curve": "lossatlas.paths.curves",
    "CurveSpec": "lossatlas.paths.curves",
    "string_sampling": "lossatlas.paths.string",
    "StringSpec": "lossatlas.paths.string",
    "align_weights": "lossatlas.paths.align",
    "weight_matching": "lossatlas.paths.align",
    "sublevel_topology": "lossatlas.paths.topology",
    "trajectory": "lossatlas.paths.trajectory",
    "trajectory_pca": "lossatlas.paths.pca",
    "PCASpec": "lossatlas.paths.pca",
    "PlaneSpec": "lossatlas.directions",
    "run_study": "lossatlas.studies",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lossatlas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
