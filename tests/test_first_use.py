"""What a researcher hit on first use (issue 9, items 6, 7, 9, 14, 16, 17): untrained weights said out loud, subset
runs that say so, honest digits, the BN-recompute note with the centre value, a stable variable order, reusing a
stored run's directions, in-memory surfaces and a useful model description from Python.

CLI commands run in-process (``CliRunner``) on a 5-feature toy problem; every check is against the store itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

import lossatlas as la
from lossatlas.cli import app
from lossatlas.errors import UserInputError
from lossatlas.landscape import surface
from lossatlas.params import save_checkpoint
from lossatlas.store import COMPLETED, VARIABLES, load_directions, open_surface
from lossatlas.viz.describe import UNTRAINED, differing_settings, sig, with_error
from tests.conftest import bn_cnn, make_classification, mlp

MODEL = "zoo:mlp:widths=8"


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "80"})


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A toy .npz and a checkpoint of the zoo MLP on it (not trained: any weights other than the default init)."""
    from lossatlas.data import load_data
    from lossatlas.models import build_model

    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    npz = root / "toy.npz"
    np.savez(npz, x=rng.normal(size=(60, 5)).astype(np.float32), y=rng.integers(0, 3, 60),
             x_test=rng.normal(size=(20, 5)).astype(np.float32), y_test=rng.integers(0, 3, 20))
    data = load_data(str(npz))
    net = build_model(MODEL, input_shape=data.input_shape, output_dim=data.output_dim, seed=7)
    return npz, save_checkpoint(net, root / "other.safetensors")


def test_forgetting_checkpoint_warns_and_is_recorded(toy, tmp_path: Path) -> None:
    npz, ckpt = toy
    result = invoke("surface", "--model", MODEL, "--data", npz, "--x", "-1:1:3", "--out", tmp_path / "u.zarr")
    assert result.exit_code == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "no --checkpoint" in warning[0] and "untrained" in warning[0]
    assert open_surface(tmp_path / "u.zarr").attrs["weights"] == UNTRAINED
    assert "[untrained weights]" in result.stdout
    result = invoke("surface", "--model", MODEL, "--data", npz, "--x", "-1:1:3", "--checkpoint", ckpt,
                    "--out", tmp_path / "t.zarr")
    assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr
    assert open_surface(tmp_path / "t.zarr").attrs["weights"] == f"checkpoint {ckpt}"
    # training starts from the initialisation on purpose: no warning there
    result = invoke("train", "--model", MODEL, "--data", npz, "--epochs", "1", "--out", tmp_path / "run")
    assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr
    # the last epoch's numbers close the output, as metrics.csv holds them
    last = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    row = dict(zip(last[0].split(","), last[-1].split(","), strict=True))
    assert f"epoch 1: train loss {float(row['train_loss']):.4g}, train accuracy" in result.stdout, result.stdout


def test_subset_summary_says_subset_with_honest_digits_and_no_bn_note_without_batchnorm(toy, tmp_path: Path) -> None:
    npz, ckpt = toy
    out = tmp_path / "s.zarr"
    result = invoke("surface", "--model", MODEL, "--data", npz, "--checkpoint", ckpt, "--x", "-1:1:5",
                    "--subset", "0.5", "--bn", "recompute", "--out", out)
    assert result.exit_code == 0, result.stderr
    ds = open_surface(out)
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"wrote {out} (5 points; min train loss ") and lines[0].endswith(
        "[subset 50%]"), lines[0]  # the MLP has no BatchNorm layer: --bn recompute changes nothing, so no tag
    assert ds.attrs["batchnorm_layers"] == 0
    # the centre value and its 95% interval, digits set by the error
    centre = with_error(float(ds.train_loss.sel(x=0.0)), 1.959963984540054 * float(ds.train_loss_stderr.sel(x=0.0)))
    assert f"centre {centre} (95%)" in lines[0]
    assert any(line.startswith("note: evaluated on a subset of 50% of each split (seed 0)") for line in lines)
    assert not [line for line in lines if "--bn recompute" in line]


def test_bn_recompute_note_only_for_models_with_batchnorm() -> None:
    from lossatlas.viz.describe import BN_RECOMPUTE_NOTE, notes, qualifiers

    assert notes({"bn": "recompute", "batchnorm_layers": 2}) == [BN_RECOMPUTE_NOTE]
    assert qualifiers({"bn": "recompute", "batchnorm_layers": 2}) == ["bn=recompute"]
    assert notes({"bn": "recompute", "batchnorm_layers": 0}) == []
    assert qualifiers({"bn": "states", "batchnorm_layers": 0}) == []
    assert notes({"bn": "recompute"}) == [BN_RECOMPUTE_NOTE]  # a store written before the count was recorded


def test_digits() -> None:
    assert sig(3.49532e-05) == "3.495e-05" and sig(float("nan")) == "nan"
    assert with_error(0.123456, 0.0056789) == "0.1235 ± 0.0057"
    assert with_error(1234.5, 120) == "1230 ± 120"
    assert with_error(3.48e-6, 2e-6) == "3.5e-06 ± 2.0e-06"
    assert with_error(0.5, 0.0) == "0.5"


def test_store_variables_in_creation_order(tmp_path: Path) -> None:
    data = make_classification()
    ds = surface(mlp(), data, x="-1:1:3", eval_spec=la.EvalSpec(subset=0.5), out=tmp_path / "s.zarr")
    expected = ["train_loss", "train_accuracy", "test_loss", "test_accuracy", "train_loss_stderr",
                "train_accuracy_stderr", "test_loss_stderr", "test_accuracy_stderr", COMPLETED]
    assert list(ds.data_vars) == expected
    assert list(open_surface(tmp_path / "s.zarr").data_vars) == expected
    # a store written before the attr existed: the canonical order (metrics, stderr, maps, completed)
    old = open_surface(tmp_path / "s.zarr")
    old["lambda_max"] = old["train_loss"] * 0
    del old.attrs[VARIABLES]
    old[list(reversed(list(old.data_vars)))].to_zarr(tmp_path / "old.zarr", consolidated=False)
    assert list(open_surface(tmp_path / "old.zarr").data_vars) == expected[:-1] + ["lambda_max", COMPLETED]


def test_surface_reuses_a_stored_runs_directions(toy, tmp_path: Path) -> None:
    npz, ckpt = toy
    first = tmp_path / "a.zarr"
    assert invoke("surface", "--model", MODEL, "--data", npz, "--checkpoint", ckpt, "--x", "-1:1:3", "--y",
                  "-1:1:3", "--seed", "5", "--out", first).exit_code == 0
    second = tmp_path / "b.zarr"
    result = invoke("surface", "--model", MODEL, "--data", npz, "--x", "-1:1:3", "--y", "-1:1:3",
                    "--directions", first, "--bn", "recompute", "--out", second)
    assert result.exit_code == 0, result.stderr
    for d_a, d_b in zip(load_directions(first), load_directions(second), strict=True):
        assert d_a.keys() == d_b.keys()
        for k in d_a:
            torch.testing.assert_close(d_a[k], d_b[k], rtol=0, atol=0)
    attrs = open_surface(second).attrs
    assert attrs["directions_from"] == str(first) and attrs["seed"] == 5 and attrs["norm"] == "filter"
    # the Python API takes the path too, and equals passing the very same direction dicts
    from lossatlas.data import load_data
    from lossatlas.models import build_model

    data = load_data(str(npz))
    net = build_model(MODEL, input_shape=data.input_shape, output_dim=data.output_dim)
    by_path = surface(net, data, x="-1:1:3", directions=str(first), out=None)
    by_dicts = surface(net, data, x="-1:1:3", directions=load_directions(first)[:1], out=None)
    xr.testing.assert_identical(by_path.train_loss, by_dicts.train_loss)
    for value, fragment in ((tmp_path / "missing.zarr", "does not exist"), (tmp_path, "holds no directions")):
        with pytest.raises(UserInputError, match=fragment):
            surface(net, data, x="-1:1:3", directions=value, out=None)
    line = invoke("surface", "--model", MODEL, "--data", npz, "--x", "-1:1:3", "--directions", "sideways",
                  "--out", tmp_path / "c.zarr")
    assert line.exit_code == 2
    assert "--directions must be random, hessian, plane:A,B,C, pca:RUN_DIR or a stored run" in line.stderr


def test_in_memory_surface_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    data = make_classification()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    ds = la.surface(mlp(), data, x="-1:1:3", y="-1:1:2")
    assert list(scratch.iterdir()) == []  # the temporary store is gone
    on_disk = la.surface(mlp(), data, x="-1:1:3", y="-1:1:2", out=tmp_path / "s.zarr")
    np.testing.assert_array_equal(ds.train_loss.values, on_disk.train_loss.values)
    assert ds.attrs["config_hash"] == on_disk.attrs["config_hash"] and ds.attrs["status"] == "complete"
    line = la.interpolate(mlp(seed=0), mlp(seed=1), data, x="0:1:3")
    assert line.train_loss.shape == (3,) and list(scratch.iterdir()) == []


def test_python_surfaces_describe_the_model(tmp_path: Path) -> None:
    net = bn_cnn()
    ds = la.surface(net, make_classification(image=True), x="-1:1:3")
    assert sum(p.numel() for p in net.parameters()) == 399
    assert ds.attrs["model"] == "Sequential (399 parameters)"
    wide = torch.nn.Sequential(torch.nn.Linear(6, 200), torch.nn.Linear(200, 3))
    assert la.surface(wide, make_classification(), x="0:1:2").attrs["model"] == "Sequential (2,003 parameters)"
    assert la.surface(mlp(), make_classification(), x="0:1:2", provenance={"model": "mine"}).attrs["model"] == "mine"


def test_load_checkpoint_is_public(tmp_path: Path) -> None:
    a, b = mlp(seed=0), mlp(seed=1)
    path = save_checkpoint(b, tmp_path / "b.safetensors")
    loaded = la.load_checkpoint(a, path)
    assert "load_checkpoint" in la.__all__ and "load_checkpoint(model, path)" in la.__doc__
    for k, v in b.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    torch.testing.assert_close(a[0].weight, mlp(seed=0)[0].weight, rtol=0, atol=0)  # the model itself untouched


def test_differing_settings_name_what_differs() -> None:
    a = {"bn": "eval", "checkpoint": "run/checkpoints/epoch_0004.safetensors", "model": "m", "seed": 0}
    b = {"bn": "recompute", "checkpoint": "run/checkpoints/epoch_0004.safetensors", "model": "m", "seed": 0}
    c = {"bn": "eval", "checkpoint": "run/checkpoints/epoch_0000.safetensors", "model": "m", "seed": 0}
    assert differing_settings([a, b]) == ["bn=eval", "bn=recompute"]
    assert differing_settings([a, b, c]) == ["checkpoint=epoch_0004.safetensors, bn=eval",
                                             "checkpoint=epoch_0004.safetensors, bn=recompute",
                                             "checkpoint=epoch_0000.safetensors, bn=eval"]
    assert differing_settings([a, dict(a)]) == ["", ""] and differing_settings([a]) == [""]


@pytest.mark.parametrize("command", ["surface", "interpolate", "plot", "compare", "export", "report"])
def test_help_shows_metavars_and_choices_on_one_screen(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "100"})
    text = result.output
    for leak in ("<list[", "<path>", "<int>", "<float>", "<str>", "{STORE", "<bool>"):
        assert leak not in text, (command, leak)
    assert len(text.splitlines()) <= 55, (command, len(text.splitlines()))  # one screen at 100 columns
    if command in ("plot", "compare"):
        assert "contour|contourf|heatmap|surface3d" in text and "auto|linear|log|li" in text
    if command == "plot":
        assert "png|pdf|svg" in text
    if command == "export":
        assert "vtu|obj|stl|ply|csv" in text
    if command == "surface":  # "[default: …]" inside a help string was eaten as Rich markup
        assert "-1:1:51" in text and "STORE.zarr" in text


def test_hessian_without_checkpoint_warns_too(toy, tmp_path: Path) -> None:
    npz, _ = toy
    result = invoke("hessian", "--model", MODEL, "--data", npz, "--top", "1", "--out", tmp_path / "h.json")
    assert result.exit_code == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("warning: no --checkpoint")]
    from lossatlas.curvature.analysis import open_hessian

    assert open_hessian(tmp_path / "h.json").attrs["weights"] == UNTRAINED
    # a user error stays one line: the pending warning is dropped
    bad = invoke("hessian", "--model", MODEL, "--data", npz, "--params", "nothing-matches", "--out",
                 tmp_path / "h2.json")
    assert bad.exit_code == 2 and [line for line in bad.stderr.splitlines() if line.strip()][0].startswith("error:")
    assert "warning" not in bad.stderr
