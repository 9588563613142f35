"""Review items of the foundations issue, each a test that failed before its fix.

Wrong numbers or crashes: a mean-reduction loss, ``hessian --split test``, ``--bn states`` under ``--ignore biasbn``,
one checkpoint named by a relative and an absolute path, brackets in user strings, non-finite grids, and the one
spec grammar (user model files take keyword options like the zoo).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lossatlas.cli import app
from lossatlas.data import load_data
from lossatlas.directions import DirectionSpec
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.errors import UserInputError
from lossatlas.grid import Axis
from lossatlas.landscape import surface
from lossatlas.models import build_model
from lossatlas.params import save_checkpoint
from lossatlas.specs import parse_spec
from tests.conftest import bn_cnn, make_classification, mlp
from tests.test_cli import assert_one_line_error, run_cli


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("found")
    npz = folder / "toy.npz"
    np.savez(npz, x=rng.normal(size=(50, 5)).astype(np.float32), y=rng.integers(0, 3, 50),
             x_test=rng.normal(size=(23, 5)).astype(np.float32), y_test=rng.integers(0, 3, 23))
    data = load_data(str(npz))
    net = build_model("zoo:mlp:widths=6", input_shape=data.input_shape, output_dim=data.output_dim)
    ckpt = save_checkpoint(net, folder / "net.safetensors")
    return {"npz": npz, "folder": folder, "ckpt": ckpt, "data": data, "net": net}


# -- 2. the per-sample loss contract ---------------------------------------------------------------------
def test_mean_reduction_loss_is_refused_naming_reduction_none() -> None:
    data = make_classification()
    with pytest.raises(UserInputError, match=r'shape \(\) for 2 samples.*reduction="none"'):
        Evaluator(mlp(), data, EvalSpec(loss="torch.nn.functional:cross_entropy"))


def test_loss_options_in_the_spec_give_a_per_sample_loss() -> None:
    data = make_classification()
    ev = Evaluator(mlp(), data, EvalSpec(loss="torch.nn.functional:cross_entropy:reduction=none"))
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(mlp()(data.x_train), data.y_train)
    np.testing.assert_allclose(ev.evaluate_one(ev.theta())["train_loss"], float(ref), rtol=1e-6)


# -- 3. any split works for every command ---------------------------------------------------------------
def test_hessian_on_the_test_split(toy, tmp_path) -> None:
    from lossatlas.testing.reference import dense_hessian, spectrum

    out = tmp_path / "h.json"
    result = invoke("hessian", "--model", "zoo:mlp:widths=6", "--data", str(toy["npz"]), "--checkpoint",
                    str(toy["ckpt"]), "--split", "test", "--top", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    ev = Evaluator(toy["net"], toy["data"], EvalSpec(splits=("test",)))
    exact = spectrum(dense_hessian(toy["net"], ev.loss_fn, toy["data"].x_test, toy["data"].y_test))
    top = [float(v) for v in result.stdout.split("top eigenvalues: ")[1].split(",")[0].split()[:1]]
    np.testing.assert_allclose(top[0], exact[-1], rtol=1e-5)


def test_evaluator_with_only_a_test_split() -> None:
    data = make_classification()
    ev = Evaluator(mlp(), data, EvalSpec(splits=("test",)))
    assert ev.metric_names == ["test_loss", "test_accuracy"]
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(mlp()(data.x_test), data.y_test)
    np.testing.assert_allclose(ev.evaluate_one(ev.theta())["test_loss"], float(ref), rtol=1e-6)


# -- 6. --bn states and --ignore biasbn ---------------------------------------------------------------------
def test_bn_states_with_biasbn_is_refused_not_a_silent_no_op(tmp_path) -> None:
    data = make_classification(image=True)
    with pytest.raises(UserInputError, match="--ignore none"):
        surface(bn_cnn(), data, x="-1:1:3", eval_spec=EvalSpec(bn="states"), out=tmp_path / "s.zarr")
    grid = "-0.05:0.05:3"  # small steps: a perturbed running_var must stay positive
    ds = surface(bn_cnn(), data, x=grid, eval_spec=EvalSpec(bn="states"), out=tmp_path / "t.zarr",
                 directions=DirectionSpec(ignore="none"))
    eval_ds = surface(bn_cnn(), data, x=grid, out=tmp_path / "e.zarr", directions=DirectionSpec(ignore="none"))
    # the statistics really move: the curve differs from the eval policy's away from θ, equals it at θ
    assert abs(float(ds.train_loss[0]) - float(eval_ds.train_loss[0])) > 1e-4
    np.testing.assert_allclose(float(ds.train_loss[1]), float(eval_ds.train_loss[1]), rtol=1e-6)


# -- 8. the same checkpoint by a relative and an absolute path ---------------------------------------------
def test_relative_and_absolute_checkpoint_paths_resume_the_same_store(toy) -> None:
    folder = toy["folder"]
    common = ["surface", "--model", "zoo:mlp:widths=6", "--data", str(toy["npz"]), "--x", "-1:1:3",
              "--out", str(folder / "rel.zarr")]
    first = run_cli(*common, "--checkpoint", "net.safetensors", cwd=folder)
    assert first.returncode == 0, first.stderr
    again = run_cli(*common, "--checkpoint", str(toy["ckpt"].resolve()))
    assert again.returncode == 0, again.stderr


# -- 9. user strings are printed verbatim -------------------------------------------------------------
def test_brackets_in_user_strings_survive_the_error_line(tmp_path) -> None:
    proc = run_cli("surface", "--model", "zoo:mlp", "--data", str(tmp_path / "runs[exp1]" / "d.npz"),
                   "--out", str(tmp_path / "s.zarr"))
    assert_one_line_error(proc, "runs[exp1]")
    proc = run_cli("hessian", "--model", "zoo:mlp", "--data", "xor", "--params", "conv[a-z]", "--out",
                   str(tmp_path / "h.json"))
    assert_one_line_error(proc, "conv[a-z]")


# -- 11. a grid with non-finite coordinates ----------------------------------------------------------------
@pytest.mark.parametrize("text", ["-1e308:1e308:3", "nan:1:3", "-inf:1:3"])
def test_non_finite_grids_are_refused(text: str) -> None:
    with pytest.raises(UserInputError, match="--x"):
        Axis.parse(text, "--x").values()


# -- issue 9.10: coordinates a user can select -----------------------------------------------------------
def test_typed_grid_coordinates_are_exact_decimals() -> None:
    values = Axis.parse("-1:1:21").values()
    assert -0.1 in values.tolist() and 0.3 in values.tolist() and 0.0 in values.tolist()
    np.testing.assert_allclose(values, np.linspace(-1, 1, 21), atol=1e-15)
    assert Axis.parse("-0.5:1.5:41").values()[11] == 0.05


# -- the one spec grammar --------------------------------------------------------------------------------
def test_one_grammar_for_model_data_and_loss_specs(tmp_path) -> None:
    assert parse_spec("zoo:mlp:widths=8-8", "model", ["mlp"], prefix="zoo:").options == (("widths", "8-8"),)
    assert parse_spec("teacher:n=10,d=3", "data", ["teacher"]).options == (("n", "10"), ("d", "3"))
    s = parse_spec("pkg.mod:fn:a=1", "loss", ["mse"])
    assert (s.kind, s.target, s.name, s.options) == ("module", "pkg.mod", "fn", (("a", "1"),))
    s = parse_spec("some/dir/my.py:build:channels=3", "model", ["mlp"], prefix="zoo:")
    assert (s.kind, s.target, s.name, s.options) == ("file", "some/dir/my.py", "build", (("channels", "3"),))


def test_user_model_file_takes_keyword_options_like_the_zoo(tmp_path) -> None:
    path = tmp_path / "mymodel.py"
    path.write_text("import torch\n"
                    "def small(input_shape, output_dim, channels: int = 4, deep: bool = False):\n"
                    "    layers = [torch.nn.Flatten(), torch.nn.Linear(input_shape[0], channels)]\n"
                    "    if deep:\n"
                    "        layers += [torch.nn.ReLU(), torch.nn.Linear(channels, channels)]\n"
                    "    return torch.nn.Sequential(*layers, torch.nn.Linear(channels, output_dim))\n")
    net = build_model(f"{path}:small:channels=32,deep=true", input_shape=(5,), output_dim=3)
    assert net[1].out_features == 32 and len(net) == 5
    with pytest.raises(UserInputError, match="unknown key 'width'.*valid keys: channels, deep"):
        build_model(f"{path}:small:width=3", input_shape=(5,), output_dim=3)
    with pytest.raises(UserInputError, match="bad value channels='x'"):
        build_model(f"{path}:small:channels=x", input_shape=(5,), output_dim=3)


def test_user_data_function_takes_keyword_options(tmp_path) -> None:
    path = tmp_path / "mydata.py"
    path.write_text("import numpy as np\n"
                    "def make(seed=0, n: int = 10):\n"
                    "    rng = np.random.default_rng(seed)\n"
                    "    return rng.normal(size=(n, 3)).astype('float32'), rng.integers(0, 2, n)\n")
    assert load_data(f"{path}:make:n=17").x_train.shape == (17, 3)


def test_worker_threads_share_nothing_mutable() -> None:
    """Each thread evaluates on its own model copy; the main thread's copy is not the one another thread uses."""
    import threading

    ev = Evaluator(mlp(), make_classification())
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(id(ev.model)))
    t.start()
    t.join()
    assert seen[0] != id(ev.model)


def test_choice_options_list_their_choices_in_one_line(tmp_path) -> None:
    proc = run_cli("hessian", "--model", "zoo:mlp", "--data", "xor", "--split", "valid", "--out",
                   str(tmp_path / "h.json"))
    assert_one_line_error(proc, "'valid' is not one of 'train', 'test'")
    proc = run_cli("train", "--model", "zoo:mlp", "--data", "xor", "--optimizer", "lbfgs", "--out", str(tmp_path))
    assert_one_line_error(proc, "'lbfgs' is not one of")


def test_flags_show_no_type_in_help() -> None:
    result = CliRunner().invoke(app, ["surface", "--help"], env={"COLUMNS": "200"})
    assert "<bool>" not in result.output and "--overwrite" in result.output and "MIN:MAX:N" in result.output
