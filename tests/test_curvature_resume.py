"""``lossatlas hessian`` stopped with Ctrl-C keeps its progress beside --out; the same command continues it and
ends with the numbers of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lossatlas.curvature.analysis import HessianSpec, hessian_analysis, open_hessian
from lossatlas.curvature.resume import ResumeDir
from lossatlas.errors import UserInputError

HERE = Path(__file__).parent


@pytest.fixture
def npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.normal(size=(40, 5)).astype(np.float32), y=rng.integers(0, 3, 40))
    return path


def hessian_cmd(npz: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lossatlas", "hessian", "--model", f"{HERE / 'curvature_slow_model.py'}:build",
            "--data", str(npz), "--batch-size", "40", "--top", "3", "--tol", "1e-12", *extra]


def test_ctrl_c_stops_cleanly_and_the_rerun_continues_to_identical_numbers(tmp_path, npz) -> None:
    full = subprocess.run([*hessian_cmd(npz), "--out", str(tmp_path / "full.zarr")], capture_output=True, text=True,
                          timeout=600)
    assert full.returncode == 0, full.stderr
    out = tmp_path / "cut.zarr"
    partial = tmp_path / "cut.zarr.partial"
    env = {**os.environ, "LOSSATLAS_CHECKPOINT_EVERY": "0"}  # keep the running state after every product
    proc = subprocess.Popen([*hessian_cmd(npz), "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.time() + 300
    while not list(partial.glob("*.state.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the job ended before it could be interrupted; make the products slower"
    time.sleep(0.1)  # a few products into the run
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    said = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert len(said) == 1 and "kept in OUT.partial" in said[0] and "run the same command again" in said[0], err
    assert not out.exists() and (partial / "config.json").is_file()
    assert (partial / "top-3.state.pt").is_file()  # stopped inside Lanczos: its state is kept

    resumed = subprocess.run([*hessian_cmd(npz), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"continuing the interrupted job kept in {partial}" in resumed.stderr
    assert not partial.exists()
    a, b = open_hessian(tmp_path / "full.zarr"), open_hessian(out)
    for var in ("top_eigenvalues", "top_residuals", "top_converged"):
        np.testing.assert_array_equal(b[var].values, a[var].values)
    assert b.attrs["hvp_count"] == a.attrs["hvp_count"] and b.attrs["config_hash"] == a.attrs["config_hash"]


def test_progress_of_another_job_is_refused_and_overwrite_discards_it(tmp_path, npz) -> None:
    from lossatlas.data import load_data
    from lossatlas.models import build_model

    data = load_data(str(npz))
    net = build_model("zoo:mlp:widths=4", input_shape=data.input_shape, output_dim=data.output_dim)
    folder = tmp_path / "h.zarr.partial"
    ResumeDir(folder, "another job")
    with pytest.raises(UserInputError, match="holds the progress of a different hessian job"):
        hessian_analysis(net, data, HessianSpec(top=1), resume=folder)
    ds, _ = hessian_analysis(net, data, HessianSpec(top=1), resume=folder, overwrite=True)
    assert ds["top_eigenvalues"].shape == (1,) and (folder / "top-1.pt").is_file()
