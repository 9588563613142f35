"""The public API names resolve to what the docstring promises and the README's Python snippet works."""

from __future__ import annotations

import inspect

import matplotlib
import pytest

import lossatlas as la

matplotlib.use("Agg")


def test_public_names_resolve_to_functions_and_classes() -> None:
    functions = {"load_data", "build_model", "load_checkpoint", "train", "surface", "interpolate", "open_surface",
                 "load_directions", "plot_surface", "make_executor", "build_report",
                 "train_curve", "string_sampling", "align_weights", "weight_matching", "sublevel_topology",
                 "trajectory", "trajectory_pca", "run_study"}
    classes = {"Dataset", "TrainSpec", "Axis", "DirectionSpec", "EvalSpec", "Evaluator", "UserInputError",
               "CurveSpec", "StringSpec", "PlaneSpec", "PCASpec"}
    assert set(la.__all__) == functions | classes | {"__version__"}
    for name in functions:
        assert inspect.isfunction(getattr(la, name)), name
    for name in classes:
        assert inspect.isclass(getattr(la, name)), name
    with pytest.raises(AttributeError):
        la.not_a_name  # noqa: B018


def test_readme_snippet(tmp_path) -> None:
    data = la.load_data("xor:n=5")
    model = la.build_model("zoo:mlp:widths=4", input_shape=data.input_shape, output_dim=data.output_dim)
    ds = la.surface(model, data, x="-1:1:3", y="-0.2:0.2:5", out=tmp_path / "surface.zarr")
    assert ds.train_loss.dims == ("x", "y") and ds.train_loss.shape == (3, 5)
    dirs = la.load_directions(tmp_path / "surface.zarr")
    assert len(dirs) == 2 and set(dirs[0]) == {n for n, _ in model.named_parameters()}
    # plotted the way the README shows: x along the horizontal axis, like the CLI's plots
    quad = ds.train_loss.plot(x="x", y="y")
    (x0, x1), (y0, y1) = quad.axes.get_xlim(), quad.axes.get_ylim()
    assert x0 <= -1 and x1 >= 1 and -0.5 < y0 <= -0.2 and 0.2 <= y1 < 0.5  # x spans [-1, 1], y [-0.2, 0.2]
    fig = la.plot_surface(ds)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith(("x", "α")) and ax.get_ylabel().startswith(("y", "β"))
