"""Executor overhead: the same surface in one process × 2 threads vs 2 Dask workers × 1 thread.

    python benchmarks/executor.py [--model zoo:mlp:widths=512-512] [--data mnist1d] [--grid 21] [--repeats 2]

Runs, interleaved ``--repeats`` times: (a) in-process with ``torch.set_num_threads(2)``; (b) ``--workers 2``
(a Dask ``LocalCluster``, 2 processes × 1 thread, torch 1 thread each), timed with and without starting
the cluster; (c) in-process with 1 thread, the single-core baseline. Every run writes a fresh store and
must give the same numbers as (a). Prints a markdown table and writes ``results/executor.json``.
Overhead = time(b) / time(a) − 1 on the best of the repeats (issue 5 target: ≤ 15%).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lossatlas.data import load_data
from lossatlas.execute import InProcessExecutor, make_executor
from lossatlas.models import build_model
from lossatlas.surface import surface

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on (load average included: the machine may be shared)."""
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "loadavg": [round(x, 2) for x in os.getloadavg()]}


def timed_surface(net: torch.nn.Module, data: Any, grid: int, out: Path, executor: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    ds = surface(net, data, x=f"-1:1:{grid}", y=f"-1:1:{grid}", out=out, overwrite=True, executor=executor)
    return time.perf_counter() - start, ds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:mlp:widths=512-512")
    parser.add_argument("--data", default="mnist1d")
    parser.add_argument("--grid", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    data = load_data(args.data)
    net = build_model(args.model, input_shape=data.input_shape, output_dim=data.output_dim, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="lossatlas-bench-executor-"))
    before = machine()
    times: dict[str, list[float]] = {"in-process, 1 × 2 threads": [], "dask, 2 workers × 1 thread": [],
                                     "dask incl. cluster start": [], "in-process, 1 × 1 thread": []}
    reference = None
    try:
        for _ in range(args.repeats):
            torch.set_num_threads(2)
            t, ds = timed_surface(net, data, args.grid, tmp / "a.zarr", InProcessExecutor())
            times["in-process, 1 × 2 threads"].append(t)
            reference = ds if reference is None else reference
            start = time.perf_counter()
            with make_executor(workers=2, torch_threads=1) as executor:
                t, ds = timed_surface(net, data, args.grid, tmp / "b.zarr", executor)
            times["dask, 2 workers × 1 thread"].append(t)
            times["dask incl. cluster start"].append(time.perf_counter() - start)
            np.testing.assert_allclose(ds["train_loss"].values, reference["train_loss"].values, rtol=1e-6)
            torch.set_num_threads(1)
            t, ds = timed_surface(net, data, args.grid, tmp / "c.zarr", InProcessExecutor())
            times["in-process, 1 × 1 thread"].append(t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = min(times["in-process, 1 × 2 threads"])
    rows = [{"executor": name, "best_s": min(ts), "median_s": statistics.median(ts),
             "points_per_s": args.grid**2 / min(ts), "vs_in_process_2_threads": min(ts) / base - 1}
            for name, ts in times.items()]
    result = {"benchmark": "executor", "model": args.model, "data": args.data, "grid": f"{args.grid}x{args.grid}",
              "repeats": args.repeats, "rows": rows, "machine_before": before, "machine_after": machine(),
              "overhead": rows[1]["vs_in_process_2_threads"],
              "overhead_incl_start": rows[2]["vs_in_process_2_threads"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "executor.json").write_text(json.dumps(result, indent=2))
    print(f"\n### Executor overhead: {args.model} on {args.data}, {args.grid}×{args.grid} surface\n")
    print("| executor | best (s) | median (s) | points/s | vs in-process 2 threads |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['executor']} | {r['best_s']:.2f} | {r['median_s']:.2f} | {r['points_per_s']:.1f} | "
              f"{100 * r['vs_in_process_2_threads']:+.1f}% |")
    print(f"\nmachine: {before['cpu']}, {before['cores']} cores, torch {before['torch']}; "
          f"load average before {before['loadavg']}, after {result['machine_after']['loadavg']}")


if __name__ == "__main__":
    main()
