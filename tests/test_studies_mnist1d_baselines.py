"""mnist1d-baselines: the zoo nets are Greydanus' (exact parameter counts), the measured accuracy is the trained
net's accuracy on the test split (recomputed by a plain forward pass), the quick preset (slow) runs its checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lossatlas.data import load_data
from lossatlas.models import build_model
from lossatlas.params import load_checkpoint
from lossatlas.studies import run_study
from lossatlas.studies.framework import cell_id, rate_tolerance
from lossatlas.studies.mnist1d_baselines import MODELS, PUBLISHED_ACCURACY, PUBLISHED_PARAMETERS
from lossatlas.training import checkpoint_path


@pytest.mark.parametrize("model", list(MODELS))
def test_zoo_nets_have_greydanus_parameter_counts(model: str) -> None:
    net = build_model(MODELS[model], input_shape=(40,), output_dim=10)
    assert sum(p.numel() for p in net.parameters()) == PUBLISHED_PARAMETERS[model]


def test_small_preset_measures_the_trained_nets(tmp_path) -> None:
    overrides = {"models": "logistic,cnn", "epochs": "1", "data": "mnist1d:n=1000"}
    result = run_study("mnist1d-baselines", overrides=overrides, out_dir=tmp_path)
    rows = {(r.quantity, r.key.get("model")): r for r in result.rows}
    assert rows[("parameters", "logistic")].verdict == rows[("parameters", "cnn")].verdict == "agrees"
    data = load_data("mnist1d:n=1000")
    x, y = data.split("test")
    for model in ("logistic", "cnn"):
        folder = result.folder / "runs" / cell_id({"model": model, "run": 0})
        template = build_model(MODELS[model], input_shape=(40,), output_dim=10)
        net = load_checkpoint(template, checkpoint_path(folder, 1))
        with torch.no_grad():
            accuracy = 100 * float((net(x).argmax(1) == y).double().mean())
        row = rows[("test_accuracy_pct", model)]
        assert row.measured == pytest.approx(accuracy, abs=1e-9)
        published = PUBLISHED_ACCURACY[model]
        assert row.tolerance == pytest.approx(rate_tolerance(published, 1000) + 0.5)
        assert row.verdict == ("agrees" if abs(accuracy - published) <= row.tolerance else "differs")
    assert ("accuracy_order", None) not in rows  # only with all four models
    assert np.isfinite(result.dataset.test_accuracy.values).all()


@pytest.mark.slow
def test_quick_preset(tmp_path) -> None:
    result = run_study("mnist1d-baselines", "quick", out_dir=tmp_path)
    rows = {(r.quantity, r.key.get("model")): r for r in result.rows}
    assert all(rows[("parameters", m)].verdict == "agrees" for m in MODELS)
    assert rows[("accuracy_order", None)].published == "logistic < mlp < gru < cnn"
    assert all(rows[("test_accuracy_pct", m)].measured is not None for m in MODELS)
    assert (result.folder / "table.md").is_file() and (result.folder / "test_accuracy.png").is_file()
