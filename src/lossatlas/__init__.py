"""lossatlas: a laboratory for the loss landscapes of neural networks.

The public API (everything else is internal)::

    load_data(spec)                      -> Dataset
    build_model(spec, input_shape=, output_dim=, seed=) -> nn.Module
    train(model, data, TrainSpec(...), out)
    surface(model, data, x=, y=, directions=, eval_spec=, out=) -> xarray.Dataset
    interpolate(model_a, model_b, data, x=, out=)               -> xarray.Dataset
    open_surface(path)                   -> xarray.Dataset
    load_directions(path)                -> list[dict[str, Tensor]]
    DirectionSpec, EvalSpec, TrainSpec, Axis, Evaluator
    make_executor(workers=, scheduler=)  -> executor for surface(..., executor=)
    build_report(run_dir, out=)          -> one self-contained HTML page

``surface`` and ``train`` are functions here even though submodules of the same name exist; they are bound
eagerly so that importing the submodules cannot shadow them. Other names are imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from lossatlas.surface import interpolate, surface  # noqa: E402
from lossatlas.train import TrainSpec, train  # noqa: E402

_EXPORTS = {
    "load_data": "lossatlas.data",
    "Dataset": "lossatlas.data",
    "build_model": "lossatlas.models",
    "Axis": "lossatlas.surface",
    "open_surface": "lossatlas.store",
    "load_directions": "lossatlas.store",
    "DirectionSpec": "lossatlas.directions",
    "EvalSpec": "lossatlas.evaluate",
    "Evaluator": "lossatlas.evaluate",
    "UserInputError": "lossatlas.errors",
    "make_executor": "lossatlas.execute",
    "build_report": "lossatlas.report",
}

__all__ = ["__version__", "interpolate", "surface", "train", "TrainSpec", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lossatlas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
