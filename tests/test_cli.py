"""The CLI: each bad input is one line on stderr with exit code 2 and no traceback; good runs work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lossatlas.params import save_checkpoint
from lossatlas.store import open_surface


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lossatlas", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and lines[0].startswith("error:"), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def toy_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("npz") / "toy.npz"
    np.savez(path, x=rng.normal(size=(60, 5)).astype(np.float32), y=rng.integers(0, 3, 60),
             x_test=rng.normal(size=(20, 5)).astype(np.float32), y_test=rng.integers(0, 3, 20))
    return path


BASE = ["surface", "--model", "zoo:mlp:widths=8"]


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--data", "TOY", "--x", "-1:1"], ["--x must look like MIN:MAX:N"]),
        (["--data", "TOY", "--x", "1:-1:5"], ["MAX must be larger than MIN"]),
        (["--data", "nosuchdata"], ["nosuchdata"]),
        (["--data", "TOY", "--model", "zoo:nosuchnet"], ["nosuchnet"]),
        (["--data", "TOY", "--checkpoint", "missing.safetensors"], ["missing.safetensors", "does not exist"]),
        (["--data", "missing.npz"], ["missing.npz"]),
        (["--data", "BAD"], ["bad.npz"]),
        (["--data", "TOY", "--norm", "filters"], ["filters"]),
        (["--data", "TOY", "--batch-size", "0"], ["--batch-size"]),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, toy_npz, extra, fragments) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file")
    args = [a.replace("TOY", str(toy_npz)).replace("BAD", str(bad)) for a in extra]
    if "--model" in args:
        i = args.index("--model")
        cmd = ["surface", "--model", args[i + 1], *args[:i], *args[i + 2:]]
    else:
        cmd = [*BASE, *args]
    proc = run_cli(*cmd, "--out", str(tmp_path / "s.zarr"), cwd=tmp_path)
    assert_one_line_error(proc, *fragments)


def test_checkpoint_mismatch_names_parameter(tmp_path, toy_npz) -> None:
    other = nn.Sequential(nn.Flatten(), nn.Linear(5, 4))
    ckpt = save_checkpoint(other, tmp_path / "other.safetensors")
    proc = run_cli(*BASE, "--data", str(toy_npz), "--checkpoint", str(ckpt), "--out", str(tmp_path / "s.zarr"))
    assert_one_line_error(proc, "does not match the model", "parameter '")


def test_train_surface_interpolate_plot_end_to_end(tmp_path, toy_npz) -> None:
    run = tmp_path / "run"
    proc = run_cli("train", "--model", "zoo:mlp:widths=8", "--data", str(toy_npz), "--epochs", "3",
                   "--batch-size", "16", "--lr", "0.1", "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    init, final = run / "checkpoints" / "epoch_0000.safetensors", run / "checkpoints" / "epoch_0003.safetensors"
    assert init.exists() and final.exists()
    proc = run_cli(*BASE, "--data", str(toy_npz), "--checkpoint", str(final), "--x", "-1:1:5", "--y", "-1:1:3",
                   "--seed", "4", "--out", str(tmp_path / "s.zarr"))
    assert proc.returncode == 0, proc.stderr
    ds = open_surface(tmp_path / "s.zarr")
    assert ds["train_loss"].shape == (5, 3) and ds.attrs["seed"] == 4
    assert ds.attrs["model"] == "zoo:mlp:widths=8" and len(ds.attrs["checkpoint_sha256"]) == 64
    # same --out, other configuration: refused, then accepted with --overwrite
    proc = run_cli(*BASE, "--data", str(toy_npz), "--checkpoint", str(final), "--x", "-1:1:5", "--y", "-1:1:3",
                   "--seed", "5", "--out", str(tmp_path / "s.zarr"))
    assert_one_line_error(proc, "different configuration", "--overwrite")
    proc = run_cli("interpolate", "--model", "zoo:mlp:widths=8", "--data", str(toy_npz), "--checkpoint",
                   str(init), "--checkpoint2", str(final), "--x", "0:1:5", "--out", str(tmp_path / "i.zarr"))
    assert proc.returncode == 0, proc.stderr
    interp = open_surface(tmp_path / "i.zarr")
    assert interp["train_loss"].shape == (5,)
    proc = run_cli("plot", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "png"))
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "png").glob("*.png"))) >= 3
    proc = run_cli("plot", str(tmp_path / "i.zarr"), "--out", str(tmp_path / "png"))
    assert proc.returncode == 0 and (tmp_path / "png" / "i_1d.png").exists()


def test_unknown_option_is_one_line(tmp_path) -> None:
    proc = run_cli("surface", "--modle", "x")
    assert_one_line_error(proc, "--modle")


def test_help_lists_commands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("train", "surface", "interpolate", "plot", "demo"):
        assert command in proc.stdout


def test_library_never_touches_global_rng(toy_npz, tmp_path) -> None:
    from lossatlas.data import load_data
    from lossatlas.landscape import surface
    from lossatlas.models import build_model

    state = torch.get_rng_state()
    data = load_data(str(toy_npz))
    net = build_model("zoo:mlp:widths=8", input_shape=data.input_shape, output_dim=data.output_dim)
    surface(net, data, x="-1:1:3", out=tmp_path / "r.zarr")
    assert torch.equal(state, torch.get_rng_state())
