"""Goodfellow, Vinyals & Saxe 2015: the straight line from initialisation to solution, and between two solutions."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from lossatlas.directions import PlaneSpec, plane_directions
from lossatlas.errors import UserInputError
from lossatlas.landscape import anchor_axes, interpolate, surface
from lossatlas.params import inner, parameters_of, read_state_dict
from lossatlas.paths.barrier import loss_barrier, path_eval_spec
from lossatlas.studies.framework import Context, Row, cell_id, cell_seed, converged_runs
from lossatlas.studies.mnist1d_baselines import MODELS as BASELINE_MODELS
from lossatlas.studies.registry import Published, Study, study
from lossatlas.studies.runs import (
    TrainedRun,
    climbs,
    derived_seeds,
    parameter_distance,
    read_run,
    study_data,
    train_run,
)
from lossatlas.studies.verdict import MARGIN_RATE, Expected, exact, published, rate, sample
from lossatlas.training import OptimizerName, TrainSpec

MODELS = {**BASELINE_MODELS, "lstm": "zoo:lstm"}
"""The MNIST-1D reference nets (Greydanus 2020) and the LSTM twin of the GRU."""
STARTS = ("A", "B")
PROFILE_METRICS = ("train_loss", "test_loss", "train_accuracy", "test_accuracy")
SOLVED_FRACTION = 0.25
"""Convergence gate of a trained end point θ*: it counts as a solution when training removed at least three
quarters of the initial loss, L(θ*) ≤ L(θ₀)/4 (≈ 0.58 nats for 10 classes), with a finite loss. Stated before the
full runs from a set-up check of the training loss alone (one run per net with the full protocol: 0.08-0.2 nats
after 30 epochs; 1.0-1.3 after the quick preset's 3); weaker than Goodfellow et al.'s 'negligible training
error', which our Adam runs at a constant rate 1e-2 do not reach."""
GOODFELLOW = "Goodfellow, Vinyals & Saxe 2015 (ICLR)"
MONOTONE_REF = (f"{GOODFELLOW}, Sec. 3-4, the linear-path figures of MLPs, CNNs and LSTMs: plotted, no number "
                "printed; 'no bump' is read as a climb of 0 (the notes state the claim in words: seed 001, l. 117)")
BARRIER_REF = (f"{GOODFELLOW}, the 'two random starting points, two solutions' figure: a barrier on the line "
               "between two solutions; seed 004:793")


def solved(initial: np.ndarray, final: np.ndarray) -> np.ndarray:
    """The convergence gate (:data:`SOLVED_FRACTION`) of runs with initial and final training losses."""
    initial, final = np.asarray(initial, dtype=np.float64), np.asarray(final, dtype=np.float64)
    return np.isfinite(final) & np.isfinite(initial) & (final <= SOLVED_FRACTION * initial)


PLANE_DIMS = {"plane_x": ("px",), "plane_y": ("py",), "plane_train_loss": ("px", "py"),
              "plane_test_loss": ("px", "py"), "path_x": ("path",), "path_y": ("path",), "path_epoch": ("path",),
              "path_residual": ("path",), "path_train_loss": ("path",)}


def _train_pair(params: Goodfellow, folder: Path, cell: dict[str, Any], seed: int,
                fit: bool = True) -> list[TrainedRun]:
    """Two runs that differ only in their random initialisation (same minibatch order); ``fit=False`` reads
    finished runs back without writing."""
    data = study_data(params.data)
    init_a, init_b, batches = derived_seeds(seed, 3)
    spec = TrainSpec(epochs=params.epochs, batch_size=params.batch_size, lr=params.lr, optimizer=OptimizerName.adam,
                     seed=batches, save_every=max(1, params.epochs // params.checkpoints))
    if not fit:
        return [read_run(folder / f"start_{s}", model=MODELS[cell["model"]], data=data, init_seed=init,
                         epochs=params.epochs) for s, init in zip(STARTS, (init_a, init_b), strict=True)]
    return [train_run(folder / f"start_{s}", model=MODELS[cell["model"]], data=data, spec=spec, init_seed=init,
                      device=params.device) for s, init in zip(STARTS, (init_a, init_b), strict=True)]


def _pair_cell(params: Goodfellow, study_dir: str, cell: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Train two starts; the profile init → solution of each, and the line between the two solutions."""
    folder = Path(study_dir) / "runs" / cell_id(cell)
    data = study_data(params.data)
    runs = _train_pair(params, folder, cell, seed)
    grid = f"0:1:{params.points}"
    spec = path_eval_spec()  # BatchNorm nets: statistics re-estimated at every point (no-op for the defaults)
    profiles = [interpolate(run.initial, run.final, data, x=grid, eval_spec=spec, out=folder / f"profile_{name}.zarr",
                            device=params.device) for name, run in zip(STARTS, runs, strict=True)]
    between = interpolate(runs[0].final, runs[1].final, data, x=grid, eval_spec=spec, out=folder / "between.zarr",
                          device=params.device)
    return {**{f"profile_{m}": np.stack([p[m].values for p in profiles]) for m in PROFILE_METRICS},
            **{f"between_{m}": between[m].values for m in PROFILE_METRICS},
            "alpha": between.x.values,
            "distance_solutions": np.array(parameter_distance(runs[0].final, runs[1].final)),
            "distance_travelled": np.array([parameter_distance(r.initial, r.final) for r in runs])}


def _plane_cell(params: Goodfellow, study_dir: str, study_seed: int, cell: dict[str, Any],
                seed: int) -> dict[str, np.ndarray]:
    """Goodfellow et al.'s 2-D view of start A of pair 0: the plane through θ₀, θ* and the checkpoint of the
    trajectory farthest from the line θ₀θ*, the loss on it and the trajectory projected onto it."""
    pair = {"model": cell["model"], "pair": 0}
    folder = Path(study_dir) / "runs" / cell_id(pair)
    run = _train_pair(params, folder, pair, cell_seed(study_seed, pair), fit=False)[0]
    files = run.checkpoints()
    keys = list(parameters_of(run.initial))
    points = [{k: v.double() for k, v in read_state_dict(f).items() if k in keys} for f in files]
    steps = [{k: p[k] - points[0][k] for k in keys} for p in points]
    line = {k: t / float(inner(steps[-1], steps[-1])) ** 0.5 for k, t in steps[-1].items()}
    off_line = [max(float(inner(s, s) - inner(s, line) ** 2), 0.0) ** 0.5 if i else 0.0 for i, s in enumerate(steps)]
    farthest = int(np.argmax(off_line[:-1]))
    if farthest == 0:
        raise UserInputError("goodfellow: the trajectory has no checkpoint off the line θ₀θ*; raise checkpoints")
    (u, v), _ = plane_directions(points[0], points[-1], points[farthest])
    coords = np.array([[float(inner(s, u)), float(inner(s, v))] for s in steps])
    residual = [float(inner(s, s) - inner(s, u) ** 2 - inner(s, v) ** 2) for s in steps]
    x, y = anchor_axes(coords, params.plane_points)
    ds = surface(run.initial, study_data(params.data), x=x, y=y, directions=PlaneSpec((files[0], files[-1],
                 files[farthest])), out=folder / "plane_A.zarr", device=params.device)
    epochs = np.array([int(f.stem.split("_")[-1]) for f in files])
    return {"plane_x": ds.x.values, "plane_y": ds.y.values, "plane_train_loss": ds.train_loss.values,
            "plane_test_loss": ds.test_loss.values, "path_x": coords[:, 0], "path_y": coords[:, 1],
            "path_epoch": epochs, "path_residual": np.sqrt(np.clip(residual, 0, None)),
            "path_train_loss": run.metrics["train_loss"][epochs]}


@study("goodfellow",
       paper="Goodfellow, Vinyals & Saxe 2015, Qualitatively characterizing neural network optimization problems "
             "(ICLR)",
       claim="On the straight line from the initialisation to the solution found by training, the training loss "
             "of MLPs, CNNs and LSTMs falls monotonically (no bump); two random starts reach two different "
             "solutions with a barrier on the line between them")
@dataclass(frozen=True)
class Goodfellow(Study):
    """Linear-path profiles θ(α) = (1 − α) θ₀ + α θ* for the MNIST-1D workhorse nets (Goodfellow et al. 2015).

    Protocol: for each model (``mlp``, ``cnn``, ``lstm``; ``gru`` and ``logistic`` also allowed: the nets of
    :mod:`lossatlas.studies.mnist1d_baselines`, and ``zoo:lstm``, the GRU's LSTM twin) and each of ``pairs``
    pairs, two runs from two random initialisations (PyTorch defaults, independent seeds) with the same
    minibatch order are trained with Greydanus' protocol (Adam 1e-2, batch 100) for ``epochs`` epochs. For each
    run the training loss at ``points`` equally spaced α in [0, 1] (:func:`lossatlas.landscape.interpolate`,
    whole training split); the *largest uphill climb* max_j (L(α_j) − min_{i≤j} L(α_i)) / L(θ₀), the height of
    the biggest bump met walking from θ₀ to θ* (0 for a monotone profile, whatever the grid spacing). Between
    the two solutions of a pair, the line (1 − α) θ*_A + α θ*_B and its barrier max_α L − (linear interpolation
    of the end values) (:func:`lossatlas.paths.barrier.loss_barrier`).
    For start A of pair 0 of every model in ``plane_models``: the loss on the plane through θ₀, θ* and the
    checkpoint farthest from their line (Goodfellow et al.'s 2-D view: the line and the direction in which the
    path strays from it; :func:`lossatlas.directions.plane_directions`), with the trajectory projected onto it.
    """

    models: tuple[str, ...] = ("mlp", "cnn", "lstm")
    pairs: int = 1
    epochs: int = 3
    batch_size: int = 100
    lr: float = 1e-2
    points: int = 21
    checkpoints: int = 10
    plane_models: tuple[str, ...] = ("cnn",)
    plane_points: int = 9
    bump_tolerance: float = 0.01
    data: str = "mnist1d"
    device: str = "cpu"

    PUBLISHED = Published(
        source="Goodfellow, Vinyals & Saxe 2015 (ICLR): the profiles of MLPs, CNNs and LSTMs (Sec. 3) and the "
               "'two random starting points, two solutions' figure, as reproduced in the lecture notes (seed 004, "
               "'Profile', 'Profile - LSTM')",
        columns=("model", "max_uphill_rel", "bump_pct", "solution_barrier_present"),
        rows=(("mlp", 0.0, 0.0, "yes"), ("cnn", 0.0, 0.0, "yes"), ("lstm", 0.0, 0.0, "yes")),
        note="published as plots: 'no bump' is read as a largest uphill climb of 0; the barrier between two "
             "solutions is shown, not measured")
    NOTES = """Sources: all four claims are Goodfellow et al. 2015's (published), read from plots: the profiles
    from θ₀ to θ* have no bump (max_uphill_rel, bump_pct), and two random starts reach two solutions with a
    barrier on the line between them (solution_barrier_present; the barrier's height, solution_barrier, has no
    published number and is shown, not compared). Margins: a climb smaller than bump_tolerance = 1% of L(θ₀) is
    invisible on profiles whose scale is set by L(θ₀) (the resolution of the published plots), so
    max_uphill_rel, the largest climb over the converged runs of a model, is exact with margin 0.01;
    bump_pct, the share of those runs climbing more than that, is a rate against 0 with the 5-point margin of
    every rate (no run count is published: with a handful of runs it can differ or be inconclusive, not agree).
    solution_barrier_present is exact text: 'yes' when the line between the two solutions of every converged
    pair rises above 1% of L(θ₀) over the chord of its end values; it fails for a convex model (the
    'logistic' net) and whenever two starts reach one basin.

    Convergence gate (stated before the full run): θ* counts as a solution when L(θ*) ≤ L(θ₀)/4 with a finite
    loss (a set-up check of training losses alone fixed it: the full protocol ends at 0.08-0.2 nats, the quick
    preset at 1.0-1.3); it is weaker than Goodfellow et al.'s 'negligible training error'. A profile counts only
    if its θ* passed, a pair only if both did; a model with fewer than half (or fewer than two) converged runs
    is 'not comparable (unconverged)'. The quick preset (3 epochs, 120 Adam steps, one pair per model and a 9×9
    plane for the CNN) is therefore a smoke test whose rows are not comparable; the full preset trains 30
    epochs (1200 steps), 2 pairs, 41 points per line and 17×17 planes for the MLP, CNN and LSTM.

    What differed in the earlier full run (before this gate): the LSTM's profile climbs in 3 of 4 runs (by up
    to 29% of L(θ₀), around α ≈ 0.3) before falling to the solution, while the MLP's and CNN's are monotone.
    Goodfellow et al.'s LSTM was a different net (a sequence model on other data, their optimiser); ours is the
    GRU's LSTM twin on MNIST-1D trained with Greydanus' protocol (Adam 1e-2), fixed in advance; no other
    learning rates or optimisers were tried."""

    def __post_init__(self) -> None:
        unknown = [m for m in (*self.models, *self.plane_models) if m not in MODELS]
        if unknown or not self.models:
            raise UserInputError(f"goodfellow: unknown model '{unknown[0] if unknown else ''}'; models are "
                                 f"{', '.join(MODELS)}")
        if min(self.pairs, self.epochs, self.batch_size, self.checkpoints) < 1 or self.points < 3 or not self.lr > 0:
            raise UserInputError("goodfellow: pairs, epochs, batch_size, checkpoints must be positive, points >= 3")
        if self.plane_models and (self.plane_points < 3 or self.checkpoints < 2 or self.epochs < 2):
            raise UserInputError("goodfellow: a plane needs plane_points >= 3 and a trajectory of >= 3 checkpoints")

    @classmethod
    def full(cls) -> Goodfellow:
        return cls(pairs=2, epochs=30, points=41, plane_models=("mlp", "cnn", "lstm"), plane_points=17)

    def run(self, ctx: Context) -> xr.Dataset:
        study_dir = str(ctx.folder)
        cells = [{"model": m, "pair": p} for m in self.models for p in range(self.pairs)]
        results = ctx.map(functools.partial(_pair_cell, self, study_dir), cells)
        planes = ctx.map(functools.partial(_plane_cell, self, study_dir, ctx.seed),
                         [{"model": m, "plane": "A"} for m in self.plane_models])
        shape = (len(self.models), self.pairs)

        def stack(name: str) -> np.ndarray:
            return np.stack([r[name] for r in results]).reshape(*shape, *results[0][name].shape)

        data: dict[str, Any] = {
            **{f"profile_{m}": (("model", "pair", "start", "alpha"), stack(f"profile_{m}")) for m in PROFILE_METRICS},
            **{f"between_{m}": (("model", "pair", "alpha"), stack(f"between_{m}")) for m in PROFILE_METRICS},
            "distance_solutions": (("model", "pair"), stack("distance_solutions")),
            "distance_travelled": (("model", "pair", "start"), stack("distance_travelled"))}
        coords: dict[str, Any] = {"model": list(self.models), "pair": np.arange(self.pairs), "start": list(STARTS),
                                  "alpha": results[0]["alpha"]}
        if planes:
            data.update({k: (("plane_model", *dims), np.stack([p[k] for p in planes]))
                         for k, dims in PLANE_DIMS.items()})
            coords["plane_model"] = list(self.plane_models)
        return xr.Dataset(data, coords=coords)

    def check(self, ds: xr.Dataset) -> list[Row]:
        rows: list[Row] = []
        alpha = ds.alpha.values
        criterion = f"L(θ*) <= {SOLVED_FRACTION:g}·L(θ₀)"
        for model in ds.model.values:
            key = {"model": str(model)}
            profiles = ds.profile_train_loss.sel(model=model).values.reshape(-1, alpha.size)  # (pair·start, α)
            ok = solved(profiles[:, 0], profiles[:, -1])
            mask, enough = converged_runs(ok)
            gone = int((~mask).sum())
            claims: tuple[tuple[str, Expected], ...] = (
                ("max_uphill_rel", published(0.0, MONOTONE_REF, self.bump_tolerance)),
                ("bump_pct", published(0.0, MONOTONE_REF, MARGIN_RATE)))
            if enough or mask.all():
                rows += self._profile_rows(key, profiles[mask], alpha, claims, gone)
            else:
                rows += [Row.unconverged_row(q, key, e, runs=ok.size, unconverged=gone, criterion=criterion)
                         for q, e in claims]
            rows += self._barrier_rows(ds, model, key, np.asarray(ok.reshape(-1, 2).all(axis=1)), criterion)
        return rows

    def _profile_rows(self, key: dict[str, str], profiles: np.ndarray, alpha: np.ndarray,
                      claims: tuple[tuple[str, Expected], ...], gone: int) -> list[Row]:
        """Largest climb and share of bumpy profiles over the converged runs of one model."""
        uphill = np.array([climbs(p).max() for p in profiles]) / profiles[:, 0]
        worst = int(np.argmax(uphill))
        top = int(np.argmax(climbs(profiles[worst])))
        bottom = int(np.argmin(profiles[worst][:top + 1]))
        bumps = int((uphill > self.bump_tolerance).sum())
        left = f"; {gone} unconverged runs left out" if gone else ""
        note = (f"monotone in all {uphill.size} converged runs" if uphill[worst] == 0 else
                f"a bump above {self.bump_tolerance:g}·L(θ₀) in {bumps} of {uphill.size} converged runs; the "
                f"largest climbs {uphill[worst]:.3g}·L(θ₀) from α = {alpha[bottom]:.3g} to {alpha[top]:.3g}") + left
        (q1, e1), (q2, e2) = claims
        return [Row.compare(q1, key, e1, exact(float(uphill[worst])), note=note, unconverged=gone),
                Row.compare(q2, key, e2, rate(bumps, uphill.size), unconverged=gone,
                            note=f"converged runs whose profile climbs more than {self.bump_tolerance:g}·L(θ₀)"
                                 + left)]

    def _barrier_rows(self, ds: xr.Dataset, model: Any, key: dict[str, str], pair_ok: np.ndarray,
                      criterion: str) -> list[Row]:
        """The line between the two solutions of every pair whose two runs both converged."""
        alpha = ds.alpha.values
        height = published(None, f"{GOODFELLOW}, 'two solutions' figure: shown, no height printed", 0.0)
        present = published("yes", BARRIER_REF, 0.0)
        mask, enough = converged_runs(pair_ok)
        gone = int((~mask).sum())
        if not (enough or mask.all()):
            return [Row.unconverged_row(q, key, e, runs=mask.size, unconverged=gone,
                                        criterion=f"{criterion}, both runs of a pair")
                    for q, e in (("solution_barrier", height), ("solution_barrier_present", present))]
        between = ds.between_train_loss.sel(model=model).values[mask]
        start = ds.profile_train_loss.sel(model=model).isel(alpha=0).values[mask].mean(axis=-1)  # L(θ₀) of a pair
        barriers = np.array([loss_barrier(alpha, b)["barrier"] for b in between])
        relative = barriers / start
        seen = int((relative > self.bump_tolerance).sum())
        distance = float(ds.distance_solutions.sel(model=model).values[mask].mean())
        travelled = float(ds.distance_travelled.sel(model=model).values[mask].mean())
        left = f"; {gone} pairs with an unconverged run left out" if gone else ""
        return [Row.compare("solution_barrier", key, height, sample(barriers), unconverged=gone,
                            note="train-loss barrier on the line between the two solutions (nats)" + left),
                Row.compare("solution_barrier_present", key, present, exact("yes" if seen == mask.sum() else "no"),
                            unconverged=gone,
                            note=f"a barrier above {self.bump_tolerance:g}·L(θ₀) in {seen} of {int(mask.sum())} "
                                 f"converged pairs (relative barriers {', '.join(f'{r:.3g}' for r in relative)}); "
                                 f"‖θ*_A − θ*_B‖ = {distance:.3g} against ‖θ* − θ₀‖ = {travelled:.3g}" + left)]

    def figures(self, ds: xr.Dataset, folder: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        models = list(ds.model.values)
        fig, axes = plt.subplots(2, len(models), figsize=(4 * len(models), 6.5), squeeze=False)
        alpha = ds.alpha.values
        for i, model in enumerate(models):
            ax, bx = axes[0, i], axes[1, i]
            for p in ds.pair.values:
                for s, style in zip(STARTS, ("-", "-."), strict=True):
                    prof = ds.sel(model=model, pair=p, start=s)
                    ax.plot(alpha, prof.profile_train_loss, style, color="C0", lw=1)
                    ax.plot(alpha, prof.profile_test_loss, style, color="C1", lw=1, alpha=0.7)
                bx.plot(alpha, ds.between_train_loss.sel(model=model, pair=p), color="C0", lw=1)
                bx.plot(alpha, ds.between_test_loss.sel(model=model, pair=p), color="C1", lw=1, alpha=0.7)
            ax.set(title=f"{model}: θ₀ → θ* (train blue, test orange)", xlabel="α", ylabel="loss")
            bx.set(title=f"{model}: θ*_A → θ*_B", xlabel="α", ylabel="loss")
        fig.tight_layout()
        paths = [folder / "profiles.png"]
        fig.savefig(paths[0], dpi=110)
        plt.close(fig)
        if "plane_model" in ds.coords:
            planes = list(ds.plane_model.values)
            fig, axes = plt.subplots(1, len(planes), figsize=(4.5 * len(planes), 4), squeeze=False)
            for ax, model in zip(axes[0], planes, strict=True):
                p = ds.sel(plane_model=model)
                z = np.log10(np.clip(p.plane_train_loss.values.T, 1e-6, None))
                cs = ax.contourf(p.plane_x.values, p.plane_y.values, z, levels=20, cmap="viridis")
                fig.colorbar(cs, ax=ax, label="log10 train loss")
                ax.plot(p.path_x, p.path_y, "-o", color="tab:red", ms=3, lw=1.2, label="trajectory")
                ax.plot([p.path_x[0], p.path_x[-1]], [p.path_y[0], p.path_y[-1]], "w--", lw=1, label="line θ₀θ*")
                ax.set(title=f"{model}: plane through θ₀, θ*, farthest checkpoint", xlabel="along θ* − θ₀",
                       ylabel="off the line")
                ax.legend(fontsize=7)
            fig.tight_layout()
            paths.append(folder / "planes.png")
            fig.savefig(paths[-1], dpi=110)
            plt.close(fig)
        return paths


__all__ = ["MODELS", "SOLVED_FRACTION", "Goodfellow", "solved"]
