"""The batch contract (issue 18): token ids, several and named inputs, per-token losses, streamed data.

Every number is checked against a plain-PyTorch reference written here (a model copy loaded with the point's
weights, one forward over the whole split, ``F.cross_entropy`` with ``ignore_index=-100``), never the engine.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossatlas.batch import IGNORE_INDEX, num_rows, take
from lossatlas.curvature.hvp import HessianOperator
from lossatlas.data import Dataset, load_data
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.errors import UserInputError
from lossatlas.landscape import surface
from tests import token_models as tm

MODELS = Path(tm.__file__)


def _npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return str(path)


def _directions(model: torch.nn.Module, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{k: 0.3 * torch.randn(p.shape, generator=g) for k, p in model.named_parameters()} for _ in range(2)]


def _moved(model: torch.nn.Module, dirs: list[dict[str, torch.Tensor]], a: float, b: float) -> torch.nn.Module:
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        for k, p in net.named_parameters():
            p.add_(a * dirs[0][k] + b * dirs[1][k])
    return net


def _reference(net: torch.nn.Module, x: object, y: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy over the whole split in one plain forward pass (float64 cross-entropy)."""
    with torch.no_grad():
        out = net(**x) if isinstance(x, dict) else net(*x) if isinstance(x, tuple) else net(x)
    logits = out["logits"] if isinstance(out, dict) else out[0] if isinstance(out, tuple) else out
    flat, labels = logits.double().flatten(0, -2), y.flatten()
    loss = F.cross_entropy(flat, labels, ignore_index=IGNORE_INDEX)
    kept = labels != IGNORE_INDEX
    accuracy = (flat.argmax(-1)[kept] == labels[kept]).double().mean()
    return float(loss), float(accuracy)


CASES = {
    "embedding on int64 tokens": ("embedding_classifier", lambda a: {"x": a["ids"], "y": a["labels"]}),
    "two inputs, model(a, b)": ("two_inputs", lambda a: {"x_0": a["a"], "x_1": a["b"], "y": a["pair"]}),
    "named inputs, model(**x)": ("named_inputs", lambda a: {"x_input_ids": a["ids"], "x_features": a["f"],
                                                             "y": a["labels"]}),
    "per-token LM, masked": ("tiny_lm", lambda a: {"x": a["ids"], "y": a["tokens"]}),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("batch_size", [1, 7, 60])
def test_surface_point_equals_plain_pytorch(case: str, batch_size: int, tmp_path: Path) -> None:
    builder, layout = CASES[case]
    arrays = tm.token_arrays(60)
    data = load_data(_npz(tmp_path / "d.npz", **layout(arrays)))
    torch.manual_seed(1)
    model = getattr(tm, builder)()
    dirs = _directions(model, 2)
    ds = surface(model, data, x="-0.5:0.5:3", y="0.25:0.25:1", directions=dirs,
                 eval_spec=EvalSpec(batch_size=batch_size, splits=("train",)))
    x, y = data.split("train")
    if isinstance(x, torch.Tensor):
        assert x.dtype == torch.int64  # token ids are never cast to float
    for a in (-0.5, 0.5):
        want_loss, want_acc = _reference(_moved(model, dirs, a, 0.25), x, y)
        got = ds.sel(x=a, y=0.25)
        assert abs(float(got["train_loss"]) - want_loss) <= 1e-6 * max(1.0, abs(want_loss))
        assert float(got["train_accuracy"]) == pytest.approx(want_acc, abs=1e-12)


def test_per_token_mean_is_over_unmasked_tokens_not_rows(tmp_path: Path) -> None:
    """Rows with many masked positions weigh less: the mean is over tokens (a mean of row means would differ)."""
    arrays = tm.token_arrays(60)
    data = load_data(_npz(tmp_path / "d.npz", x=arrays["ids"], y=arrays["tokens"]))
    assert data.per_token and data.num_classes == tm.VOCAB
    model = tm.tiny_lm()
    ev = Evaluator(model, data, EvalSpec(batch_size=13, splits=("train",)))
    got = ev.evaluate_one(ev.theta())["train_loss"]
    with torch.no_grad():
        logits = model(data.x_train)[0].double()
    per = F.cross_entropy(logits.flatten(0, -2), data.y_train.flatten(), ignore_index=-100, reduction="none")
    per = per.reshape(data.y_train.shape)
    kept = data.y_train != IGNORE_INDEX
    token_mean = float(per[kept].mean())
    row_mean = float(((per * kept).sum(1) / kept.sum(1)).mean())
    assert abs(got - token_mean) < 1e-6 and abs(token_mean - row_mean) > 1e-4
    assert ev.count("train") == int(kept.sum())


def test_hvp_of_the_language_model_equals_autograd(tmp_path: Path) -> None:
    arrays = tm.token_arrays(40)
    data = load_data(_npz(tmp_path / "d.npz", x=arrays["ids"], y=arrays["tokens"]))
    torch.manual_seed(3)
    model = tm.tiny_lm()
    op = HessianOperator(Evaluator(model, data, EvalSpec(batch_size=7, splits=("train",))), dtype="float64")
    names = list(op.theta)
    theta = [op.theta[k] for k in names]
    x, y = data.x_train, data.y_train
    net = copy.deepcopy(model).double()

    def loss(*params: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(net, dict(zip(names, params, strict=True)), (x,))[0]
        return F.cross_entropy(out.flatten(0, -2), y.flatten(), ignore_index=-100)

    v = tuple(torch.randn_like(t) for t in theta)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        _, want = torch.autograd.functional.hvp(loss, tuple(theta), v)
    got = op.matvec({k: t for k, t in zip(names, v, strict=True)})
    for k, w in zip(names, want, strict=True):
        torch.testing.assert_close(got[k], w, rtol=1e-5, atol=1e-5 * float(w.abs().max()) + 1e-12)
    value, _ = op.value_and_gradient()
    assert value == pytest.approx(float(loss(*theta)), rel=1e-10)


def test_streamed_dataset_equals_in_memory_bit_for_bit(tmp_path: Path) -> None:
    streamed = load_data(f"{MODELS}:lm_stream")
    arrays = tm.token_arrays(60)
    memory = load_data(_npz(tmp_path / "d.npz", x=arrays["ids"], y=arrays["tokens"]))
    assert streamed.streamed and streamed.per_token and streamed.num_classes == memory.num_classes
    model = tm.tiny_lm()
    dirs = _directions(model, 5)
    spec = EvalSpec(batch_size=16, splits=("train",))
    a = surface(model, streamed, x="-0.5:0.5:3", directions=dirs[:1], eval_spec=spec)
    b = surface(model, memory, x="-0.5:0.5:3", directions=dirs[:1], eval_spec=spec)
    assert np.array_equal(a["train_loss"].values, b["train_loss"].values)
    assert np.array_equal(a["train_accuracy"].values, b["train_accuracy"].values)
    op_s = HessianOperator(Evaluator(model, streamed, spec), dtype="float64", cache=False)
    op_m = HessianOperator(Evaluator(model, memory, spec), dtype="float64", cache=False)
    v = {k: torch.ones_like(t) for k, t in op_m.theta.items()}
    for k, t in op_m.matvec(v).items():
        assert torch.equal(op_s.matvec(v)[k], t)


def test_stream_reads_one_batch_at_a_time() -> None:
    from lossatlas.batch import Stream, StreamColumn

    source = tm.TokenStream(50)
    stream = Stream(source)
    x, y = StreamColumn(stream, 0), StreamColumn(stream, 1)
    xb, yb = take(x, slice(10, 20)), take(y, slice(10, 20))  # inputs and targets of a batch: one read each item
    assert source.reads == 10 and xb.shape == (10, tm.T) and yb.dtype == torch.int64
    assert num_rows(x) == 50 and torch.equal(xb, torch.from_numpy(source.ids[10:20]))


def test_subset_samples_whole_sequences(tmp_path: Path) -> None:
    arrays = tm.token_arrays(60)
    data = load_data(_npz(tmp_path / "d.npz", x=arrays["ids"], y=arrays["tokens"]))
    ev = Evaluator(tm.tiny_lm(), data, EvalSpec(subset=20, splits=("train",)))
    x, y = ev.splits["train"]
    assert num_rows(x) == 20 and y.shape == (20, tm.T)
    rows = [int(np.flatnonzero((arrays["ids"] == r.numpy()).all(1))[0]) for r in x]
    assert torch.equal(y, torch.from_numpy(arrays["tokens"][rows]))  # labels travel with their sequence
    out = ev.evaluate_one(ev.theta())
    assert out["train_loss_stderr"] > 0


BAD = {
    "ragged N": (lambda a: {"x_0": a["a"], "x_1": a["b"][:50], "y": a["pair"]}, "same number of rows"),
    "dict leaf of the wrong length": (lambda a: {"x_input_ids": a["ids"][:59], "x_features": a["f"],
                                                 "y": a["labels"]}, "same number of rows"),
    "labels out of range": (lambda a: {"x": a["ids"], "y": a["labels"] + 5}, "labels must lie in"),
    "float token ids": (lambda a: {"x": a["ids"].astype(np.float32), "y": a["labels"]}, "token ids must be integers"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_structures_are_refused_in_one_line(case: str, tmp_path: Path) -> None:
    layout, message = BAD[case]
    data_file = _npz(tmp_path / "d.npz", **layout(tm.token_arrays(60)))
    builder = "two_inputs" if "ragged" in case else "named_inputs" if "dict" in case else "embedding_classifier"
    done = subprocess.run([sys.executable, "-m", "lossatlas", "surface", "--model", f"{MODELS}:{builder}",
                           "--data", data_file, "--x=-1:1:3", "--out", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr, done.stderr


def test_dataset_refuses_ragged_structures_directly() -> None:
    x = {"a": torch.zeros(4, 2), "b": torch.zeros(3, 2)}
    with pytest.raises(UserInputError, match="same number of rows"):
        Dataset("d", x, torch.zeros(4, dtype=torch.int64), None, None, "classification", 2)


def test_streamed_data_on_two_dask_workers_equals_in_process(tmp_path: Path) -> None:
    """The streamed Dataset travels to the workers (by value, with its user module) and is read there."""
    import xarray as xr

    base = [sys.executable, "-m", "lossatlas", "surface", "--model", f"{MODELS}:tiny_lm", "--data",
            f"{MODELS}:lm_stream", "--x=-1:1:5"]
    for name, extra in (("local", []), ("dask", ["--workers", "2"])):
        done = subprocess.run([*base, *extra, "--out", str(tmp_path / f"{name}.zarr")], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = (xr.open_zarr(tmp_path / f"{n}.zarr", consolidated=False) for n in ("local", "dask"))
    assert np.array_equal(a["train_loss"].values, b["train_loss"].values)


class _WideStream(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """64 items of 4096 float32 features (16 KiB each), labels i mod 3."""

    num_classes = 3

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.randn(4096, generator=torch.Generator().manual_seed(i)), i % 3


def test_a_streamed_batch_is_bounded_by_the_memory_budget() -> None:
    from lossatlas.data import _from_streams

    streamed = _from_streams("wide", _WideStream(), None)
    model = torch.nn.Sequential(torch.nn.Linear(4096, 3))
    ev = Evaluator(model, streamed, EvalSpec(splits=("train",), batch_size=1000, memory_bytes=1 << 20))
    assert ev.batch_size == (1 << 20) // (8 * 4096 * 4)  # 8 rows: a batch takes at most 1/8 of the budget
    x = torch.stack([_WideStream()[i][0] for i in range(64)])
    y = torch.arange(64) % 3
    memory = Dataset("wide", x, y, None, None, "classification", 3)
    want = Evaluator(model, memory, EvalSpec(splits=("train",), batch_size=1000)).evaluate_one(ev.theta())
    assert ev.evaluate_one(ev.theta())["train_loss"] == pytest.approx(want["train_loss"], rel=1e-12)
