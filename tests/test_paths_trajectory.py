"""Trajectories on their PCA plane (Li et al. 2018) and the plane through three models (Garipov et al. 2018).

References: a synthetic trajectory that lies in a known plane (exact answers), numpy's SVD of the stacked
differences of a real run, the exact E|cos| of a Gaussian direction, and a plain nn.Module forward pass for every
loss the store reports."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lossatlas.data import load_data
from lossatlas.directions import PlaneSpec, plane_directions
from lossatlas.engine import BNPolicy, EvalSpec
from lossatlas.errors import UserInputError
from lossatlas.grid import Axis, PointTask
from lossatlas.landscape import anchor_axes, surface
from lossatlas.models import build_model
from lossatlas.params import read_state_dict
from lossatlas.paths import pca as pca_module
from lossatlas.paths.pca import PCASpec, expected_abs_cos, trajectory_pca
from lossatlas.paths.trajectory import trajectory
from lossatlas.store import load_directions, open_surface
from lossatlas.training import TrainSpec, checkpoint_path, list_checkpoints, train
from tests.conftest import bn_cnn, make_classification, mlp

MODEL = "zoo:mlp:widths=12"


def plain_loss(model: torch.nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    """The reference: load the tensors into the module, one plain eval-mode forward over the whole split."""
    net = copy.deepcopy(model)
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        out = net(x)
    return float(torch.nn.functional.cross_entropy(out.double(), y))


def synthetic_run(tmp_path: Path, seed: int = 0, steps: int = 7) -> tuple[Path, dict[str, Any]]:
    """θᵢ = θ_f + aᵢ u + bᵢ v (float64 checkpoints) for orthonormal u, v over the weights; biases fixed."""
    g = torch.Generator().manual_seed(seed)
    final = {k: v.double() for k, v in mlp().state_dict().items()}
    weights = [k for k, v in final.items() if v.dim() >= 2]
    n = sum(final[k].numel() for k in weights)
    q, _ = torch.linalg.qr(torch.randn(n, 2, generator=g, dtype=torch.float64))
    ab = torch.randn(steps - 1, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0])
    ab = torch.cat([ab, torch.zeros(1, 2, dtype=torch.float64)])
    run = tmp_path / "synthetic"
    for i in range(steps):
        flat = q @ ab[i]
        state, offset = {}, 0
        for k, v in final.items():
            if k in weights:
                state[k] = v + flat[offset:offset + v.numel()].reshape(v.shape)
                offset += v.numel()
            else:
                state[k] = v.clone()
        path = checkpoint_path(run, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path))
    return run, {"q": q, "ab": ab, "weights": weights, "final": final}


@pytest.mark.parametrize("centred", [False, True])
def test_pca_recovers_a_trajectory_that_lies_in_a_plane(tmp_path, monkeypatch, centred) -> None:
    run, truth = synthetic_run(tmp_path)
    monkeypatch.setattr(pca_module, "CHUNK_ELEMENTS", 40)  # many row blocks per tensor: the chunked reads agree
    pca = trajectory_pca(list_checkpoints(run), centred=centred)
    np.testing.assert_allclose(pca.explained_variance_ratio[:2].sum(), 1.0, atol=1e-12)
    np.testing.assert_allclose(pca.residuals, 0.0, atol=1e-10)
    np.testing.assert_allclose(pca.distances, truth["ab"].norm(dim=1).numpy(), rtol=1e-12)
    # the plane: both directions lie in span(u, v), are unit and orthogonal
    v = np.stack([np.concatenate([d[k].numpy().ravel() for k in truth["weights"]]) for d in pca.directions])
    q = truth["q"].numpy()
    np.testing.assert_allclose(v @ v.T, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(q.T @ v.T, axis=0), 1.0, atol=1e-12)
    # the coordinates are the known ones in the recovered basis: (a, b) = R c with R = Qᵀ V orthogonal
    rotation = q.T @ v.T
    np.testing.assert_allclose(pca.coords @ rotation.T, truth["ab"].numpy(), atol=1e-10)
    assert all(float(d[k].abs().max()) == 0.0 for d in pca.directions for k in d if k not in truth["weights"])
    assert pca.coords[0, 0] > 0 and pca.coords[0, 1] > 0  # sign convention: the initial point is positive


def test_random_directions_are_nearly_orthogonal_to_the_path(tmp_path) -> None:
    """E|cos| of a Gaussian direction with a fixed step is Γ(n/2)/(√π Γ((n+1)/2)) ≈ √(2/(πn)) (Li et al.)."""
    run, _ = synthetic_run(tmp_path)
    pca = trajectory_pca(list_checkpoints(run), cos_samples=400, seed=3)
    expected, exact = expected_abs_cos(pca.dimension)
    assert pca.dimension == 6 * 8 + 8 * 8 + 8 * 3
    assert expected == pytest.approx(math.sqrt(2 / (math.pi * 136))) and abs(exact - expected) < 0.01 * exact
    assert pca.cos_stderr < 0.1 * exact
    assert abs(pca.cos_mean - exact) < 4 * pca.cos_stderr


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    data = load_data("mnist1d:n=400")
    net = build_model(MODEL, input_shape=data.input_shape, output_dim=data.output_dim, seed=0)
    run = tmp_path_factory.mktemp("mnist") / "run"
    train(net, data, TrainSpec(epochs=3, batch_size=40, lr=0.1, seed=0), run)
    return run, data


@pytest.mark.parametrize("centred", [False, True])
def test_pca_of_a_real_run_matches_numpy_svd(mnist_run, centred) -> None:
    run, _ = mnist_run
    states = [read_state_dict(p) for p in list_checkpoints(run)]
    weights = [k for k, v in states[0].items() if v.dim() >= 2]
    flat = np.stack([np.concatenate([s[k].double().numpy().ravel() for k in weights]) for s in states])
    diffs = flat[:-1] - flat[-1]
    _, s, vt = np.linalg.svd(diffs - diffs.mean(axis=0) if centred else diffs, full_matrices=False)
    pca = trajectory_pca(list_checkpoints(run), centred=centred)
    np.testing.assert_allclose(pca.explained_variance_ratio, s ** 2 / (s ** 2).sum(), atol=1e-10)
    signs = np.sign(diffs[0] @ vt[:2].T)
    coords = np.vstack([diffs @ vt[:2].T * signs, np.zeros((1, 2))])
    np.testing.assert_allclose(pca.coords, coords, rtol=1e-8, atol=1e-10)
    v = np.stack([np.concatenate([d[k].numpy().ravel() for k in weights]) for d in pca.directions])
    np.testing.assert_allclose(v, vt[:2] * signs[:, None], atol=1e-8)
    # residual over every tensor: the weights' off-plane part and the whole change of the biases
    rest = np.stack([np.concatenate([st[k].double().numpy().ravel() for k in st if k not in weights])
                     for st in states])
    off = np.sqrt(np.sum((np.vstack([diffs, np.zeros_like(flat[:1])]) - coords @ v) ** 2, axis=1)
                  + np.sum((rest - rest[-1]) ** 2, axis=1))
    np.testing.assert_allclose(pca.residuals, off, rtol=1e-8, atol=1e-10)
    assert pca.explained_variance_ratio[:2].sum() > 0.9


def test_trajectory_store_true_and_plane_losses_against_plain_modules(mnist_run, tmp_path) -> None:
    run, data = mnist_run
    net = build_model(MODEL, input_shape=data.input_shape, output_dim=data.output_dim, seed=5)
    ds = trajectory(net, data, run, out=tmp_path / "t.zarr", points=3, provenance={"model": MODEL})
    assert ds.attrs["status"] == "complete" and ds.attrs["directions"] == f"pca:{run}"
    ckpts = list_checkpoints(run)
    x, y = data.split("train")
    final = read_state_dict(ckpts[-1])
    dirs = load_directions(tmp_path / "t.zarr")
    for i, path in enumerate(ckpts):
        state = read_state_dict(path)
        assert ds["path_train_loss"].values[i] == pytest.approx(plain_loss(net, state, x, y), abs=1e-6)
        cx, cy = ds["path_x"].values[i], ds["path_y"].values[i]
        projected = {k: (final[k].double() + cx * dirs[0][k].double() + cy * dirs[1][k].double()).float()
                     for k in final}
        assert ds["path_plane_train_loss"].values[i] == pytest.approx(plain_loss(net, projected, x, y), abs=1e-5)
    assert list(ds["epoch"].values) == [0, 1, 2, 3]
    # the grid spans the path with a margin; the centre is the final checkpoint
    assert ds.x.min() < ds.path_x.min() and ds.x.max() > ds.path_x.max() >= 0
    # drawn: on the static contour and on the report's contour, with the PCA numbers in their own section
    from lossatlas.viz.plot import PlotKind, figure_2d
    from lossatlas.viz.report.builder import collect_sections

    fig = figure_2d(ds, "train_loss", PlotKind.contour)
    (line,) = [ln for ln in fig.axes[0].lines if ln.get_label() == "path"]
    np.testing.assert_array_equal(line.get_xdata(), ds.path_x.values)
    sections, _, problems = collect_sections(tmp_path, strict=True)
    assert not problems
    (numbers,) = [sec for sec in sections if sec.title.startswith("Trajectory on its PCA plane")]
    assert "explained variance" in numbers.html and "√(2/(πn))" in numbers.html
    (surf,) = [sec for sec in sections if sec.title.startswith("2D loss surface")]
    contour = next(f for f in surf.figures if f.layout.title.text == "train loss")
    (trace,) = [t for t in contour.data if t.name == "path"]
    np.testing.assert_array_equal(trace.y, ds.path_y.values)
    again = surface(net, data, x=Axis.parse(ds.attrs["x"]), y=Axis.parse(ds.attrs["y"]),
                    directions=PCASpec(run), out=tmp_path / "s.zarr", provenance={"model": MODEL})
    np.testing.assert_array_equal(again["train_loss"].values, ds["train_loss"].values)


def three_models(tmp_path: Path, make: Any, data: Any, bn: bool = False) -> list[Path]:
    files = []
    for seed in range(3):
        net = make(seed=seed)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        if bn:  # distinct BN statistics per model
            state = {k: (v * (1 + 0.1 * seed) if "running" in k else v) for k, v in state.items()}
        files.append(tmp_path / f"m{seed}.safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, str(files[-1]))
    return files


@pytest.mark.parametrize("bn", [BNPolicy.eval, BNPolicy.states])
def test_plane_through_three_models_reproduces_their_losses(tmp_path, bn) -> None:
    data = make_classification(image=bn is BNPolicy.states)
    make = bn_cnn if bn is BNPolicy.states else mlp
    files = three_models(tmp_path, make, data, bn=bn is BNPolicy.states)
    spec = PlaneSpec.parse("plane:" + ",".join(map(str, files)))
    x, y = data.split("train")
    ref = [plain_loss(make(), read_state_dict(f), x, y) for f in files]
    ds = surface(make(seed=9), data, directions=spec, eval_spec=EvalSpec(bn=bn, splits=("train",)),
                 x=Axis(-1, 1, 2), y=Axis(-1, 1, 2), out=tmp_path / "few.zarr")
    a, b, c = (ds.attrs["anchors"][n] for n in "ABC")
    states = [read_state_dict(f) for f in files]
    keys = [k for k, v in states[0].items() if v.is_floating_point() and (bn is BNPolicy.states or "running" not in k)]
    dist = math.sqrt(sum(float(((states[1][k].double() - states[0][k].double()) ** 2).sum()) for k in keys))
    assert a == [0.0, 0.0] and b[1] == 0.0 and b[0] == pytest.approx(dist, rel=1e-12)
    np.testing.assert_allclose(ds["anchor_plane_train_loss"].values, ref, atol=1e-6)
    np.testing.assert_allclose(ds["anchor_train_loss"].values, ref, atol=1e-6)
    if bn is BNPolicy.states:
        return
    # the grid itself at the stated coordinates: A and B on one grid, C and B on another
    opts: dict[str, Any] = {"directions": spec, "eval_spec": EvalSpec(bn=bn, splits=("train",))}
    ab = surface(make(), data, x=Axis(0.0, b[0], 2), y=Axis(0.0, c[1], 2), out=tmp_path / "ab.zarr", **opts)
    cb = surface(make(), data, x=Axis(c[0], b[0], 2), y=Axis(0.0, c[1], 2), out=tmp_path / "cb.zarr", **opts)
    np.testing.assert_allclose([ab.train_loss.values[0, 0], ab.train_loss.values[1, 0], cb.train_loss.values[0, 1],
                                cb.train_loss.values[1, 0]], [ref[0], ref[1], ref[2], ref[1]], atol=1e-6)


def test_the_automatic_grid_spans_the_anchors_and_the_origin_with_a_margin() -> None:
    coords = np.array([[0.0, 0.0], [2.9606, 0.0], [1.8468, 0.7824]])
    x, y = anchor_axes(coords, points=7)
    assert x.num == y.num == 7
    assert x.start <= -0.25 * 2.9606 and x.stop >= 1.25 * 2.9606 and x.start > -0.26 * 2.9606 - 0.03
    assert y.start <= -0.25 * 0.7824 and y.stop >= 1.25 * 0.7824
    path = np.array([[23.28, 6.68], [9.37, -4.41], [0.0, 0.0]])
    x, y = anchor_axes(path)
    assert x.start <= -0.25 * 23.28 and x.stop >= 23.28 * 1.25 and y.start <= -4.41 - 0.25 * 11.09
    assert x.num == 25 and x.values()[0] == x.start


def test_plane_directions_are_gram_schmidt() -> None:
    a = {"w": torch.tensor([1.0, 1.0, 1.0])}
    b = {"w": torch.tensor([4.0, 1.0, 1.0])}
    c = {"w": torch.tensor([2.0, 3.0, 1.0])}
    (u, v), coords = plane_directions(a, b, c)
    torch.testing.assert_close(u["w"], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(v["w"], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    np.testing.assert_array_equal(coords, [[0, 0], [3, 0], [1, 2]])
    with pytest.raises(UserInputError, match="lies on the line"):
        plane_directions(a, b, {"w": torch.tensor([7.0, 1.0, 1.0])})
    with pytest.raises(UserInputError, match="same point"):
        plane_directions(a, a, c)


def test_bad_inputs_are_one_line_errors(tmp_path, mnist_run) -> None:
    from typer.testing import CliRunner

    from lossatlas.cli import app

    run, _ = mnist_run
    short = tmp_path / "short"
    train(mlp(), make_classification(), TrainSpec(epochs=1), short)
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in mlp(hidden=5).state_dict().items()}, str(other))
    ckpts = [str(p) for p in list_checkpoints(run)]
    base = ["--model", MODEL, "--data", "mnist1d:n=400"]
    cases = [
        (["trajectory", *base, "--run", str(short), "--out", str(tmp_path / "a.zarr")], "has 2 checkpoints"),
        (["trajectory", *base, "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "a.zarr")], "does not exist"),
        (["trajectory", *base, "--run", str(run), "--x", "-1:1:3", "--out", str(tmp_path / "a.zarr")], "--y"),
        (["surface", *base, "--directions", f"plane:{ckpts[0]},{ckpts[1]}", "--out", str(tmp_path / "b.zarr")],
         "three checkpoint files"),
        (["surface", *base, "--directions", f"plane:{ckpts[0]},{ckpts[1]},{other}", "--out",
          str(tmp_path / "b.zarr")], "other.safetensors"),
        (["surface", *base, "--directions", f"pca:{run}", "--checkpoint", ckpts[0], "--out",
          str(tmp_path / "b.zarr")], "--checkpoint does not apply"),
        (["surface", *base, "--directions", "pcb:x", "--out", str(tmp_path / "b.zarr")], "pca:RUN_DIR"),
    ]
    for args, fragment in cases:
        result = CliRunner().invoke(app, args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], (args, result.stderr)


def test_trajectory_cli_prints_the_numbers_and_resumes_after_an_interrupt(tmp_path, mnist_run) -> None:
    from typer.testing import CliRunner

    from lossatlas.cli import app

    run, _ = mnist_run
    args = ["trajectory", "--model", MODEL, "--data", "mnist1d:n=400", "--run", str(run), "--points", "3",
            "--out", str(tmp_path / "t.zarr")]
    calls = {"n": 0}

    original = PointTask.__call__

    def interrupt_after_two_units(self: PointTask, unit: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return original(self, unit)

    PointTask.__call__ = interrupt_after_two_units  # type: ignore[method-assign]
    try:
        result = CliRunner().invoke(app, args)
    finally:
        PointTask.__call__ = original  # type: ignore[method-assign]
    assert result.exit_code == 130, result.stderr
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "explained variance" in result.stdout and "sqrt(2/(pi n))" in result.stdout
    assert (tmp_path / "t_train_loss_contour.png").is_file()
    fresh = CliRunner().invoke(app, args[:-1] + [str(tmp_path / "fresh.zarr")])
    assert fresh.exit_code == 0

    np.testing.assert_array_equal(open_surface(tmp_path / "t.zarr").train_loss.values,
                                  open_surface(tmp_path / "fresh.zarr").train_loss.values)


def test_plane_store_marks_the_three_models_in_the_report(tmp_path) -> None:
    from lossatlas.viz.report.builder import collect_sections

    data = make_classification()
    files = three_models(tmp_path, mlp, data)
    surface(mlp(), data, directions="plane:" + ",".join(map(str, files)), x="-2:6:3", y="-2:4:3",
            out=tmp_path / "p.zarr")
    sections, _, problems = collect_sections(tmp_path / "p.zarr", strict=True)
    assert not problems
    (plane,) = [s for s in sections if s.title.startswith("Plane through three models")]
    assert all(f"<td>{n}</td>" in plane.html for n in "ABC")
    (surf,) = [s for s in sections if s.title.startswith("2D loss surface")]
    marks = [t for f in surf.figures for t in f.data if t.name == "models"]
    assert marks and list(marks[0].text) == ["A", "B", "C"]
