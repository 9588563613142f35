"""Im, Tao & Branson 2016: from one initialisation, different optimisers (and switches) reach different minima."""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from lossatlas.curvature.sharpness import curve_width
from lossatlas.directions import DirectionSpec, Ignore, Norm, PlaneSpec
from lossatlas.engine import EvalSpec
from lossatlas.errors import UserInputError
from lossatlas.landscape import anchor_axes, interpolate, surface
from lossatlas.params import parameters_of
from lossatlas.paths.barrier import loss_barrier, path_eval_spec
from lossatlas.studies.batch_size_checks import comparable, direction_row
from lossatlas.studies.framework import Context, Row, cell_id, cell_seed, save_figure
from lossatlas.studies.goodfellow import SOLVED_FRACTION, solved
from lossatlas.studies.registry import Published, Study, study
from lossatlas.studies.runs import TrainedRun, derived_seeds, read_run, study_data, train_run
from lossatlas.studies.verdict import exact, paired_test, published, sample
from lossatlas.training import OptimizerName, TrainSpec

OPTIMIZERS = ("sgd", "adam", "rmsprop")
NORMS = {"unit": Norm.model, "filter": Norm.filter}
"""Basin probes: a unit direction (distances in parameter space, Im et al.) and a filter-normalised one (Li et al.)."""
IM = "Im, Tao & Branson 2016 (arXiv:1612.04010)"
PRESENT_REF = {
    "barrier_present": f"{IM}, interpolations between the SGD, Adam and RMSprop minima from one initialisation (NIN "
                       "and VGG on CIFAR-10): 'different training strategies, different basins'; seed 004:852",
    "switch_barrier_present": f"{IM}, SGD switched to Adam at several epochs (NIN: SGD η = .1 to Adam η = .0001): "
                              "'training strategies make difference at all stages of training'; seed 004:857"}
BASIN_REF = {"unit": f"{IM}, basin sizes along random directions (NIN, VGG on CIFAR-10): 'larger basin for Adam'; "
                     "seed 004:893",
             "filter": f"{IM} measure distances in parameter space, not filter units: no claim here"}


def run_names(params: OptimizerSwitch) -> list[str]:
    """``sgd``, ``adam``, ``rmsprop`` and ``sgd>adam@E`` for every switch epoch E."""
    return [*OPTIMIZERS, *(f"sgd>adam@{e}" for e in params.switch_epochs)]


def _spec(params: OptimizerSwitch, name: str, batch_seed: int) -> TrainSpec:
    common: dict[str, Any] = {"epochs": params.epochs, "batch_size": params.batch_size, "seed": batch_seed,
                              "save_every": params.epochs}
    if name == "sgd":
        return TrainSpec(optimizer=OptimizerName.sgd, lr=params.sgd_lr, momentum=params.momentum, **common)
    if name in ("adam", "rmsprop"):
        return TrainSpec(optimizer=OptimizerName(name), lr=params.adaptive_lr, momentum=0.0, **common)
    switch = int(name.split("@")[1])
    return TrainSpec(optimizer=OptimizerName.sgd, lr=params.sgd_lr, momentum=params.momentum, switch_at=switch,
                     optimizer2=OptimizerName.adam, lr2=params.switch_lr,
                     **common)


def _run(params: OptimizerSwitch, study_dir: str, study_seed: int, init: int, name: str,
         fit: bool = True) -> tuple[TrainedRun, list[int]]:
    """Run ``name`` from initialisation ``init`` (trained, or read back when ``fit`` is False): every run of one
    init shares θ₀ and the minibatch order."""
    seeds = derived_seeds(cell_seed(study_seed, {"init": init}), 3)
    folder, data = Path(study_dir) / "runs" / cell_id({"init": init, "run": name}), study_data(params.data)
    if not fit:
        return read_run(folder, model=params.model, data=data, init_seed=seeds[0], epochs=params.epochs), seeds
    return train_run(folder, model=params.model, data=data, spec=_spec(params, name, seeds[1]), init_seed=seeds[0],
                     device=params.device), seeds


def _run_cell(params: OptimizerSwitch, study_dir: str, study_seed: int, cell: dict[str, Any],
              seed: int) -> dict[str, np.ndarray]:
    """Train one run; its basin radius along ``directions`` random directions, unit and filter-normalised."""
    run, seeds = _run(params, study_dir, study_seed, cell["init"], cell["run"])
    data = study_data(params.data)
    grid = f"-1:1:{params.points}"
    theta = parameters_of(run.final)
    length = float(np.sqrt(sum(float((p.double() ** 2).sum()) for p in theta.values() if p.dim() > 1)))
    curves = {}
    for kind, norm in NORMS.items():
        curves[kind] = np.stack([
            surface(run.final, data, x=grid, eval_spec=EvalSpec(splits=("train",)), device=params.device,
                    directions=DirectionSpec(norm=norm, ignore=Ignore.biasbn, seed=seeds[2] + d),
                    out=run.folder / f"basin_{kind}_{d}.zarr").train_loss.values
            for d in range(params.directions)])
    m = run.metrics
    return {"train_loss": np.array(m["train_loss"][-1]), "test_accuracy": np.array(m["test_accuracy"][-1]),
            "initial_loss": np.array(m["train_loss"][0]), "unit_scale": np.array(length),
            "alpha": np.linspace(-1.0, 1.0, params.points), **{f"basin_{k}": v for k, v in curves.items()}}


def _pair_cell(params: OptimizerSwitch, study_dir: str, study_seed: int, cell: dict[str, Any],
               seed: int) -> dict[str, np.ndarray]:
    """The straight line between two solutions from the same initialisation."""
    a, _ = _run(params, study_dir, study_seed, cell["init"], cell["a"], fit=False)
    b, _ = _run(params, study_dir, study_seed, cell["init"], cell["b"], fit=False)
    ds = interpolate(a.final, b.final, study_data(params.data), x=f"0:1:{params.points}", eval_spec=path_eval_spec(),
                     out=Path(study_dir) / "runs" / f"line_{cell_id(cell)}.zarr", device=params.device)
    return {"t": ds.x.values, "line_train_loss": ds.train_loss.values, "line_test_loss": ds.test_loss.values}


def _plane_cell(params: OptimizerSwitch, study_dir: str, study_seed: int, cell: dict[str, Any],
                seed: int) -> dict[str, np.ndarray]:
    """The plane through the SGD, Adam and RMSprop solutions of initialisation 0 (centred at SGD's)."""
    runs = [_run(params, study_dir, study_seed, 0, name, fit=False)[0] for name in OPTIMIZERS]
    anchors = PlaneSpec(tuple(r.checkpoint(params.epochs) for r in runs)).build(parameters_of(runs[0].final))  # type: ignore[arg-type]
    x, y = anchor_axes(anchors.coords, params.plane_points)
    ds = surface(runs[0].final, study_data(params.data), directions=anchors, x=x, y=y,
                 out=Path(study_dir) / "runs" / "plane.zarr", device=params.device)
    return {"plane_x": ds.x.values, "plane_y": ds.y.values, "plane_train_loss": ds.train_loss.values,
            "anchor_x": ds.anchor_x.values, "anchor_y": ds.anchor_y.values}


@study("optimizer-switch",
       paper="Im, Tao & Branson 2016, An empirical analysis of the optimization of deep network loss surfaces "
             "(arXiv:1612.04010)",
       claim="From one initialisation, SGD, Adam and RMSprop (and SGD switched to Adam at any epoch) end in "
             "different minima, separated by barriers on the lines between them; Adam finds larger basins")
@dataclass(frozen=True)
class OptimizerSwitch(Study):
    """Different optimisers from the same initialisation: barriers between their minima and basin sizes.

    Protocol (Im et al. 2016 at laptop scale): MNIST-1D, the Greydanus CNN (``zoo:cnn1d``); from each of
    ``inits`` initialisations (shared by every run of that init, as is the minibatch order) train ``epochs``
    epochs with SGD (learning rate ``sgd_lr`` = 0.1, ``momentum`` 0.9), Adam and RMSprop (``adaptive_lr`` =
    1e-2), and SGD switched to a fresh Adam (``switch_lr`` = 1e-2, the Adam run's) after each epoch in
    ``switch_epochs`` (Im et al. switch NIN from SGD η = .1 to Adam η = .0001). Between every pair of SGD, Adam
    and RMSprop solutions, and between the SGD-only solution and each switched one: the training loss on the
    straight line and its barrier (:func:`lossatlas.paths.barrier.loss_barrier`). Basin size of each solution:
    along ``directions`` random directions (biases ignored) the distance from the minimum to where the
    training loss first rises ``basin_height`` nats above it (:func:`lossatlas.curvature.sharpness.curve_width`,
    mean of the two sides), in parameter-space distance (a unit direction, Im et al.'s view) and in filter
    units (Li et al.'s normalisation). The plane through the three optimisers' solutions of init 0.
    """

    inits: int = 1
    epochs: int = 4
    switch_epochs: tuple[int, ...] = (2,)
    batch_size: int = 100
    sgd_lr: float = 0.1
    momentum: float = 0.9
    adaptive_lr: float = 1e-2
    switch_lr: float = 1e-2
    directions: int = 2
    points: int = 21
    plane_points: int = 9
    basin_height: float = 0.1
    barrier_tolerance: float = 0.01
    model: str = "zoo:cnn1d"
    data: str = "mnist1d"
    device: str = "cpu"

    PUBLISHED = Published(
        source="Im, Tao & Branson 2016 (arXiv:1612.04010): interpolations between the minima of different "
               "optimisers from one initialisation (NIN and VGG on CIFAR-10), the SGD→Adam switch at several epochs "
               "(NIN: SGD η = .1 to Adam η = .0001), and the basin sizes along random directions ('larger basin "
               "for Adam'), as reproduced in the lecture notes (seed 004, 'Training Processing')",
        columns=("claim", "key", "published"),
        rows=(("barrier_present", "every pair of SGD, Adam, RMSprop", "yes"),
              ("switch_barrier_present", "every switch epoch", "yes"), ("larger_basin_for_adam", "unit", "yes")),
        note="published as plots; the rows compare the direction of each effect")
    NOTES = """Sources: the three claims are Im et al. 2016's, read from plots (published): a barrier on the line
    between the minima of any two optimisers from one initialisation, also between the SGD minimum and SGD
    switched to Adam at any epoch, and a larger basin for Adam (parameter-space distances). The barrier heights
    and basin radii have no published numbers and are shown, not compared; 'larger basin' in filter units is
    ours, with no claim. barrier_present and switch_barrier_present are exact text: 'yes' when the line of every
    converged init rises more than barrier_tolerance = 1% of the initial training loss L(θ₀) over the chord of
    its end values (the visibility margin of the goodfellow study; the rows fail where a line has none, as
    the switch after epoch 10 did in the earlier full run). larger_basin_for_adam is a direction: the paired
    difference Adam − SGD of the radius along the same random direction from the same init, over inits ×
    directions; 'yes' when its Student-t 95% interval lies above 0, 'no' below, inconclusive when it contains 0.

    Convergence gate (stated before the full run, the goodfellow study's): a run's end point counts as a
    minimum when L(θ*) ≤ L(θ₀)/4 with a finite loss; a set-up check of training losses alone (one init, the
    full protocol) ended SGD, Adam and RMSprop at 0.05-0.08 nats after 30 epochs. Lines count only when both
    end points passed, radii only for runs that passed; a cell with fewer than half (or fewer than two)
    converged inits is 'not comparable (unconverged)'. The quick preset (one init, 4 epochs, one switch, two
    directions, 21-point curves; training losses 0.7-1.2 nats) is a smoke test whose rows are not comparable;
    the full preset uses 2 inits, 30 epochs, switches after epochs 2, 5 and 10, 5 directions and 41-point
    curves.

    Protocol history: the first full run (20 epochs; plain SGD η = 0.1, Adam and RMSprop η = 1e-3, the switch to
    Adam η = 1e-4 as in Im et al.) ended far from minima (training losses 0.95 to 1.6 nats), so what it
    compared were not minima. It found barriers between every optimiser pair, a switch barrier only after
    epoch 2, and SGD's basin wider than Adam's. The learning rates and epochs were then chosen for convergence
    of the training loss alone (in a 40-epoch check from one initialisation, without looking at barriers or
    basins: SGD with momentum 0.9 at 0.1, Adam and RMSprop at 1e-2 reach about 0.1 nats by epoch 20-30) and
    fixed before the comparison was run again."""

    def __post_init__(self) -> None:
        if min(self.inits, self.epochs, self.batch_size, self.directions) < 1 or self.points < 3:
            raise UserInputError("optimizer-switch: inits, epochs, batch_size, directions must be positive, "
                                 "points >= 3")
        bad = [e for e in self.switch_epochs if not 1 <= e < self.epochs]
        if bad:
            raise UserInputError(f"optimizer-switch: switch epoch {bad[0]} must lie in [1, epochs - 1]")
        if self.plane_points < 3 or not (self.sgd_lr > 0 and self.adaptive_lr > 0 and self.switch_lr > 0) or \
                not 0 <= self.momentum < 1:
            raise UserInputError("optimizer-switch: plane_points >= 3 and positive learning rates")

    @classmethod
    def full(cls) -> OptimizerSwitch:
        return cls(inits=2, epochs=30, switch_epochs=(2, 5, 10), directions=5, points=41, plane_points=17)

    def pairs(self) -> list[tuple[str, str]]:
        return [*itertools.combinations(OPTIMIZERS, 2), *(("sgd", n) for n in run_names(self)[3:])]

    def run(self, ctx: Context) -> xr.Dataset:
        study_dir, names = str(ctx.folder), run_names(self)
        runs = ctx.map(functools.partial(_run_cell, self, study_dir, ctx.seed),
                       [{"init": i, "run": n} for i in range(self.inits) for n in names])
        lines = ctx.map(functools.partial(_pair_cell, self, study_dir, ctx.seed),
                        [{"init": i, "a": a, "b": b} for i in range(self.inits) for a, b in self.pairs()])
        plane = ctx.map(functools.partial(_plane_cell, self, study_dir, ctx.seed), [{"plane": "sgd-adam-rmsprop"}])[0]
        r_shape, l_shape = (self.inits, len(names)), (self.inits, len(self.pairs()))

        def stack(results: list[dict[str, np.ndarray]], name: str, shape: tuple[int, ...]) -> np.ndarray:
            return np.stack([r[name] for r in results]).reshape(*shape, *results[0][name].shape)

        data: dict[str, Any] = {k: (("init", "run"), stack(runs, k, r_shape)) for k in
                                ("train_loss", "test_accuracy", "initial_loss", "unit_scale")}
        data.update({f"basin_{k}": (("init", "run", "direction", "alpha"), stack(runs, f"basin_{k}", r_shape))
                     for k in NORMS})
        data.update({k: (("init", "pair", "t"), stack(lines, k, l_shape)) for k in ("line_train_loss",
                                                                                     "line_test_loss")})
        data.update({"plane_train_loss": (("px", "py"), plane["plane_train_loss"]),
                     "plane_x": (("px",), plane["plane_x"]), "plane_y": (("py",), plane["plane_y"]),
                     "anchor_x": (("anchor",), plane["anchor_x"]), "anchor_y": (("anchor",), plane["anchor_y"])})
        return xr.Dataset(data, coords={"init": np.arange(self.inits), "run": names,
                                        "pair": [f"{a}|{b}" for a, b in self.pairs()], "t": lines[0]["t"],
                                        "alpha": runs[0]["alpha"], "anchor": list(OPTIMIZERS)})

    def radii(self, ds: xr.Dataset, kind: str) -> xr.DataArray:
        """Basin radius per (init, run, direction): mean distance to the ``basin_height`` crossing on both sides,
        in parameter-space distance (``unit``) or filter units (``filter``)."""
        alpha = ds.alpha.values
        r = xr.apply_ufunc(lambda c: curve_width(alpha, c, self.basin_height).width / 2, ds[f"basin_{kind}"],
                           input_core_dims=[["alpha"]], vectorize=True)
        return r * ds.unit_scale if kind == "unit" else r

    def check(self, ds: xr.Dataset) -> list[Row]:
        rows: list[Row] = []
        t = ds.t.values
        threshold = self.barrier_tolerance * float(ds.initial_loss.mean())
        ok = solved(ds.initial_loss.values, ds.train_loss.values)  # (init, run)
        names = [str(n) for n in ds.run.values]
        criterion = f"L(θ*) <= {SOLVED_FRACTION:g}·L(θ₀)"
        height = published(None, f"{IM}, interpolation figures: plotted, no barrier height printed", 0.0)
        for pair in ds.pair.values:
            a, b = str(pair).split("|")
            claim = "barrier_present" if "@" not in b else "switch_barrier_present"
            switch_epoch = int(b.split("@")[1]) if "@" in b else 0
            key = {"pair": str(pair)} if claim == "barrier_present" else {"switch_epoch": switch_epoch}
            present = published("yes", PRESENT_REF[claim], 0.0)
            both = ok[:, names.index(a)] & ok[:, names.index(b)]
            gone = int((~both).sum())
            if not comparable(both):
                rows += [Row.unconverged_row(q, key, e, runs=both.size, unconverged=gone,
                                             criterion=f"{criterion} at both ends of the line")
                         for q, e in (("barrier", height), (claim, present))]
                continue
            barriers = np.array([loss_barrier(t, c)["barrier"] for c in ds.line_train_loss.sel(pair=pair).values[both]])
            rows.append(Row.compare("barrier", key, height, sample(barriers), unconverged=gone,
                                    note=f"train-loss barrier between {a} and {b} (nats)"))
            seen = int((barriers > threshold).sum())
            note = (f"a barrier above the threshold {threshold:.3g} nats on {seen} of {barriers.size} converged lines "
                    f"(barriers {', '.join(f'{x:.3g}' for x in barriers)} nats)")
            if claim == "switch_barrier_present" and seen < barriers.size:
                note += (f"; after the switch Adam (η = {self.switch_lr:g}) runs {self.epochs - switch_epoch} "
                         "epochs and ends in a point the line from the SGD solution reaches without a barrier")
            rows.append(Row.compare(claim, key, present, exact("yes" if seen == barriers.size else "no"),
                                    note=note, unconverged=gone))
        for kind in NORMS:
            rows += self._basin_rows(ds, kind, ok, names, criterion)
        return rows

    def _basin_rows(self, ds: xr.Dataset, kind: str, ok: np.ndarray, names: list[str], criterion: str) -> list[Row]:
        """Basin radius of every run (converged inits only), and Adam's against SGD's, paired by init and
        direction."""
        rows: list[Row] = []
        radii = self.radii(ds, kind).transpose("init", "run", "direction").values
        what = "parameter-space distance" if kind == "unit" else "filter units"
        none = published(None, f"{IM}, basin plots: no radius printed", 0.0)
        for j, name in enumerate(names):
            key, mask = {"run": name, "norm": kind}, ok[:, j]
            if not comparable(mask):
                rows.append(Row.unconverged_row("basin_radius", key, none, runs=mask.size,
                                                unconverged=int((~mask).sum()), criterion=criterion))
                continue
            rows.append(Row.compare("basin_radius", key, none, sample(radii[mask, j].reshape(-1)),
                                    unconverged=int((~mask).sum()),
                                    note=f"{what} to a rise of {self.basin_height:g} nats, mean of both sides"))
        expected = published("yes" if kind == "unit" else None, BASIN_REF[kind], 0.0)
        adam, sgd = names.index("adam"), names.index("sgd")
        both = ok[:, adam] & ok[:, sgd]
        key = {"norm": kind}
        if not comparable(both):
            rows.append(Row.unconverged_row("larger_basin_for_adam", key, expected, runs=both.size,
                                            unconverged=int((~both).sum()), criterion=f"{criterion}, Adam and SGD"))
            return rows
        diffs = (radii[both, adam] - radii[both, sgd]).reshape(-1)
        mean, ci, p = paired_test(diffs)
        note = (f"radius Adam − SGD ({what}; Adam {np.nanmean(radii[both, adam]):.3g}, SGD "
                f"{np.nanmean(radii[both, sgd]):.3g}), paired by init and direction")
        if kind == "filter":
            note = "Im et al. measure distances, not filter units; " + note
        rows.append(direction_row("larger_basin_for_adam", key, expected, mean, ci, p, ("yes", "no"),
                                  n=int(np.isfinite(diffs).sum()), note=note, unconverged=int((~both).sum())))
        return rows

    def figures(self, ds: xr.Dataset, folder: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for k, pair in enumerate(ds.pair.values):
            axes[0].plot(ds.t, ds.line_train_loss.sel(pair=pair).mean("init"), color=f"C{k}", label=str(pair))
        axes[0].set(title="straight lines between solutions (train loss)", xlabel="t", ylabel="loss")
        axes[0].legend(fontsize=7)
        radii = self.radii(ds, "unit")
        means = [float(radii.sel(run=n).mean()) for n in ds.run.values]
        axes[1].bar(range(len(means)), means, color=[f"C{i}" for i in range(len(means))])
        axes[1].set_xticks(range(len(means)), [str(n) for n in ds.run.values], rotation=30, fontsize=8)
        axes[1].set(title=f"basin radius (distance to +{self.basin_height:g} nats)", ylabel="‖Δθ‖")
        z = np.log10(np.clip(ds.plane_train_loss.values.T, 1e-6, None))
        cs = axes[2].contourf(ds.plane_x, ds.plane_y, z, levels=20, cmap="viridis")
        fig.colorbar(cs, ax=axes[2], label="log10 train loss")
        axes[2].plot(ds.anchor_x, ds.anchor_y, "o", color="white", mec="black")
        for name, x, y in zip(ds.anchor.values, ds.anchor_x.values, ds.anchor_y.values, strict=True):
            axes[2].annotate(str(name), (x, y), textcoords="offset points", xytext=(4, 4), color="white")
        axes[2].set(title="plane through the SGD, Adam and RMSprop solutions", xlabel="x", ylabel="y")
        return [save_figure(fig, folder / "optimizer_switch.png", dpi=110)]


__all__ = ["OPTIMIZERS", "OptimizerSwitch", "run_names"]
