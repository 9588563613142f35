"""A surface killed with SIGKILL mid-run resumes to exactly the numbers of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from lossatlas.store import COMPLETED, open_surface

HERE = Path(__file__).parent


def _completed(store: Path) -> int:
    try:
        return int(np.asarray(zarr.open_group(str(store), mode="r")[COMPLETED][...]).sum())
    except Exception:  # noqa: BLE001 - not created yet
        return 0


@pytest.mark.parametrize("kind", ["features", "tokens"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, kind: str) -> None:
    """Float features, and int64 token ids with per-token labels (-100 masked); the token run's uninterrupted
    reference runs on two Dask workers, so the resumed in-process run must also equal the scaled-out one."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "d.npz"
    builder, extra = "build", []
    if kind == "tokens":
        ids = rng.integers(0, 7, size=(40, 6))
        labels = np.where(rng.random((40, 6)) < 0.3, -100, rng.integers(0, 7, size=(40, 6)))
        np.savez(npz, x=ids, y=labels)
        builder, extra = "build_tokens", ["--workers", "2"]
    else:
        np.savez(npz, x=rng.normal(size=(40, 5)).astype(np.float32), y=rng.integers(0, 3, 40))
    args = ["surface", "--model", f"{HERE / 'slow_model.py'}:{builder}", "--data", str(npz), "--x", "-1:1:12",
            "--y", "-1:1:4", "--batch-size", "20", "--seed", "2"]
    cmd = [sys.executable, "-m", "lossatlas", *args]
    full = subprocess.run([*cmd, *extra, "--out", str(tmp_path / "full.zarr")], capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == 0, full.stderr

    out = tmp_path / "cut.zarr"
    proc = subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _completed(out) < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make the model slower"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = _completed(out)
    assert 0 < done_at_kill < 48

    resumed = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a, b = open_surface(tmp_path / "full.zarr"), open_surface(out)
    for var in ("train_loss", "train_accuracy"):
        np.testing.assert_array_equal(b[var].values, a[var].values)
    assert bool(b[COMPLETED].all())


def test_ctrl_c_with_workers_stops_cleanly_and_resumes(tmp_path) -> None:
    """Ctrl-C during a ``--workers 2`` surface: one clear line, exit 130, no traceback; the rerun completes with the
    numbers of an uninterrupted in-process run. SIGINT goes to the whole process group, as a terminal sends it, so
    the Dask worker processes get it too (each printed a ``KeyboardInterrupt`` traceback before they ignored it)."""
    rng = np.random.default_rng(1)
    npz = tmp_path / "d.npz"
    np.savez(npz, x=rng.normal(size=(40, 5)).astype(np.float32), y=rng.integers(0, 3, 40))
    args = ["surface", "--model", f"{HERE / 'slow_model.py'}:build", "--data", str(npz), "--x", "-1:1:16",
            "--y", "-1:1:4", "--batch-size", "20", "--seed", "2"]
    cmd = [sys.executable, "-m", "lossatlas", *args]
    full = subprocess.run([*cmd, "--out", str(tmp_path / "full.zarr")], capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    out = tmp_path / "cut.zarr"
    proc = subprocess.Popen([*cmd, "--workers", "2", "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 180
    while _completed(out) < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    for noise in ("Traceback", "Error", "ERROR", "KeyboardInterrupt"):  # also Dask's log lines about cancelled keys
        assert noise not in err, err
    assert "interrupted:" in err and "run the same command again to resume" in err
    assert 0 < _completed(out) < 64
    resumed = subprocess.run([*cmd, "--workers", "2", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a, b = open_surface(tmp_path / "full.zarr"), open_surface(out)
    np.testing.assert_array_equal(b["train_loss"].values, a["train_loss"].values)
