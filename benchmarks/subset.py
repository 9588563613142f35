"""Subset evaluation: speed-up against coverage of the stored 95% interval.

    python benchmarks/subset.py [--model zoo:mlp:widths=512-512] [--data mnist1d] [--grid 21] [--threads 1]

Trains the model briefly (so the surface has a minimum), computes the full-data 21×21 surface, then the
same surface at ``--subset`` 0.05, 0.1, 0.25 and 1.0 (best of ``--repeats`` timings each). For every
subset: wall time, speed-up over the full-data surface, the fraction of points whose full-data value lies
inside the stored interval value ± 1.96·stderr (train and test loss), and the median |error| / loss.
Prints a markdown table and writes ``results/subset.json`` (issue 5 target: subset 0.1 ≥ 5× faster).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from executor import RESULTS, machine

from lossatlas.data import load_data
from lossatlas.evaluate import EvalSpec
from lossatlas.models import build_model
from lossatlas.subset import confidence_interval
from lossatlas.surface import surface
from lossatlas.train import TrainSpec, train

SUBSETS = [None, 1.0, 0.25, 0.1, 0.05]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:mlp:widths=512-512")
    parser.add_argument("--data", default="mnist1d")
    parser.add_argument("--grid", type=int, default=21)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_data(args.data)
    net = build_model(args.model, input_shape=data.input_shape, output_dim=data.output_dim, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="lossatlas-bench-subset-"))
    before = machine()
    try:
        net = train(net, data, TrainSpec(epochs=args.epochs, batch_size=64), tmp / "run")
        best: dict[object, float] = {}
        stores = {}
        for _ in range(args.repeats):
            for subset in SUBSETS:
                out = tmp / f"s{subset}.zarr"
                start = time.perf_counter()
                stores[subset] = surface(net, data, x=f"-1:1:{args.grid}", y=f"-1:1:{args.grid}", out=out,
                                         overwrite=True, eval_spec=EvalSpec(subset=subset))
                best[subset] = min(best.get(subset, np.inf), time.perf_counter() - start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    full = stores[None]
    rows = []
    for subset in SUBSETS:
        ds = stores[subset]
        row = {"subset": "full" if subset is None else subset, "seconds": best[subset],
               "speedup": best[None] / best[subset]}
        for split in ("train", "test"):
            metric = f"{split}_loss"
            n = round((subset or 1.0) * len(data.split(split)[1]))
            lo, hi = confidence_interval(ds, metric)
            truth = full[metric].values
            row[f"{split}_samples"] = n
            row[f"{split}_coverage"] = float(((truth >= lo) & (truth <= hi)).mean())
            row[f"{split}_median_rel_error"] = float(np.median(np.abs(ds[metric].values - truth) / truth))
        rows.append(row)
    result = {"benchmark": "subset", "model": args.model, "data": args.data, "grid": f"{args.grid}x{args.grid}",
              "threads": args.threads, "epochs": args.epochs, "rows": rows, "machine_before": before,
              "machine_after": machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "subset.json").write_text(json.dumps(result, indent=2))
    print(f"\n### Subset evaluation: {args.model} on {args.data}, {args.grid}×{args.grid} surface, "
          f"{args.threads} torch thread(s)\n")
    print("| subset | samples train/test | time (s) | speed-up | 95% CI coverage train / test loss | "
          "median rel. error train / test |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['subset']} | {r['train_samples']}/{r['test_samples']} | {r['seconds']:.2f} | "
              f"{r['speedup']:.1f}× | {100 * r['train_coverage']:.1f}% / {100 * r['test_coverage']:.1f}% | "
              f"{r['train_median_rel_error']:.2e} / {r['test_median_rel_error']:.2e} |")
    print(f"\nmachine: {before['cpu']}, {before['cores']} cores, torch {before['torch']}; "
          f"load average before {before['loadavg']}, after {result['machine_after']['loadavg']}")


if __name__ == "__main__":
    main()
