"""``--model hf:`` end to end (issue 18): a tiny GPT-2 and a tiny BERT written by the tests; surface, hessian --top 2,
interpolate and curve run from the CLI, and a surface point equals the model's own ``loss`` output."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

import xarray as xr  # noqa: E402

from lossatlas.params import save_checkpoint  # noqa: E402
from tests import hf_fixtures as hf  # noqa: E402


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "lossatlas", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def problems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("hf")
    gpt2 = hf.write_tiny_gpt2(root / "gpt2")
    bert = hf.write_tiny_bert(root / "bert", num_labels=3)
    out = {"gpt2": {"dir": gpt2, "data": hf.write_lm_npz(root / "lm.npz")},
           "bert": {"dir": bert, "data": hf.write_classification_npz(root / "cls.npz")}}
    for name, model in (("gpt2", hf.tiny_gpt2(0)), ("bert", hf.tiny_bert(0, num_labels=3))):
        save_checkpoint(model, root / f"{name}_a.safetensors")
        moved = copy.deepcopy(model)
        with torch.no_grad():
            g = torch.Generator().manual_seed(1)
            for p in moved.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        save_checkpoint(moved, root / f"{name}_b.safetensors")
        out[name].update(a=root / f"{name}_a.safetensors", b=root / f"{name}_b.safetensors", root=root)
    return out


def _reference_loss(name: str, problem: dict[str, Path], alpha: float) -> float:
    """The model's own ``loss`` on the whole train split at θ_A + α (θ_B − θ_A) (one batch: equal-size batches of
    a token mean would need weighting)."""
    from safetensors.torch import load_file

    arrays = np.load(problem["data"])
    model = hf.tiny_gpt2(0) if name == "gpt2" else hf.tiny_bert(0, num_labels=3)
    a, b = load_file(str(problem["a"])), load_file(str(problem["b"]))
    model.load_state_dict({k: a[k] + alpha * (b[k] - a[k]) for k in a})
    model.eval()
    ids, mask = torch.from_numpy(arrays["x_input_ids"]), torch.from_numpy(arrays["x_attention_mask"])
    labels = ids.masked_fill(mask == 0, -100) if name == "gpt2" else torch.from_numpy(arrays["y"])
    with torch.no_grad():
        return float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_interpolate_equals_the_models_own_loss(name: str, problems: dict[str, dict[str, Path]]) -> None:
    p = problems[name]
    out = p["root"] / f"{name}_interp.zarr"
    _cli("interpolate", "--model", f"hf:{p['dir']}", "--data", str(p["data"]), "--checkpoint", str(p["a"]),
         "--checkpoint2", str(p["b"]), "--x=-0.5:1:4", "--out", str(out), "--batch-size", "5")
    ds = xr.open_zarr(out, consolidated=False)
    for alpha in (-0.5, 0.5):
        got = float(ds["train_loss"].sel(x=alpha, method="nearest"))
        assert got == pytest.approx(_reference_loss(name, p, alpha), rel=2e-6)


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_surface_hessian_and_curve_run(name: str, problems: dict[str, dict[str, Path]]) -> None:
    p = problems[name]
    model = ["--model", f"hf:{p['dir']}", "--data", str(p["data"]), "--checkpoint", str(p["a"])]
    _cli("surface", *model, "--x=-0.5:0.5:3", "--y=-0.5:0.5:3", "--out", str(p["root"] / f"{name}_s.zarr"))
    ds = xr.open_zarr(p["root"] / f"{name}_s.zarr", consolidated=False)
    assert np.isfinite(ds["train_loss"].values).all()
    centre = float(ds["train_loss"].sel(x=0.0, y=0.0))
    assert centre == pytest.approx(_reference_loss(name, p, 0.0), rel=2e-6)
    _cli("hessian", *model, "--top", "2", "--out", str(p["root"] / f"{name}_h.zarr"))
    h = xr.open_zarr(p["root"] / f"{name}_h.zarr", consolidated=False)
    assert h.attrs and any("eigen" in v or "lambda" in v for v in h.data_vars)
    _cli("curve", *model, "--checkpoint2", str(p["b"]), "--epochs", "1", "--points", "5",
         "--out", str(p["root"] / f"{name}_curve"))
    assert (p["root"] / f"{name}_curve" / "curve.zarr").exists()


def test_a_saved_model_is_not_called_untrained(problems: dict[str, dict[str, Path]]) -> None:
    """hf:DIR loads the weights saved in DIR: no 'untrained weights' warning, and the store says where they came
    from; hf:config.json draws random weights and is called untrained."""
    p = problems["gpt2"]
    done = _cli("surface", "--model", f"hf:{p['dir']}", "--data", str(p["data"]), "--x=-1:1:3",
                "--out", str(p["root"] / "saved.zarr"))
    assert "untrained" not in done.stdout + done.stderr
    assert xr.open_zarr(p["root"] / "saved.zarr", consolidated=False).attrs["weights"].startswith("saved in")
    done = _cli("surface", "--model", f"hf:{p['dir'] / 'config.json'}", "--data", str(p["data"]), "--x=-1:1:3",
                "--out", str(p["root"] / "random.zarr"))
    assert "untrained" in done.stdout + done.stderr
