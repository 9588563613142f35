"""``lossatlas hessian`` and ``surface --hessian / --directions hessian`` through typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lossatlas.cli import app
from lossatlas.curvature.analysis import open_hessian
from lossatlas.data import load_data
from lossatlas.engine import Evaluator
from lossatlas.models import build_model
from lossatlas.params import save_checkpoint
from lossatlas.store import load_directions, open_surface
from lossatlas.testing.reference import dense_hessian, spectrum

MODEL = "zoo:mlp:widths=6"


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("hessian-cli")
    path = folder / "toy.npz"
    np.savez(path, x=rng.normal(size=(45, 4)).astype(np.float32), y=rng.integers(0, 3, 45))
    data = load_data(str(path))
    net = build_model(MODEL, input_shape=data.input_shape, output_dim=data.output_dim, seed=0)
    h = dense_hessian(net, Evaluator(net, data).loss_fn, data.x_train, data.y_train)
    return {"npz": str(path), "folder": folder, "net": net, "eig": spectrum(h)}


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.stderr


def test_hessian_command_writes_a_store_a_plot_and_a_summary(toy, tmp_path) -> None:
    out = tmp_path / "h.zarr"
    result = invoke("hessian", "--model", MODEL, "--data", toy["npz"], "--top", "3", "--bottom", "2", "--trace",
                    "--density", "--critical", "--bins", "40", "--probes", "3", "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("top eigenvalues: ") and lines[1].startswith("bottom eigenvalues: ")
    assert any(line.startswith("trace: ") for line in lines)
    assert any(line.startswith("critical point: not_critical") for line in lines)
    assert lines[-1].startswith(f"wrote {out} (") and (tmp_path / "h_spectrum.png").stat().st_size > 0
    ds = open_hessian(out)
    assert ds.attrs["kind"] == "hessian" and ds.attrs["dtype"] == "float64" and ds.attrs["tol"] == 1e-6
    for key in ("model", "data", "checkpoint_sha256", "seed", "lossatlas_version", "created", "hvp_count",
                "trace", "trace_stderr", "negative_mass", "index"):
        assert key in ds.attrs, key
    eig = toy["eig"]
    np.testing.assert_allclose(ds["top_eigenvalues"].values, eig.flip(0)[:3].numpy(), rtol=1e-6)
    np.testing.assert_allclose(ds["bottom_eigenvalues"].values, eig[:2].numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.trapezoid(ds["density"].values, ds["grid"].values), 1.0, atol=1e-6)
    assert ds.attrs["index"] == pytest.approx(float((eig < -1e-6 * eig.abs().max()).double().mean()))
    vectors = load_directions(out)  # eigenvectors: top first, then bottom
    assert len(vectors) == 5 and list(vectors[0]) == [n for n, _ in toy["net"].named_parameters()]


def test_critical_reports_the_verdict_and_the_sign_pattern_with_exact_counts(toy, tmp_path) -> None:
    """Dense path (51 parameters): the counts equal those of the reference spectrum; the gradient test is a
    separate line, and --grad-tol moves only the verdict, never the sign pattern."""
    eig = toy["eig"]
    tau = 1e-6 * float(eig.abs().max())
    neg, zero, pos = int((eig < -tau).sum()), int((eig.abs() <= tau).sum()), int((eig > tau).sum())
    for grad_tol, kind in (("1e-6", "not_critical"), ("1e6", "saddle")):
        out = tmp_path / f"h{grad_tol}.json"
        result = invoke("hessian", "--model", MODEL, "--data", toy["npz"], "--top", "2", "--critical", "--grad-tol",
                        grad_tol, "--out", str(out))
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert any(line.startswith(f"critical point: {kind} (‖∇L‖ = ") for line in lines), lines
        assert f"Hessian: indefinite; {neg} negative, {zero} zero (|λ| ≤ {tau:.2g}), {pos} positive of 51; index " \
               f"{neg / 51:.4g} (exact); λmin {float(eig[0]):.6g}" in result.stdout
        a = open_hessian(out).attrs
        assert (a["negative_count"], a["zero_count"], a["positive_count"]) == (neg, zero, pos) and neg > 0
        assert a["critical_kind"] == kind and a["hessian_sign"] == "indefinite" and a["eigen_method"] == "dense"
        assert a["hvp_count"] == 51 + 3  # the dense Hessian, then the residuals of λmin, λmax and the 2nd top pair
    np.testing.assert_allclose(open_hessian(out)["top_eigenvalues"].values, eig.flip(0)[:2].numpy(), rtol=1e-10)


def test_uncertified_extremes_make_the_verdict_undetermined(toy, tmp_path) -> None:
    result = invoke("hessian", "--model", MODEL, "--data", toy["npz"], "--top", "0", "--critical", "--dense-limit",
                    "0", "--max-hvps", "4", "--out", str(tmp_path / "h.json"))
    assert result.exit_code == 0, result.output
    assert "critical point: undetermined" in result.stdout and "Hessian: undetermined; index unknown" in result.stdout
    assert "warning: λmin or λmax is not certified" in result.stderr
    a = open_hessian(tmp_path / "h.json").attrs
    assert a["critical_kind"] == "undetermined" and a["extremes_certified"] is False and "index" not in a
    assert a["lambda_min_residual"] > 0 and a["hvp_count"] == 4


def test_lanczos_progress_counts_products_against_the_certificate_and_completes(toy, tmp_path) -> None:
    result = invoke("hessian", "--model", MODEL, "--data", toy["npz"], "--top", "3", "--out", str(tmp_path / "h.json"))
    assert result.exit_code == 0, result.output
    hvps = open_hessian(tmp_path / "h.json").attrs["hvp_count"]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("top-3 eigenpairs: products (3 of 3 certified)") and f" {hvps}/{hvps} " in last, last


def test_hessian_json_result_and_float32(toy, tmp_path) -> None:
    out = tmp_path / "h.json"
    result = invoke("hessian", "--model", MODEL, "--data", toy["npz"], "--top", "2", "--dtype", "float32",
                    "--params", "layers\\.0\\.", "--out", str(out))
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["attrs"]["params"] == "layers\\.0\\." and payload["attrs"]["n_params"] == 30
    names = [n for n, _ in toy["net"].named_parameters() if n.startswith("layers.0.")]
    data = load_data(toy["npz"])
    block = spectrum(dense_hessian(toy["net"], Evaluator(toy["net"], data).loss_fn, data.x_train, data.y_train,
                                   names=names))
    # float32 products: the sub-block's top eigenvalues to float32 accuracy (tolerance 1e-3 of the residual test)
    np.testing.assert_allclose(open_hessian(out)["top_eigenvalues"].values, block.flip(0)[:2].numpy(), rtol=1e-3)
    assert payload["attrs"]["dtype"] == "float32"
    again = invoke("hessian", "--model", MODEL, "--data", toy["npz"], "--top", "2", "--out", str(out))
    assert_one_line_error(again, "already exists")


@pytest.mark.parametrize(("args", "fragment"), [
    (["--top", "1000"], "--top 1000 is larger than the 51 parameters"),
    (["--params", "^conv"], "--params '^conv' selects no parameter"),
    (["--params", "(("], "not a valid regular expression"),
    (["--tol", "0"], "--tol must be positive"),
    (["--top", "0"], "nothing to compute"),
])
def test_bad_inputs_are_one_line_errors(toy, tmp_path, args, fragment) -> None:
    result = invoke("hessian", "--model", MODEL, "--data", toy["npz"], "--out", str(tmp_path / "r.zarr"), *args)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "r.zarr").exists()


def test_nan_loss_at_the_point_is_a_one_line_error(toy, tmp_path) -> None:
    state = {k: v.clone() for k, v in toy["net"].state_dict().items()}
    state["layers.0.weight"][0, 0] = float("nan")
    ckpt = save_checkpoint(state, tmp_path / "nan.safetensors")
    result = invoke("hessian", "--model", MODEL, "--data", toy["npz"], "--checkpoint", str(ckpt),
                    "--out", str(tmp_path / "r.zarr"))
    assert_one_line_error(result, "the loss at this point is nan")


def test_surface_convexity_map_on_hessian_directions(toy, tmp_path) -> None:
    out = tmp_path / "s.zarr"
    result = invoke("surface", "--model", MODEL, "--data", toy["npz"], "--x", "-0.5:0.5:3", "--y", "-0.5:0.5:3",
                    "--directions", "hessian", "--hessian", "--out", str(out))
    assert result.exit_code == 0, result.output
    ds = open_surface(out)
    assert ds.attrs["directions"] == "hessian" and "lambda_max" in ds and "convexity_ratio" in ds
    centre = ds.sel(x=0.0, y=0.0)
    eig = toy["eig"]
    assert float(centre["lambda_max"]) == pytest.approx(float(eig[-1]), rel=1e-3)
    assert float(centre["lambda_min"]) == pytest.approx(float(eig[0]), rel=1e-3)
    np.testing.assert_allclose(ds.attrs["hessian_eigenvalues"], eig.flip(0)[:2].numpy(), rtol=1e-6)
    top = load_directions(out)[0]
    assert abs(float(sum((t.double() ** 2).sum() for t in top.values())) - 1.0) < 1e-6
    bad = invoke("surface", "--model", MODEL, "--data", toy["npz"], "--directions", "pca", "--out",
                 str(tmp_path / "p.zarr"))
    assert bad.exit_code == 2


def test_plot_command_draws_a_hessian_store(toy, tmp_path) -> None:
    out = tmp_path / "h.zarr"
    assert invoke("hessian", "--model", MODEL, "--data", toy["npz"], "--top", "2", "--out", str(out)).exit_code == 0
    result = invoke("plot", str(out), "--out", str(tmp_path / "png"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "png" / "h_spectrum.png").is_file()
    assert torch.is_tensor(load_directions(out)[0]["layers.0.weight"])


def test_report_renders_hessian_store_and_json(toy, tmp_path) -> None:
    from lossatlas.viz.report import build_report

    run = tmp_path / "run"
    for name in ("hessian.zarr", "hessian.json"):
        result = invoke("hessian", "--model", MODEL, "--data", toy["npz"], "--top", "2", "--bottom", "1",
                        "--density", "--probes", "2", "--bins", "30", "--trace", "--critical", "--out", str(run / name))
        assert result.exit_code == 0, result.output
    report = build_report(run, strict=True)
    page = report.path.read_text()
    assert report.sections == 2 and not report.problems
    assert "Hessian spectrum: hessian.zarr" in page and "Hessian spectrum: hessian.json" in page
    assert "residual ‖Hv − λv‖" in page and "negative (index" in page and "gradient test" in page
