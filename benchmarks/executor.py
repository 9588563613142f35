"""Executor overhead: the same surface in one process × 2 threads vs 2 Dask workers × 1 thread.

    python benchmarks/executor.py [--model zoo:mlp:widths=512-512] [--data mnist1d] [--grid 21] [--repeats 2]

Interleaved ``--repeats`` times: (a) in-process with ``torch.set_num_threads(2)``; (b) ``--workers 2`` (a Dask
``LocalCluster``, 2 processes × 1 thread, torch 1 thread each), timed from a running cluster and including
its start; (c) in-process with 1 thread, the single-core baseline; (d) 1 Dask worker × 1 thread, which
against (c) isolates the cost of the executor machinery itself (shipping, scheduling, results) from how
well torch uses 2 threads. Every run writes a fresh store; (b) must give the numbers of (a). Prints a
markdown table and writes ``results/executor.json``. Overhead = best time(b) / best time(a) − 1 (issue 5
target: ≤ 15%); machinery overhead = best time(d) / best time(c) − 1.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import machine_info, machine_line, markdown_table, timed, write_results

from lossatlas.data import load_data
from lossatlas.execute import InProcessExecutor, make_executor
from lossatlas.landscape import surface
from lossatlas.models import build_model

IN_2, DASK, DASK_START, IN_1, DASK_1 = (
    "in-process, 1 process × 2 threads", "dask, 2 workers × 1 thread", "dask, 2 workers, incl. cluster start",
    "in-process, 1 process × 1 thread", "dask, 1 worker × 1 thread")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:mlp:widths=512-512")
    parser.add_argument("--data", default="mnist1d")
    parser.add_argument("--grid", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    data = load_data(args.data)
    net = build_model(args.model, input_shape=data.input_shape, output_dim=data.output_dim, seed=0)
    info = machine_info(threads=2)
    tmp = Path(tempfile.mkdtemp(prefix="lossatlas-bench-executor-"))
    grid = {"x": f"-1:1:{args.grid}", "y": f"-1:1:{args.grid}"}

    def run(name: str, executor: Any) -> tuple[float, Any]:
        return timed(lambda: surface(net, data, **grid, out=tmp / f"{name}.zarr", overwrite=True,
                                     executor=executor))

    times: dict[str, list[float]] = {IN_2: [], DASK: [], DASK_START: [], IN_1: [], DASK_1: []}
    try:
        for _ in range(args.repeats):
            torch.set_num_threads(2)
            t, reference = run("a", InProcessExecutor())
            times[IN_2].append(t)

            def dask(workers: int = 2) -> tuple[float, Any]:
                with make_executor(workers=workers, torch_threads=1) as executor:
                    return run(f"b{workers}", executor)

            t_start, (t, ds) = timed(dask)
            times[DASK].append(t)
            times[DASK_START].append(t_start)
            np.testing.assert_allclose(ds["train_loss"].values, reference["train_loss"].values, rtol=1e-6)
            torch.set_num_threads(1)
            times[IN_1].append(run("c", InProcessExecutor())[0])
            times[DASK_1].append(dask(1)[0])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = min(times[IN_2])
    rows = [{"executor": name, "best_s": min(ts), "median_s": statistics.median(ts), "all_s": ts,
             "points_per_s": args.grid**2 / min(ts), "vs_in_process_2_threads": min(ts) / base - 1}
            for name, ts in times.items()]
    info_after = machine_info(threads=2)
    write_results("executor", {"model": args.model, "data": args.data, "grid": f"{args.grid}x{args.grid}",
                               "repeats": args.repeats, "rows": rows, "machine": info,
                               "load_average_1m_at_end": info_after["load_average_1m_at_start"],
                               "overhead": rows[1]["vs_in_process_2_threads"],
                               "overhead_incl_start": rows[2]["vs_in_process_2_threads"],
                               "machinery_overhead": min(times[DASK_1]) / min(times[IN_1]) - 1})
    print(f"\n### Executor overhead: `{args.model}` on `{args.data}`, {args.grid}×{args.grid} surface\n")
    print(markdown_table(
        ["executor", "best (s)", "median (s)", "points/s", "vs in-process 2 threads"],
        [[r["executor"], f"{r['best_s']:.2f}", f"{r['median_s']:.2f}", f"{r['points_per_s']:.1f}",
          f"{100 * r['vs_in_process_2_threads']:+.1f}%"] for r in rows]))
    overhead, machinery = rows[1]["vs_in_process_2_threads"], min(times[DASK_1]) / min(times[IN_1]) - 1
    print(f"\nOverhead (2 workers × 1 thread vs 1 process × 2 threads): {100 * overhead:+.1f}%; machinery "
          f"overhead (1 worker vs in-process, 1 thread each): {100 * machinery:+.1f}%.")
    print("\n" + machine_line(info) + f" Load average at the end: {info_after['load_average_1m_at_start']}.")


if __name__ == "__main__":
    main()
