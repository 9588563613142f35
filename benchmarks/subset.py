"""Subset evaluation: speed-up against coverage of the stored 95% interval.

    python benchmarks/subset.py [--model zoo:mlp:widths=512-512] [--data mnist1d] [--grid 21] [--threads 1]

Trains the model briefly (so the surface has a minimum), computes the full-data 21×21 surface, then the
same surface at ``--subset`` 1.0, 0.25, 0.1 and 0.05 (best of ``--repeats`` timings each). For every subset:
wall time, speed-up over the full-data surface, the fraction of points whose full-data value lies inside
the stored interval value ± 1.96·stderr (train and test loss) for subset seed 0 and pooled over
``--seeds`` subset seeds, the share of those surfaces with ≥ 90% of points covered, and the median
|error| / loss. One subset serves all points, so one surface is one correlated draw; the pooled number is
the calibration of the intervals. Prints a markdown table, writes ``results/subset.json``
(issue 5 target: subset 0.1 ≥ 5× faster than full data).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr
from common import machine_info, machine_line, markdown_table, set_threads, timed, write_results

from lossatlas.data import load_data
from lossatlas.engine import EvalSpec
from lossatlas.engine.subset import confidence_interval
from lossatlas.landscape import surface
from lossatlas.models import build_model
from lossatlas.training import TrainSpec, train

SUBSETS: list[float | None] = [None, 1.0, 0.25, 0.1, 0.05]


def coverage(ds: xr.Dataset, full: xr.Dataset, metric: str) -> float:
    """Fraction of points whose full-data value lies inside the stored 95% interval."""
    lo, hi = confidence_interval(ds, metric)
    truth = full[metric].values
    return float(((truth >= lo) & (truth <= hi)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:mlp:widths=512-512")
    parser.add_argument("--data", default="mnist1d")
    parser.add_argument("--grid", type=int, default=21)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady when shared)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5, help="subset seeds pooled for the coverage")
    args = parser.parse_args()
    info = machine_info(set_threads(args.threads))

    data = load_data(args.data)
    net = build_model(args.model, input_shape=data.input_shape, output_dim=data.output_dim, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="lossatlas-bench-subset-"))
    grid = {"x": f"-1:1:{args.grid}", "y": f"-1:1:{args.grid}"}
    try:
        net = train(net, data, TrainSpec(epochs=args.epochs, batch_size=64), tmp / "run")

        def run(subset: float | None, seed: int = 0) -> xr.Dataset:
            return surface(net, data, **grid, out=tmp / f"s{subset}-{seed}.zarr", overwrite=True,
                           eval_spec=EvalSpec(subset=subset, subset_seed=seed))

        best: dict[float | None, float] = {}
        stores: dict[float | None, xr.Dataset] = {}
        for _ in range(args.repeats):
            for subset in SUBSETS:
                t, stores[subset] = timed(lambda subset=subset: run(subset))
                best[subset] = min(best.get(subset, np.inf), t)
        draws = {s: [stores[s]] + [run(s, seed) for seed in range(1, args.seeds)] for s in SUBSETS[2:]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    full = stores[None]
    rows = []
    for subset in SUBSETS:
        row: dict[str, object] = {"subset": "full" if subset is None else subset, "seconds": best[subset],
                                  "speedup": best[None] / best[subset]}
        for split in ("train", "test"):
            metric = f"{split}_loss"
            covered = [coverage(ds, full, metric) for ds in draws.get(subset, [stores[subset]])]
            truth = full[metric].values
            error = np.abs(stores[subset][metric].values - truth) / truth
            row.update({f"{split}_samples": round((subset or 1.0) * len(data.split(split)[1])),
                        f"{split}_coverage_seed0": covered[0],
                        f"{split}_coverage_pooled": float(np.mean(covered)),
                        f"{split}_surfaces_90pct": float(np.mean(np.array(covered) >= 0.9)),
                        f"{split}_median_rel_error": float(np.median(error))})
        rows.append(row)
    write_results("subset", {"model": args.model, "data": args.data, "grid": f"{args.grid}x{args.grid}",
                             "epochs": args.epochs, "seeds": args.seeds, "rows": rows, "machine": info})

    def pair(r: dict[str, object], key: str, fmt: str) -> str:
        return f"{format(r[f'train_{key}'], fmt)} / {format(r[f'test_{key}'], fmt)}"

    print(f"\n### Subset evaluation: `{args.model}` on `{args.data}`, {args.grid}×{args.grid} surface\n")
    print(markdown_table(
        ["subset", "samples train / test", "time (s)", "speed-up", "95% CI coverage, seed 0",
         f"pooled, {args.seeds} seeds", "surfaces ≥ 90% covered", "median rel. error"],
        [[r["subset"], pair(r, "samples", "d"), f"{r['seconds']:.2f}", f"{r['speedup']:.1f}×",
          pair(r, "coverage_seed0", ".1%"), pair(r, "coverage_pooled", ".1%"),
          pair(r, "surfaces_90pct", ".0%"), pair(r, "median_rel_error", ".1e")] for r in rows]))
    print("\nCoverage and errors are of the train / test loss. " + machine_line(info))


if __name__ == "__main__":
    main()
