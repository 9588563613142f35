"""Surfaces and interpolations: grid layout, store contents, provenance, resume, NaN handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from lossatlas.directions import DirectionSpec
from lossatlas.engine import EvalSpec
from lossatlas.errors import UserInputError
from lossatlas.grid import Axis
from lossatlas.landscape import interpolate, surface
from lossatlas.params import add_scaled, parameters_of
from lossatlas.store import COMPLETED, load_directions, open_surface, prepare_store
from tests.conftest import bn_cnn, make_classification, mlp, plain_metrics

REQUIRED_ATTRS = ["lossatlas_version", "seed", "norm", "ignore", "bn", "model", "checkpoint_sha256", "data",
                  "created"]


def test_axis_parsing() -> None:
    assert Axis.parse("-1:1:5").values().tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    alphas = Axis.parse("-0.5:1.5:41").values()  # the interpolation default: both endpoints exactly
    assert alphas[10] == 0.0 and alphas[30] == 1.0
    for bad in ["1:2", "a:1:3", "1:0:5", "0:1:0", "0:1:2.5", "0:inf:3"]:
        with pytest.raises(UserInputError, match="MIN:MAX:N|larger|at least|finite") as info:
            Axis.parse(bad)
        assert "\n" not in str(info.value)


def test_non_square_2d_grid_matches_pointwise_evaluation(tmp_path, blobs) -> None:
    net = mlp()
    ds = surface(net, blobs, x="-1:1:5", y="-0.5:0.5:3", directions=DirectionSpec(seed=3),
                 eval_spec=EvalSpec(batch_size=32), out=tmp_path / "s.zarr")
    assert ds["train_loss"].dims == ("x", "y") and ds["train_loss"].shape == (5, 3)
    assert set(ds.data_vars) >= {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
    assert bool(ds[COMPLETED].all())
    for key in REQUIRED_ATTRS:
        assert key in ds.attrs, key
    assert ds.attrs["seed"] == 3 and ds.attrs["norm"] == "filter" and ds.attrs["bn"] == "eval"
    dirs = load_directions(tmp_path / "s.zarr")
    assert len(dirs) == 2 and list(dirs[0]) == [n for n, _ in net.named_parameters()]
    theta = parameters_of(net)
    for i, j in [(0, 0), (4, 2), (1, 2), (3, 0)]:
        point = add_scaled(theta, dirs, [float(ds.x[i]), float(ds.y[j])])
        ref = plain_metrics(net, point, blobs)
        for metric, value in ref.items():
            np.testing.assert_allclose(float(ds[metric][i, j]), value, rtol=1e-5)


def test_one_d_surface_and_reopen_round_trip(tmp_path, blobs) -> None:
    ds = surface(mlp(), blobs, x="-1:1:11", out=tmp_path / "c.zarr")
    assert ds["train_loss"].dims == ("x",)
    xr.testing.assert_identical(open_surface(tmp_path / "c.zarr"), ds)
    # direction of the 1D curve = first direction of the 2D surface with the same seed
    surface(mlp(), blobs, x="-1:1:3", y="-1:1:3", out=tmp_path / "p.zarr")
    a, b = load_directions(tmp_path / "c.zarr"), load_directions(tmp_path / "p.zarr")
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])


def test_different_configuration_is_refused_unless_overwrite(tmp_path, blobs) -> None:
    out = tmp_path / "s.zarr"
    surface(mlp(), blobs, x="-1:1:3", out=out)
    with pytest.raises(UserInputError, match="different configuration.*--overwrite"):
        surface(mlp(), blobs, x="-1:1:3", directions=DirectionSpec(seed=1), out=out)
    ds = surface(mlp(), blobs, x="-1:1:3", directions=DirectionSpec(seed=1), out=out, overwrite=True)
    assert ds.attrs["seed"] == 1
    (tmp_path / "notastore").mkdir()
    with pytest.raises(UserInputError, match="not a lossatlas store"):
        surface(mlp(), blobs, x="-1:1:3", out=tmp_path / "notastore")


def test_resume_completes_only_missing_points(tmp_path, blobs) -> None:
    out = tmp_path / "s.zarr"
    full = surface(mlp(), blobs, x="-1:1:4", y="-1:1:3", out=tmp_path / "full.zarr")
    surface(mlp(), blobs, x="-1:1:4", y="-1:1:3", out=out)
    # pretend the run died after two rows: forget rows 2 and 3 and poison their values
    poisoned = xr.Dataset({v: (("x", "y"), np.full((2, 3), 123.0)) for v in full.data_vars if v != COMPLETED})
    poisoned[COMPLETED] = (("x", "y"), np.zeros((2, 3), bool))
    poisoned.to_zarr(out, region={"x": slice(2, 4)}, consolidated=False)
    calls: list[tuple[int, int]] = []
    resumed = surface(mlp(), blobs, x="-1:1:4", y="-1:1:3", out=out, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (6, 12) and calls[-1] == (12, 12)
    for v in full.data_vars:
        np.testing.assert_array_equal(resumed[v].values, full[v].values)


def test_nonfinite_points_are_stored_and_counted(tmp_path) -> None:
    class Exploding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = x[:, :3] @ self.w.T
            return torch.where(self.w.norm() > 4, out * float("nan"), out)

    data = make_classification(classes=2)
    ds = surface(Exploding(), data, x="0:3:7", directions=DirectionSpec(norm="layer"), out=tmp_path / "n.zarr")
    loss = ds["train_loss"].values
    assert np.isnan(loss).sum() == ds.attrs["nonfinite_points"] > 0
    assert np.isfinite(loss[0])
    assert ds.attrs["status"] == "complete"


def test_interpolation_endpoints_are_the_two_models(tmp_path) -> None:
    data = make_classification(image=True)
    a, b = bn_cnn(seed=0), bn_cnn(seed=1)
    ds = interpolate(a, b, data, x="-0.5:1.5:9", out=tmp_path / "i.zarr")
    assert ds["x"].values[2] == 0.0 and ds["x"].values[6] == 1.0
    for alpha_index, net in ((2, a), (6, b)):
        with torch.no_grad():
            ref = torch.nn.functional.cross_entropy(net(data.x_train), data.y_train)
        np.testing.assert_allclose(float(ds["train_loss"][alpha_index]), float(ref), rtol=1e-5)
    assert ds.attrs["kind"] == "interpolation"
    # the stored direction is θ_B − θ_A, BN statistics included
    d = load_directions(tmp_path / "i.zarr")[0]
    torch.testing.assert_close(d["1.running_mean"], b[1].running_mean - a[1].running_mean)


def test_prepare_store_detects_foreign_directory(tmp_path) -> None:
    (tmp_path / "x.zarr").write_text("hello")
    with pytest.raises(UserInputError):
        prepare_store(tmp_path / "x.zarr", {"x": np.arange(3.0)}, ["train_loss"], {"config_hash": "a"}, {"x": 3})


def test_interpolation_flags_extrapolated_nonpositive_bn_variances(tmp_path) -> None:
    """Beyond α ∈ [0, 1] running variances extrapolate linearly; where one is ≤ 0 the value is meaningless (a loss of
    exactly 0, inf or NaN): the store lists those α and the summary notes say so; --bn recompute does not need it."""
    from lossatlas.landscape import nonpositive_variance
    from lossatlas.viz.describe import notes

    a, b = bn_cnn(seed=0), bn_cnn(seed=1)
    with torch.no_grad():
        b[1].running_var.copy_(a[1].running_var * 4)  # B's variance 4× A's: zero at α = −1/3
    data = make_classification(image=True)
    ds = interpolate(a, b, data, x="-1:2:13", out=tmp_path / "i.zarr")
    alphas = ds.x.values
    theta_a = {k: v for k, v in a.state_dict().items() if k.endswith("running_var")}
    dirs = {k: b.state_dict()[k] - v for k, v in theta_a.items()}
    expected = nonpositive_variance(theta_a, dirs, alphas)
    ref = [any(bool(((1 - al) * theta_a[k] + al * b.state_dict()[k] <= 0).any()) for k in theta_a) for al in alphas]
    assert expected.tolist() == ref
    assert expected[:3].all() and not expected[4:9].any()  # α = -1, -0.75, -0.5 (< -1/3) flagged; [0, 1] never
    np.testing.assert_array_equal(ds.attrs["nonpositive_variance_at"], alphas[expected])
    assert any("running variance is <= 0" in n for n in notes(ds.attrs))
    rec = interpolate(a, b, data, x="-1:2:13", out=tmp_path / "r.zarr", eval_spec=EvalSpec(bn="recompute"))
    assert "nonpositive_variance_at" not in rec.attrs and np.isfinite(rec.train_loss.values).all()
