"""Report section for a training run: ``metrics.csv`` (per-epoch loss and accuracy from the evaluation
engine, written by :func:`lossatlas.training.train`) and the run's ``run.json`` configuration."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import xarray as xr

from lossatlas.viz.report.figures import curves_1d, metric_table
from lossatlas.viz.report.registry import Section, register_artifact


def read_metrics(path: Path) -> xr.Dataset:
    """``metrics.csv`` as a Dataset on ``x`` = epoch (unparseable cells become NaN)."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return xr.Dataset(coords={"x": np.zeros(0)})
    columns = [c for c in rows[0] if c != "epoch"]

    def num(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else np.nan
        except ValueError:
            return np.nan

    epochs = np.array([num(r.get("epoch")) for r in rows])
    return xr.Dataset({c: ("x", np.array([num(r.get(c)) for r in rows])) for c in columns},
                      coords={"x": epochs})


@register_artifact("metrics.csv", order=500)
def training_section(path: Path) -> Section | None:
    """Loss and accuracy per epoch, train solid and test dashed, with the run's configuration."""
    ds = read_metrics(path)
    if ds.sizes.get("x", 0) == 0:
        return None
    config: dict = {}
    run_file = path.parent / "run.json"
    if run_file.is_file():
        try:
            config = json.loads(run_file.read_text())
        except (OSError, json.JSONDecodeError):
            config = {}
    train_cfg = config.get("train", {}) if isinstance(config.get("train"), dict) else {}
    rows = [("epochs logged", str(ds.sizes["x"]))]
    if train_cfg:
        rows.append(("training", ", ".join(f"{k} {v}" for k, v in train_cfg.items())))
    for name in ds.data_vars:
        last = ds[name].values[-1]
        rows.append((f"final {name}", f"{last:.5g}"))
    what = f"{config.get('model', '?')} on {config.get('data', '?')}" if config else ""
    fig = curves_1d(ds, title=f"training — {what}" if what else "training", xlabel="epoch")
    provenance = {k: v for k, v in config.items() if k != "train"}
    provenance.update({f"train.{k}": v for k, v in train_cfg.items()})
    return Section(title=f"Training: {path.parent.name}", html=metric_table(rows), figures=(fig,),
                   provenance=provenance)
