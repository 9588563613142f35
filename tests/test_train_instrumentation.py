"""Training instrumentation: optimiser switching (Im et al.), weight norms and histograms (Li et al. Fig. 2),
sharpness beside 2/lr, extending a finished run, --overwrite, --device. Each checked against an independent
reference: a plain torch training loop, norms and histograms recomputed from the checkpoint files, the dense
float64 Hessian."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lossatlas.errors import UserInputError
from lossatlas.params import read_state_dict
from lossatlas.testing.reference import dense_hessian, spectrum
from lossatlas.training import TrainSpec, checkpoint_path, list_checkpoints, train
from lossatlas.training_logs import HISTOGRAMS, SHARPNESS, append_rows, read_histograms
from tests.conftest import make_classification, mlp

SWITCH = TrainSpec(epochs=4, batch_size=16, lr=0.1, momentum=0.5, seed=2, switch_at=2, optimizer2="adam",  # type: ignore[arg-type]
                   lr2=0.01, track_sharpness=9, sharpness_samples=40)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def plain_loop(data, spec: TrainSpec) -> dict[str, torch.Tensor]:
    """The same schedule written out by hand: SGD for ``switch_at`` epochs, then a fresh Adam."""
    net = mlp()
    x, y = data.split("train")
    g = torch.Generator().manual_seed(spec.seed)
    opt: torch.optim.Optimizer = torch.optim.SGD(net.parameters(), lr=spec.lr, momentum=spec.momentum)
    for epoch in range(1, spec.epochs + 1):
        if epoch == spec.switch_at + 1:
            opt = torch.optim.Adam(net.parameters(), lr=spec.lr2)
        net.train()
        order = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], spec.batch_size):
            idx = order[i:i + spec.batch_size]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx], reduction="none").mean().backward()
            opt.step()
    return {k: v.detach() for k, v in net.state_dict().items()}


def test_switch_matches_a_plain_loop_and_resume_across_the_switch_is_bit_exact(tmp_path) -> None:
    data = make_classification(n=70)
    train(mlp(), data, SWITCH, tmp_path / "full")
    final = read_state_dict(checkpoint_path(tmp_path / "full", 4))
    ref = plain_loop(data, SWITCH)
    assert all(torch.equal(final[k], ref[k]) for k in ref)
    no_switch = plain_loop(data, TrainSpec(**{**SWITCH.__dict__, "switch_at": 99}))  # type: ignore[arg-type]
    assert not all(torch.equal(final[k], no_switch[k]) for k in ref)  # the switch changed the trajectory

    class Stop(Exception):
        pass

    def stop_at_switch(epoch: int, _n: int, metrics: dict[str, float]) -> None:
        if epoch == 2 and metrics:
            raise Stop

    with pytest.raises(Stop):
        train(mlp(), data, SWITCH, tmp_path / "cut", progress=stop_at_switch)
    train(mlp(), data, SWITCH, tmp_path / "cut")
    cut = read_state_dict(checkpoint_path(tmp_path / "cut", 4))
    assert all(torch.equal(final[k], cut[k]) for k in final)
    for name in ("metrics.csv", SHARPNESS):
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "full" / name).read_text()
    log = rows(tmp_path / "full" / SHARPNESS)
    steps_per_epoch = 5  # 70 samples in batches of 16
    assert [int(r["step"]) for r in log] == list(range(0, 4 * steps_per_epoch + 1, 9))
    assert [r["optimizer"] for r in log] == ["sgd", "sgd", "adam"]  # steps 0, 9 (epoch 2), 18 (epoch 4)
    assert [float(r["two_over_lr"]) for r in log] == [20.0, 20.0, 200.0]


def test_sharpness_equals_the_dense_hessian_top_eigenvalue_on_the_subset(tmp_path) -> None:
    data = make_classification(n=30)
    spec = TrainSpec(epochs=1, batch_size=10, lr=0.1, seed=0, track_sharpness=3, sharpness_samples=1000)
    train(mlp(), data, spec, tmp_path / "r")
    log = rows(tmp_path / "r" / SHARPNESS)
    assert [int(r["step"]) for r in log] == [0, 3]
    net = mlp()
    net.load_state_dict(read_state_dict(checkpoint_path(tmp_path / "r", 1)))
    top = float(spectrum(dense_hessian(net, lambda o, t: torch.nn.functional.cross_entropy(o, t, reduction="none"),
                                       *data.split("train")))[-1])
    assert log[-1]["converged"] == "1"
    assert abs(float(log[-1]["lambda_max"]) - top) <= 1e-3 * abs(top)


def test_norms_and_histograms_match_the_checkpoints(tmp_path) -> None:
    data = make_classification(n=50)
    train(mlp(), data, TrainSpec(epochs=3, batch_size=16, lr=0.2, seed=1, save_every=2), tmp_path / "r")
    log = rows(tmp_path / "r" / "metrics.csv")
    hist = read_histograms(tmp_path / "r" / HISTOGRAMS)
    assert hist is not None
    assert hist["epochs"].tolist() == [0, 2, 3]
    for epoch in (0, 2, 3):
        state = read_state_dict(checkpoint_path(tmp_path / "r", epoch))
        row = log[epoch]
        flat = torch.cat([v.reshape(-1).double() for v in state.values()])
        assert float(row["param_norm"]) == pytest.approx(float(flat.norm()), rel=1e-12)
        for name, v in state.items():
            assert float(row[f"norm:{name}"]) == pytest.approx(float(v.double().norm()), rel=1e-12)
        weights = np.concatenate([v.double().numpy().ravel() for v in state.values() if v.dim() >= 2])
        i = hist["epochs"].tolist().index(epoch)
        np.testing.assert_array_equal(hist["counts"][i], np.histogram(weights, bins=hist["edges"])[0])
        assert hist["counts"][i].sum() + hist["below"][i] + hist["above"][i] == weights.size
    w0 = np.concatenate([v.numpy().ravel() for v in read_state_dict(checkpoint_path(tmp_path / "r", 0)).values()
                         if v.dim() >= 2])
    assert hist["edges"][-1] == pytest.approx(3 * np.abs(w0).max())


def test_extending_a_finished_run_equals_the_longer_run_and_overwrite_starts_over(tmp_path) -> None:
    data = make_classification(n=60)
    short, long = (TrainSpec(epochs=e, batch_size=16, lr=0.1, seed=4, switch_at=2, optimizer2="rmsprop",  # type: ignore[arg-type]
                             lr2=0.01) for e in (3, 5))
    train(mlp(), data, long, tmp_path / "long")
    train(mlp(), data, short, tmp_path / "ext")
    calls: list[int] = []
    train(mlp(), data, short, tmp_path / "ext", progress=lambda e, n, m: calls.append(e))
    assert calls == [3]  # a finished run reports 3/3 and trains nothing
    train(mlp(), data, long, tmp_path / "ext")
    a, b = (read_state_dict(checkpoint_path(tmp_path / d, 5)) for d in ("long", "ext"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "ext" / "metrics.csv").read_text() == (tmp_path / "long" / "metrics.csv").read_text()
    with pytest.raises(UserInputError, match="already holds 5 epochs"):
        train(mlp(), data, short, tmp_path / "ext")
    with pytest.raises(UserInputError, match="different configuration"):
        train(mlp(), data, TrainSpec(epochs=6, batch_size=16, lr=0.1, seed=4), tmp_path / "ext")
    train(mlp(), data, TrainSpec(epochs=1, batch_size=16, lr=0.1, seed=4), tmp_path / "ext", overwrite=True)
    assert [p.name for p in list_checkpoints(tmp_path / "ext")] == ["epoch_0000.safetensors", "epoch_0001.safetensors"]
    assert [r["epoch"] for r in rows(tmp_path / "ext" / "metrics.csv")] == ["0", "1"]


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"switch_at": 2}, "--switch-at needs --optimizer2"),
    ({"optimizer2": "adam"}, "only apply with --switch-at"),
    ({"switch_at": 0, "optimizer2": "adam"}, "--switch-at must be"),
    ({"switch_at": 1, "optimizer2": "lbfgs"}, "--optimizer2 must be one of sgd, adam, rmsprop"),
    ({"switch_at": 1, "optimizer2": "adam", "lr2": 0}, "--lr2"),
    ({"track_sharpness": -1}, "--track-sharpness"),
])
def test_bad_instrumentation_options(kwargs, fragment) -> None:
    with pytest.raises(UserInputError, match=fragment):
        TrainSpec(**kwargs)


def cli(*args: str) -> Any:
    """``lossatlas train`` in-process (typer's CliRunner; stdout and stderr kept apart)."""
    from typer.testing import CliRunner

    from lossatlas.cli import app

    return CliRunner().invoke(app, ["train", "--model", "zoo:mlp:widths=4", "--data", "xor", "--batch-size", "50",
                                    *args])


def test_cli_device_overwrite_and_finished_run(tmp_path) -> None:
    if not torch.cuda.is_available():
        proc = cli("--out", str(tmp_path / "g"), "--device", "cuda")
        assert proc.exit_code == 2 and proc.stderr.count("\n") == 1 and "no CUDA device" in proc.stderr
    out = str(tmp_path / "r")
    assert cli("--out", out, "--epochs", "2").exit_code == 0
    proc = cli("--out", out, "--epochs", "2")
    assert proc.exit_code == 0 and "already holds all 2 epochs" in proc.stdout
    assert "0/2" not in proc.stderr and "2/2" in proc.stderr
    proc = cli("--out", out, "--epochs", "2", "--lr", "0.3")
    assert proc.exit_code == 2 and "--overwrite" in proc.stderr
    assert cli("--out", out, "--epochs", "1", "--lr", "0.3", "--overwrite").exit_code == 0
    assert len(list_checkpoints(out)) == 2


def test_report_training_section_shows_norms_histograms_sharpness_and_the_switch(tmp_path) -> None:
    from lossatlas.viz.report.builder import collect_sections

    data = make_classification(n=40)
    spec = TrainSpec(epochs=3, batch_size=20, lr=0.1, seed=0, switch_at=1, optimizer2="adam", lr2=0.01)  # type: ignore[arg-type]
    train(mlp(), data, spec, tmp_path / "run")
    # a sharpness log as train writes it with --track-sharpness 2 (its numbers are tested above)
    rows_ = [{"step": s, "epoch": -(-s // 2), "lambda_max": 1.0 + s, "residual": 1e-4, "converged": 1, "matvecs": 9,
              "optimizer": "sgd" if s <= 2 else "adam", "lr": 0.1 if s <= 2 else 0.01,
              "two_over_lr": 20.0 if s <= 2 else 200.0} for s in (0, 2, 4, 6)]
    append_rows(tmp_path / "run" / SHARPNESS, rows_)
    sections, _, problems = collect_sections(tmp_path)
    assert not problems
    (section,) = [s for s in sections if s.title.startswith("Training")]
    titles = [f.layout.title.text for f in section.figures]
    assert any("weight norms" in t for t in titles) and any("histograms" in t for t in titles)
    assert any("sharpness" in t for t in titles)
    loss_fig = section.figures[0]
    assert {t.name for t in loss_fig.data} == {"train loss", "test loss", "train accuracy (%)", "test accuracy (%)"}
    assert any("switch to adam" in a.text for a in loss_fig.layout.annotations)
    sharp = next(f for f in section.figures if "sharpness" in f.layout.title.text)
    np.testing.assert_allclose(sharp.data[1].y, [20.0, 20.0, 200.0, 200.0])  # steps 0, 2 with SGD; 4, 6 with Adam
    assert "3 checkpoints" not in section.html and "4 checkpoints" in section.html


def test_a_diverged_run_logs_nan_sharpness_and_goes_on(tmp_path) -> None:
    data = make_classification(n=20)
    train(mlp(), data, TrainSpec(epochs=2, batch_size=10, lr=1e12, momentum=0.0, track_sharpness=2), tmp_path / "r")
    log = rows(tmp_path / "r" / SHARPNESS)
    assert [r["step"] for r in log] == ["0", "2", "4"]
    assert np.isfinite(float(log[0]["lambda_max"])) and log[-1]["lambda_max"] == "nan" and log[-1]["converged"] == "0"
