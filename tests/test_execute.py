"""Executors: Dask results equal in-process ones, a killed worker loses nothing, resume with --workers.

These tests start real worker processes (``LocalCluster(processes=True)``) and check that none is left
running afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import xarray as xr
import zarr
from typer.testing import CliRunner

from lossatlas.cli import app
from lossatlas.directions import DirectionSpec
from lossatlas.engine import EvalSpec
from lossatlas.errors import UserInputError
from lossatlas.execute import (
    DaskExecutor,
    InProcessExecutor,
    make_executor,
    parse_memory,
    region_key,
    worker_device,
)
from lossatlas.grid import grid_units
from lossatlas.landscape import interpolate, surface
from lossatlas.models import build_model
from lossatlas.store import COMPLETED
from tests.conftest import make_classification, mlp

GRID = dict(x="-1:1:16", y="-1:1:8", directions=DirectionSpec(seed=1))


def _assert_same(a: xr.Dataset, b: xr.Dataset) -> None:
    assert set(a.data_vars) == set(b.data_vars)
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=str(v))


@pytest.fixture(scope="module")
def cluster():
    """``--workers 2``: a LocalCluster of 2 processes × 1 thread (what the CLI starts)."""
    executor = make_executor(workers=2, torch_threads=1)
    assert isinstance(executor, DaskExecutor) and executor.n_workers == 2
    client = executor.client
    seen: set[int] = set()
    yield client, seen
    seen.update(client.run(os.getpid).values())
    executor.close()
    _assert_gone(seen)


def _assert_gone(pids: set[int], wait: float = 15.0) -> None:
    """Every worker process must exit; any left is killed (it is ours) and the test fails."""
    deadline = time.monotonic() + wait
    alive = {p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = {p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, f"worker processes left running: {sorted(alive)}"


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """A problem heavy enough that a chunk takes a while, and its in-process surface."""
    data = make_classification(n=6000, n_test=500, d=6, seed=2)
    net = mlp(hidden=64, seed=3)
    ref = surface(net, data, out=tmp_path_factory.mktemp("ref") / "ref.zarr", **GRID)
    return data, net, ref


def test_make_executor_choices_and_one_line_errors() -> None:
    assert isinstance(make_executor(), InProcessExecutor)
    for kwargs, pattern in [({"workers": 0}, "--workers"), ({"workers": -2}, "--workers"),
                            ({"workers": 2, "scheduler": "tcp://h:1"}, "not both"),
                            ({"scheduler": "not an address"}, "--scheduler")]:
        with pytest.raises(UserInputError, match=pattern) as info:
            make_executor(**kwargs)
        assert "\n" not in str(info.value)
    assert parse_memory("2GB") == 2 * 10**9 and parse_memory("512MiB") == 2**29 and parse_memory("1e6") == 10**6
    for bad in ["lots", "-1GB", "0", "2XB", ""]:
        with pytest.raises(UserInputError, match="--memory"):
            parse_memory(bad)
    assert worker_device("cpu", 3, 4) == "cpu" and worker_device("cuda", 3, 2) == "cuda:1"
    assert worker_device("cuda", "SLURMCluster-0-1", 1) == "cuda:0"


def test_scheduler_with_nothing_listening_is_one_line_error_within_10s() -> None:
    """Issue 5 acceptance: a hard bound on how long a wrong --scheduler keeps the user waiting."""
    start = time.monotonic()
    result = CliRunner().invoke(app, ["surface", "--model", "zoo:mlp", "--data", "xor", "--x", "-1:1:3",
                                      "--out", "unused.zarr", "--scheduler", "tcp://127.0.0.1:9"])
    assert time.monotonic() - start < 10
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach a Dask scheduler at tcp://127.0.0.1:9" in lines[0], result.output


def test_dask_surface_and_interpolation_equal_in_process(tmp_path, cluster, problem) -> None:
    client, seen = cluster
    data, net, ref = problem
    executor = DaskExecutor(client, torch_threads=1)
    got = surface(net, data, out=tmp_path / "dask.zarr", executor=executor, **GRID)
    _assert_same(ref, got)
    small = make_classification()
    spec = EvalSpec(subset=0.5, batch_size=16)  # the *_stderr variables travel too
    a = interpolate(mlp(seed=0), mlp(seed=1), small, x="-0.5:1.5:19", eval_spec=spec, out=tmp_path / "i0.zarr")
    b = interpolate(mlp(seed=0), mlp(seed=1), small, x="-0.5:1.5:19", eval_spec=spec, out=tmp_path / "i1.zarr",
                    executor=executor)
    _assert_same(a, b)
    assert "train_loss_stderr" in b
    # a model class from a user's file.py (a module the workers cannot import) travels by value
    (tmp_path / "user_net.py").write_text(USER_MODEL)
    user = build_model(f"{tmp_path / 'user_net.py'}:build", input_shape=(6,), output_dim=3, seed=0)
    _assert_same(surface(user, small, x="-1:1:5", out=tmp_path / "u0.zarr"),
                 surface(user, small, x="-1:1:5", out=tmp_path / "u1.zarr", executor=executor))
    seen.update(client.run(os.getpid).values())


USER_MODEL = """
import torch
from torch import nn


class Tanh3(nn.Module):
    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * torch.tanh(self.lin(x))


def build(input_shape, output_dim):
    return Tanh3(input_shape[0], output_dim)
"""


def test_units_are_yielded_exactly_once(cluster) -> None:
    client, _ = cluster
    axes = {"x": np.linspace(-1, 1, 23)}
    units = grid_units(axes, block=3)
    out = list(DaskExecutor(client).run(lambda unit: {"twice": 2 * unit.coords[:, 0]}, units))
    assert sorted(region_key(u) for u, _ in out) == sorted(region_key(u) for u in units)
    for unit, values in out:
        np.testing.assert_array_equal(values["twice"], 2 * unit.coords[:, 0])


def test_killed_worker_loses_no_point(tmp_path, cluster, problem) -> None:
    """Issue 5 acceptance: kill one worker process mid-run; every point equals the in-process result."""
    client, seen = cluster
    data, net, ref = problem
    client.wait_for_workers(2)
    pids = client.run(os.getpid)
    seen.update(pids.values())
    calls: list[tuple[int, int]] = []
    killed: list[int] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if done > 0 and not killed:  # after the first chunk is written: kill a worker that is busy
            busy = [addr for addr, keys in client.processing().items() if keys and addr in pids]
            assert busy, "no worker had a chunk in flight"
            killed.append(pids[busy[0]])
            os.kill(pids[busy[0]], signal.SIGKILL)

    got = surface(net, data, out=tmp_path / "kill.zarr", executor=DaskExecutor(client, torch_threads=1),
                  progress=progress, **GRID)
    _assert_same(ref, got)
    assert bool(got[COMPLETED].all())
    n_units = ref.sizes["x"]
    assert len(calls) == n_units + 1 and calls[-1] == (ref[COMPLETED].size, ref[COMPLETED].size)
    client.wait_for_workers(2)  # the nanny restarts the killed worker
    now = client.run(os.getpid)
    assert killed and killed[0] not in now.values()
    seen.update(now.values())


CLI_PROBLEM = ["--model", "zoo:mlp:widths=256-256", "--data", "mnist1d:n=2000", "--x", "-1:1:15",
               "--y", "-1:1:9"]


def _completed(path) -> np.ndarray | None:
    """The store's ``completed`` mask, read directly with zarr (a few ms, faster than a row is written)."""
    try:
        return np.asarray(zarr.open_array(str(path / COMPLETED), mode="r")[...])
    except Exception:  # noqa: BLE001 - not created yet, or being written
        return None


def test_resume_with_workers_after_driver_is_killed(tmp_path) -> None:
    """Issue 5 acceptance: SIGKILL the CLI driver mid-run, rerun with --workers, compare with in-process."""
    reference = CliRunner().invoke(app, ["surface", *CLI_PROBLEM, "--out", str(tmp_path / "ref.zarr")])
    assert reference.exit_code == 0, reference.output  # in-process; also caches the data for the runs below
    out = tmp_path / "resume.zarr"
    cmd = [sys.executable, "-c", "from lossatlas.cli import main; main()", "surface", *CLI_PROBLEM,
           "--out", str(out), "--workers", "2"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        deadline, scanned = time.monotonic() + 120, 0.0
        while time.monotonic() < deadline:
            if time.monotonic() - scanned > 0.5:  # the worker processes, to check they exit afterwards
                workers.update(c.pid for c in psutil.Process(driver.pid).children(recursive=True))
                scanned = time.monotonic()
            done = _completed(out)
            if done is not None and done.any():  # rows take > 20 ms each to write: kill before the last
                break
            assert driver.poll() is None, "the driver finished before it could be killed"
            time.sleep(0.01)
        else:
            pytest.fail("no chunk was written within 120 s")
        workers.update(c.pid for c in psutil.Process(driver.pid).children(recursive=True))
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    _assert_gone(workers)  # worker processes notice their dead parent and exit
    partial = _completed(out)
    assert partial is not None and 0 < partial.sum() < partial.size
    assert np.all(partial.all(axis=1) | ~partial.any(axis=1))  # only whole chunks (rows) are marked done

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same(xr.open_zarr(tmp_path / "ref.zarr", consolidated=False).load(),
                 xr.open_zarr(out, consolidated=False).load())


def test_sharded_hvp_equals_in_process_and_dense_hessian(cluster) -> None:
    """Data-sharded HVP on 2 workers = in-process HVP (1e-10, float64) = dense autograd Hessian · v."""
    import torch

    from lossatlas.curvature.hvp import HessianOperator
    from lossatlas.curvature.sharded import ShardedHessianOperator, hessian_operator, shard_bounds
    from lossatlas.engine import Evaluator
    from lossatlas.params import flatten, unflatten

    client, seen = cluster
    client.wait_for_workers(2)
    assert shard_bounds(103, 2, 16) == [(0, 64), (64, 103)] and shard_bounds(10, 5, 16) == [(0, 10)]
    data = make_classification(n=103, n_test=5, d=3, classes=3, seed=4)
    net = mlp(d=3, hidden=4, classes=3, seed=5).double()
    data = type(data)(name="b64", x_train=data.x_train.double(), y_train=data.y_train, x_test=None,
                      y_test=None, task="classification", num_classes=3)
    ev = Evaluator(net, data, EvalSpec(batch_size=16, splits=("train",)))
    local = HessianOperator(ev)
    sharded = hessian_operator(ev, DaskExecutor(client, torch_threads=1))
    assert isinstance(sharded, ShardedHessianOperator) and len(sharded.shards) == 2
    theta = local.theta

    def loss(flat: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(net, unflatten(flat, theta), (data.x_train,))
        return torch.nn.functional.cross_entropy(out, data.y_train)

    dense = torch.autograd.functional.hessian(loss, flatten(theta).detach())
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(local.n, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(sharded.matvec(v), local.matvec(v), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(sharded.matvec(v), dense @ v, rtol=1e-8, atol=1e-10)
    value, grad = sharded.value_and_gradient()
    ref_value, ref_grad = local.value_and_gradient()
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    torch.testing.assert_close(flatten(grad), flatten(ref_grad), rtol=1e-10, atol=1e-12)
    # a worker holding a shard dies: the shard is scattered again and the product is unchanged
    who = client.who_has(sharded._scattered)
    victim = next(iter(who.values()))[0]
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    v = torch.randn(local.n, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(sharded.matvec(v), local.matvec(v), rtol=1e-10, atol=1e-12)
    sharded.close()
    client.wait_for_workers(2)
    seen.update(client.run(os.getpid).values())


def test_worker_with_two_threads_equals_in_process_bn_recompute(tmp_path) -> None:
    """Two threads of one worker evaluate chunks at the same time on the one scattered evaluator: each must get
    its own model copy (functional_call swaps tensors into the module; BN re-estimation hooks into it)."""
    from tests.conftest import bn_cnn

    data = make_classification(n=300, n_test=60, image=True, seed=4)
    net = bn_cnn(seed=2)
    kwargs = dict(x="-1:1:9", y="-1:1:9", directions=DirectionSpec(seed=3),
                  eval_spec=EvalSpec(bn="recompute", batch_size=64))
    ref = surface(net, data, out=tmp_path / "ref.zarr", **kwargs)
    with make_executor(workers=1, threads_per_worker=2, torch_threads=1) as executor:
        got = surface(net, data, out=tmp_path / "dask.zarr", executor=executor, **kwargs)
    _assert_same(ref, got)
