"""mnist1d-baselines: the zoo nets are Greydanus' (exact parameter counts), the stored accuracy is the trained net's
accuracy on the test split (recomputed by a plain forward pass), a run shorter than Greydanus' 6000 steps is
unconverged (not a failure), the accuracy rows follow the equivalence rule with the 3-point margin; the quick preset
(slow) runs its checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from scipy.stats import t

from lossatlas.data import load_data
from lossatlas.models import build_model
from lossatlas.params import load_checkpoint
from lossatlas.studies import run_study
from lossatlas.studies.framework import cell_id
from lossatlas.studies.mnist1d_baselines import (
    MODELS,
    PUBLISHED_ACCURACY,
    PUBLISHED_PARAMETERS,
    PUBLISHED_STEPS,
    MNIST1DBaselines,
)
from lossatlas.training import checkpoint_path


@pytest.mark.parametrize("model", list(MODELS))
def test_zoo_nets_have_greydanus_parameter_counts(model: str) -> None:
    net = build_model(MODELS[model], input_shape=(40,), output_dim=10)
    assert sum(p.numel() for p in net.parameters()) == PUBLISHED_PARAMETERS[model]


def test_small_preset_measures_the_trained_nets_and_gates_short_runs(tmp_path) -> None:
    overrides = {"models": "logistic,cnn", "epochs": "1", "data": "mnist1d:n=1000"}
    result = run_study("mnist1d-baselines", overrides=overrides, out_dir=tmp_path)
    rows = {(r.quantity, r.key.get("model")): r for r in result.rows}
    for model in ("logistic", "cnn"):
        params = rows[("parameters", model)]
        assert (params.verdict, params.source, params.expected) == ("agrees", "protocol", PUBLISHED_PARAMETERS[model])
    data = load_data("mnist1d:n=1000")
    x, y = data.split("test")
    for model in ("logistic", "cnn"):
        folder = result.folder / "runs" / cell_id({"model": model, "run": 0})
        template = build_model(MODELS[model], input_shape=(40,), output_dim=10)
        net = load_checkpoint(template, checkpoint_path(folder, 1))
        with torch.no_grad():
            accuracy = float((net(x).argmax(1) == y).double().mean())
        assert float(result.dataset.test_accuracy.sel(model=model, run=0).isel(epoch=-1)) == pytest.approx(accuracy)
        row = rows[("test_accuracy_pct", model)]  # one epoch, far from 6000 steps: unconverged, never 'differs'
        assert row.verdict == "not comparable" and row.unconverged == 1 and row.measured is None
        assert row.expected == PUBLISHED_ACCURACY[model] and row.source == "published" and "2020" in row.ref
        assert row.margin == 3.0 and "unconverged" in row.note
    assert ("accuracy_order", None) not in rows  # only with all four models


def _fake(accuracy: dict[str, list[float]], epochs: int = 150) -> xr.Dataset:
    """A finished dataset: per model and run the final test accuracy (%), the parameter counts, 40 steps an epoch."""
    models = list(accuracy)
    runs = len(accuracy[models[0]])
    acc = np.zeros((len(models), runs, epochs + 1))
    acc[..., -1] = np.array([accuracy[m] for m in models]) / 100
    loss = np.ones_like(acc)
    loss[np.isnan(acc)] = np.nan
    data: dict[str, tuple[tuple[str, ...], np.ndarray]] = {k: (("model", "run", "epoch"), v) for k, v in
            {"test_accuracy": acc, "train_accuracy": acc, "train_loss": loss, "test_loss": loss,
             "param_norm": loss}.items()}
    data["parameters"] = (("model",), np.array([PUBLISHED_PARAMETERS[m] for m in models]))
    e = np.arange(epochs + 1)
    return xr.Dataset(data, coords={"model": models, "run": np.arange(runs), "epoch": e, "step": ("epoch", 40 * e)})


def test_accuracy_rows_follow_the_equivalence_rule() -> None:
    runs = {"logistic": [31.0, 32.0, 33.0], "mlp": [60.0, 61.0, 62.0], "cnn": [93.8, 94.0, 94.2],
            "gru": [80.0, 95.0, np.nan]}
    rows = {(r.quantity, r.key.get("model")): r for r in MNIST1DBaselines(runs=3).check(_fake(runs))}
    for model, values in runs.items():
        row = rows[("test_accuracy_pct", model)]
        x = np.array(values)[np.isfinite(values)]
        half90 = t.ppf(0.95, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
        d = x.mean() - PUBLISHED_ACCURACY[model]
        assert row.measured == pytest.approx(x.mean()) and row.diff_ci90 == pytest.approx((d - half90, d + half90))
        assert row.runs == x.size and row.unconverged == 3 - x.size
    assert rows[("test_accuracy_pct", "logistic")].verdict == "agrees"  # 90% interval ±1.7 around 0, inside ±3
    assert rows[("test_accuracy_pct", "cnn")].verdict == "agrees"
    assert rows[("test_accuracy_pct", "mlp")].verdict == "differs"  # 7 points below, interval ±1.7
    assert rows[("test_accuracy_pct", "gru")].verdict == "inconclusive"  # two runs 15 points apart
    order = rows[("accuracy_order", None)]
    assert order.measured == "logistic < mlp < gru < cnn" and order.verdict == "agrees"


def test_short_runs_are_not_comparable_even_with_good_accuracy() -> None:
    runs = {m: [a, a, a] for m, a in PUBLISHED_ACCURACY.items()}
    ds = _fake(runs, epochs=10)  # 400 steps
    assert int(ds.step[-1]) < PUBLISHED_STEPS
    rows = MNIST1DBaselines(runs=3, epochs=10).check(ds)
    accuracy = [r for r in rows if r.quantity in ("test_accuracy_pct", "accuracy_order")]
    assert len(accuracy) == 5 and all(r.verdict == "not comparable" for r in accuracy)


@pytest.mark.slow
def test_quick_preset(tmp_path) -> None:
    result = run_study("mnist1d-baselines", "quick", out_dir=tmp_path)
    rows = {(r.quantity, r.key.get("model")): r for r in result.rows}
    assert all(rows[("parameters", m)].verdict == "agrees" for m in MODELS)
    assert rows[("accuracy_order", None)].expected == "logistic < mlp < gru < cnn"
    assert all(rows[("test_accuracy_pct", m)].verdict == "not comparable" for m in MODELS)  # 400 of 6000 steps
    assert (result.folder / "table.md").is_file() and (result.folder / "test_accuracy.png").is_file()
