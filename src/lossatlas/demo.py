"""The main job, ``lossatlas demo``: one MNIST-1D MLP from training to pictures in a few minutes.

1. train ``zoo:mlp`` (40-100-100-10) on MNIST-1D (Greydanus 2020) with Adam, checkpoints per epoch;
2. a 2D filter-normalised surface (Li et al. 2018) around the solution;
3. the init → solution interpolation (Goodfellow et al. 2015), α ∈ [−0.5, 1.5];
4. PNGs, ``summary.txt`` and the self-contained HTML report ``report.html`` in the output folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lossatlas.data import load_data
from lossatlas.directions import DirectionSpec
from lossatlas.engine import EvalSpec
from lossatlas.landscape import interpolate, surface
from lossatlas.models import build_model
from lossatlas.params import file_sha256, load_checkpoint
from lossatlas.training import TrainSpec, checkpoint_path, train
from lossatlas.viz.plot import plot_store
from lossatlas.viz.report import build_report

MODEL = "zoo:mlp:widths=100-100"
DATA = "mnist1d"
SEED = 0


def run_demo(out: str | Path = "runs/demo", epochs: int = 30, grid: int = 31,
             progress: Callable[[int, int], None] | None = None,
             log: Callable[[str], Any] = print) -> str:
    """Run the demo into ``out``; returns the text of ``summary.txt``. Re-running resumes every stage."""
    out = Path(out)
    data = load_data(DATA)
    model = build_model(MODEL, input_shape=data.input_shape, output_dim=data.output_dim, seed=SEED)
    spec = TrainSpec(epochs=epochs, batch_size=100, lr=1e-2, optimizer="adam", seed=SEED)  # type: ignore[arg-type]
    run_dir = out / "train"
    log(f"[1/4] training {MODEL} on {DATA} for {epochs} epochs → {run_dir}")
    train(model, data, spec, run_dir, provenance={"model": MODEL, "data": DATA},
          progress=(lambda e, n, _m: progress(e, n)) if progress else None)
    init_ckpt, final_ckpt = checkpoint_path(run_dir, 0), checkpoint_path(run_dir, epochs)
    solution = load_checkpoint(model, final_ckpt)
    initial = load_checkpoint(model, init_ckpt)
    prov = {"model": MODEL, "data": DATA, "checkpoint": str(final_ckpt),
            "checkpoint_sha256": file_sha256(final_ckpt)}

    log(f"[2/4] {grid}×{grid} filter-normalised surface → {out / 'surface.zarr'}")
    surf = surface(solution, data, x=f"-1:1:{grid}", y=f"-1:1:{grid}",
                   directions=DirectionSpec(norm="filter", ignore="biasbn", seed=SEED),  # type: ignore[arg-type]
                   eval_spec=EvalSpec(), out=out / "surface.zarr", provenance=prov, progress=progress)

    log(f"[3/4] interpolation init → solution → {out / 'interpolation.zarr'}")
    prov_i = {"model": MODEL, "data": DATA, "checkpoint": str(init_ckpt),
              "checkpoint_sha256": file_sha256(init_ckpt), "checkpoint2": str(final_ckpt),
              "checkpoint2_sha256": file_sha256(final_ckpt), "seed": SEED}
    interp = interpolate(initial, solution, data, x="-0.5:1.5:41", out=out / "interpolation.zarr",
                         provenance=prov_i, progress=progress)

    log("[4/4] plots and report")
    pngs = plot_store(out / "surface.zarr", out) + plot_store(out / "interpolation.zarr", out)

    centre = surf.sel(x=0.0, y=0.0, method="nearest")
    path_loss = interp["train_loss"].values
    inside = (interp["x"].values >= 0) & (interp["x"].values <= 1)
    barrier = float(np.max(path_loss[inside]) - max(path_loss[inside][0], path_loss[inside][-1]))
    lines = [
        "lossatlas demo",
        f"model {MODEL}, data {DATA} (4000 train / 1000 test), seed {SEED}, {epochs} epochs of Adam",
        f"solution: train loss {float(centre.train_loss):.4f}, train acc {float(centre.train_accuracy):.3f}, "
        f"test loss {float(centre.test_loss):.4f}, test acc {float(centre.test_accuracy):.3f}",
        f"surface {grid}×{grid} on [-1,1]²: train loss min {float(surf.train_loss.min()):.4f}, "
        f"max {float(surf.train_loss.max()):.4f}; non-finite points {surf.attrs.get('nonfinite_points', 0)}",
        f"interpolation init→solution: loss {path_loss[inside][0]:.4f} → {path_loss[inside][-1]:.4f}, "
        f"barrier above endpoints {barrier:.4g} ({'monotone' if barrier <= 1e-9 else 'not monotone'})",
        "files: " + ", ".join(p.name for p in pngs),
    ]
    text = "\n".join(lines) + "\n"
    (out / "summary.txt").write_text(text)
    report = build_report(out)
    return text + f"report: {report.path}\n"
