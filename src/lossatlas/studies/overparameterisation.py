"""Over-parameterisation and the landscape: Yu & Chen's d₁ = m sigmoid nets, and level-set connectivity by dynamic
string sampling (Freeman & Bruna 2017; Venturi, Bandeira & Bruna 2018)."""

from __future__ import annotations

import functools
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from lossatlas.data import Dataset
from lossatlas.errors import UserInputError
from lossatlas.models import build_model
from lossatlas.paths.string import StringSpec, string_sampling
from lossatlas.studies.batched import batched_descent, model_loss, run_slice, zoo_runs
from lossatlas.studies.framework import Context, Row, converged_runs, save_figure
from lossatlas.studies.registry import Published, Study, study
from lossatlas.studies.verdict import MARGIN_RATE, Expected, exact, protocol, published, rate, sample

NETS = {
    "linear": "zoo:linear:widths={h}-{h}",
    "quadratic-wide": "zoo:mlp:widths={wide},activation=quadratic,bias=false",
    "quadratic-narrow": "zoo:mlp:widths={narrow},activation=quadratic,bias=false",
    "relu-narrow": "zoo:mlp:widths={narrow},activation=relu,bias=false",
    "relu-wide": "zoo:mlp:widths={wide},activation=relu,bias=false",
}
"""The level-set nets: a deep linear net with two hidden layers of width h > min(n₀, n_L) = 1 (Freeman & Bruna,
Thm. 2.1); two-layer quadratic-activation nets of width 2N + 2 > 2N (Venturi et al.) and of a narrow width; narrow
(and wide) two-layer ReLU nets (Freeman & Bruna, Thm. 2.4: some data make their level sets disconnected)."""

CONNECTED = {"linear": 100.0, "quadratic-wide": 100.0}
"""Nets whose every level set is connected by a theorem (published 100% of pairs connect)."""

CONNECTED_REFS = {
    "linear": "Freeman & Bruna 2017, Thm. 2.1 (deep linear nets with n_ℓ > min(n₀, n_L): one connected "
              "component), statement: seed 000, line 85",
    "quadratic-wide": "Venturi, Bandeira & Bruna 2018 (two-layer quadratic nets of width n > 2N: one connected "
                      "component), statement: seed 000, line 101"}

YU_CHEN = ("Yu & Chen 1995, theorem (sigmoid, distinct samples, d₁ = m: all local minima are global), statement: "
           "seed 003, line 221; seed 001, line 94: Li, Ding & Sun 2018 show the proof excludes only strict "
           "suboptimal local minima")

VENTURI = ("Venturi, Bandeira & Bruna 2018 as the notes state it: for a two-layer net with W₁ ∈ R^(m×n), any θ₁, θ₂ "
           "with L(θᵢ) ≤ λ are joined by a path with L ≤ max(λ, m^(−1/n)), statement: seed 000, line 97")

CRITICAL_GRAD = 1e-5
"""Convergence criterion of a Yu & Chen run that misses the success loss: ‖∇L‖ ≤ 1e-5 at the end (it stopped at a
critical point); a run above it was still descending when the step budget ended and is not counted."""

REPORTED = protocol(None, "reported, not judged: no theorem gives a number for it")


def two_layer_width(spec: str) -> int | None:
    """m, the hidden width of a two-layer net's spec (``widths=M`` with one hidden layer), else None."""
    for part in spec.split(":")[-1].split(","):
        if part.startswith("widths="):
            widths = part.removeprefix("widths=").split("-")
            return int(widths[0]) if len(widths) == 1 and "activation=" in spec else None
    return None


def venturi_bound(lam: float, m: int, n: int) -> float:
    """max(λ, m^(−1/n)): the level a path between two points of loss ≤ λ needs not exceed (seed 000:97)."""
    return max(float(lam), float(m) ** (-1.0 / n))


def random_regression(samples: int, dim: int, seed: int) -> tuple[Tensor, Tensor]:
    """x_i ~ N(0, I_dim) (distinct with probability 1), y_i ~ N(0, 1): (samples, dim), (samples, 1), float64."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(samples, dim, generator=g, dtype=torch.float64),
            torch.randn(samples, 1, generator=g, dtype=torch.float64))


def sigmoid_net_loss(w1: Tensor, w2: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Yu & Chen's objective per run: ½‖Y − W₂ σ(W₁ [X; 1])‖²_F / m for stacked W₁ (R, d₁, d₀ + 1), W₂ (R, 1, d₁),
    inputs x (m, d₀) and targets y (m, 1) → (R,)."""
    xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1).T  # (d₀ + 1, m)
    out = w2 @ torch.sigmoid(w1 @ xa)  # (R, 1, m)
    return 0.5 * ((out - y.T) ** 2).sum(dim=(1, 2)) / x.shape[0]


def _yu_chen_cell(params: Overparameterisation, cell: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """``runs`` sigmoid nets of hidden width d₁ on one fixed random data set, batched Adam, then lr / 10."""
    x, y = (t.to(params.device) for t in random_regression(params.samples, params.input_dim, params.data_seed))
    d1 = int(cell["d1"])
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same starts on every device
    theta = {"w1": torch.randn(params.runs, d1, params.input_dim + 1, generator=g, dtype=torch.float64),
             "w2": torch.randn(params.runs, 1, d1, generator=g, dtype=torch.float64) / math.sqrt(d1)}
    theta = {k: v.to(params.device) for k, v in theta.items()}

    def loss(th: dict[str, Tensor]) -> Tensor:
        return sigmoid_net_loss(th["w1"], th["w2"], x, y)

    first = batched_descent(loss, theta, optimizer="adam", lr=params.lr, steps=params.steps, stacked=True)
    end = batched_descent(loss, first.theta, optimizer="adam", lr=params.lr / 10, steps=params.steps // 2,
                          stacked=True)
    return {"loss": end.loss.cpu().numpy(), "grad_norm": end.grad_norm.cpu().numpy()}


def _fit_ends(spec: str, seeds: list[int], data: Dataset, params: Overparameterisation) -> list[torch.nn.Module]:
    """Train one net per seed to (near) a minimum of the mean squared error: batched Adam (on ``params.device``),
    then lr / 10; the nets come back on the CPU."""
    x, y = (t.to(params.device, torch.float64) for t in data.split("train"))
    model, theta = zoo_runs(spec, seeds, input_shape=data.input_shape, output_dim=1)
    model, theta = model.to(params.device), {k: v.to(params.device) for k, v in theta.items()}
    loss = model_loss(model, x, y, lambda out, target: ((out - target) ** 2).mean(-1))
    first = batched_descent(loss, theta, optimizer="adam", lr=params.lr, steps=params.steps)
    end = batched_descent(loss, first.theta, optimizer="adam", lr=params.lr / 10, steps=params.steps // 2)
    nets = []
    for i in range(len(seeds)):
        net = build_model(spec, input_shape=data.input_shape, output_dim=1, seed=seeds[i])
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(run_slice(end.theta, i)[name].float().cpu())
        nets.append(net.eval())
    return nets


def _level_cell(params: Overparameterisation, cell: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """``pairs`` pairs of minima of one net; string sampling between each pair at every threshold."""
    x, y = random_regression(params.level_samples, params.level_dim, params.data_seed + 1)
    data = Dataset(name="random-regression", x_train=x.float(), y_train=y.float(), x_test=None, y_test=None,
                   task="regression", num_classes=None)
    spec = params.net_spec(str(cell["net"]))
    nets = _fit_ends(spec, [seed + k for k in range(2 * params.pairs)], data, params)
    scale = float(y.var(unbiased=False))
    shape = (params.pairs, len(params.thresholds))
    out = {k: np.full(shape, np.nan) for k in ("threshold", "success", "geodesic", "beads", "line_max", "path_max")}
    ends = np.full((params.pairs, 2), np.nan)
    for p in range(params.pairs):
        a, b = nets[2 * p], nets[2 * p + 1]
        with torch.no_grad():
            ends[p] = [float(((net(data.x_train) - data.y_train) ** 2).mean()) for net in (a, b)]
        for j, fraction in enumerate(params.thresholds):
            threshold = float(ends[p].max()) + fraction * scale
            string = StringSpec(threshold=threshold, max_beads=params.max_beads, budget=params.budget, lr=params.lr,
                                momentum=0.9, batch_size=params.level_samples, check_every=10, seed=seed + p)
            with tempfile.TemporaryDirectory() as tmp:
                attrs = string_sampling(a, b, data, string, out=Path(tmp) / "string", loss="mse").attrs
            out["threshold"][p, j] = threshold
            out["success"][p, j] = float(bool(attrs["success"]))
            out["geodesic"][p, j] = float(attrs["normalized_geodesic_length"])
            out["beads"][p, j] = float(attrs["n_beads"])
            out["line_max"][p, j] = float(attrs["line_max_train_loss"])
            out["path_max"][p, j] = float(attrs["max_train_loss"])
    return {**out, "ends": ends}


@study("overparameterisation",
       paper="Yu & Chen 1995 (IEEE TNN 6(5)); Freeman & Bruna 2017, Topology and Geometry of Half-Rectified Network "
             "Optimization (ICLR); Venturi, Bandeira & Bruna 2018 (arXiv:1802.06384)",
       claim="a one-hidden-layer sigmoid net with d₁ = m hidden units has no suboptimal local minima (training "
             "reaches zero loss); level sets of deep linear nets with n_ℓ > min(n₀, n_L) and of quadratic nets of "
             "width > 2N are connected; narrow ReLU nets need not be; the normalised geodesic length grows as the "
             "level drops")
@dataclass(frozen=True)
class Overparameterisation(Study):
    """Training success vs width around d₁ = m, and level-set connectivity by dynamic string sampling.

    Method. (1) Yu & Chen: m points x_i ~ N(0, I_{d₀}) with targets y_i ~ N(0, 1), the net W₂ σ(W₁[x; 1]) with
    sigmoid σ and d₁ hidden units; ``runs`` starts (W₁ ~ N(0, 1), W₂ ~ N(0, 1/d₁)) trained by full-batch Adam
    (``lr`` for ``steps`` steps, then ``lr``/10 for half as many), batched over runs; a run succeeds when
    ½‖Y − Ŷ‖²/m ≤ ``success_loss``. (2) Level sets: N points (``level_samples``) in ``level_dim`` dimensions with
    random targets; for each net of :data:`NETS`, ``pairs`` pairs of minima (independent starts, the same batched
    Adam on the mean squared error); for each pair and each ``threshold`` fraction f, λ = max(L_A, L_B) + f·Var(y)
    and Freeman & Bruna's dynamic string sampling (``lossatlas.paths.string``) searches a path below λ within
    ``max_beads`` beads and ``budget`` SGD steps; success means a path was found (a failure within the budget
    is evidence of disconnection, not proof). The normalised geodesic length of each found path is recorded.
    ``device`` runs the batched descents (both parts) there; string sampling of these tiny nets stays on the CPU.
    """

    samples: int = 16
    input_dim: int = 2
    widths: tuple[int, ...] = (4, 8, 16, 32)
    runs: int = 50
    steps: int = 1000
    lr: float = 0.01
    success_loss: float = 1e-4
    level_samples: int = 8
    level_dim: int = 4
    nets: tuple[str, ...] = ("linear", "quadratic-wide", "quadratic-narrow", "relu-narrow")
    narrow: int = 2
    linear_width: int = 3
    pairs: int = 2
    thresholds: tuple[float, ...] = (0.1, 0.01)
    max_beads: int = 10
    budget: int = 2000
    data_seed: int = 1234
    device: str = "cpu"

    PUBLISHED = Published(
        source="Yu & Chen 1995 (theorem as stated in the lecture notes, seed 003 / seed 001 Sec. 6.3: with d₁ = m "
               "and distinct samples, all local minima are global — seed 001 adds Li, Ding & Sun 2018's correction "
               "that the proof only excludes strict suboptimal minima); Freeman & Bruna 2017, Thm. 2.1 (linear) "
               "and 2.4 (ReLU), Sec. 4 (normalised geodesic length); Venturi et al. 2018 (quadratic, width > 2N); "
               "as summarised in the lecture notes seed 000.",
        columns=("claim", "published"),
        rows=(("success_pct, d₁ ≥ m", 100.0), ("connected_pct, linear n_ℓ > min(n₀, n_L)", 100.0),
              ("connected_pct, quadratic width > 2N", 100.0), ("connected_pct, narrow ReLU", "may be < 100"),
              ("normalised geodesic length as λ drops", "grows")))
    NOTES = """Sources and margins. success_pct: published 100 (Yu & Chen 1995's theorem as seed 003:221 states
    it) only where d₁ ≥ m; seed 001:94 reports Li, Ding & Sun 2018's objection (the proof excludes only strict
    suboptimal minima), so a row that differs tests the published claim, not our code. Narrower nets are reported,
    not judged. Margin: MARGIN_RATE = 5 points (a rate over runs; a theorem has no run count of its own).
    Convergence gate: a run counts when it reached success_loss or stopped at a critical point (‖∇L‖ ≤ 1e-5 at the
    end, CRITICAL_GRAD); a run above both was still descending when the step budget ended and is counted apart
    (the note says how many), never as a failure; a width where fewer than half the runs converged is not
    comparable (unconverged).

    connected_pct: published 100 for the nets the theorems cover (Freeman & Bruna 2017 Thm. 2.1, seed 000:85;
    Venturi et al. 2018, width > 2N, seed 000:101), margin MARGIN_RATE, each net's thresholds one Holm family;
    narrow ReLU and quadratic nets are reported (the theorems give no number). A failed string only means dynamic
    string sampling found no path within max_beads beads and budget SGD steps: a row below 100 can be the search's
    limit, not a second component. With a few pairs these rows are inconclusive at best (runs_needed says how
    many pairs would decide). geodesic_length is reported; geodesic_grows is Freeman & Bruna 2017's observation
    (Sec. 4, their nets, not quoted by the seeds): 'yes' when the mean normalised geodesic length of the found
    paths at the lowest threshold exceeds that at the highest (point estimates over the pairs found at both).

    venturi_bound_pct (issue 17, item 5): the bound L(θ_γ(t)) ≤ max(λ, m^(−1/n)) as seed 000:97 states it, for
    every two-layer net of the run (the notes state it for ReLU nets under the slide on Venturi et al.'s quadratic
    nets; we check both). m = the hidden width, n = level_dim the input dimension, L our mean squared error (the
    notes give no constant or normalisation; our targets have variance ≈ 1), λ = the larger end loss of each
    pair (the tightest λ the statement allows). Measured from the stored runs in check(), no new computation:
    the best path we have between the pair's two minima is the straight line or a string of any threshold, its
    level the largest train loss on its evaluated points; a pair holds the bound when that level is ≤ max(λ,
    m^(−1/n)). Published 100% of pairs, margin MARGIN_RATE; a pair without such a path is the search's limit, not
    a counterexample."""

    def __post_init__(self) -> None:
        bad = [n for n in self.nets if n not in NETS]
        if bad:
            raise UserInputError(f"overparameterisation: unknown net '{bad[0]}'; choose from {', '.join(NETS)}")
        if self.samples < 1 or self.runs < 1 or self.steps < 2 or not self.widths or min(self.widths) < 1:
            raise UserInputError("overparameterisation: samples, runs, widths >= 1 and steps >= 2 are needed")
        if self.pairs < 0 or not self.thresholds or min(self.thresholds) <= 0 or self.level_samples < 1:
            raise UserInputError("overparameterisation: pairs >= 0, thresholds > 0 and level_samples >= 1")

    @classmethod
    def full(cls) -> Overparameterisation:
        return cls(widths=(2, 4, 8, 12, 16, 20, 32, 64), runs=200, steps=5000, pairs=8,
                   thresholds=(0.3, 0.1, 0.03, 0.01), nets=tuple(NETS), budget=3000)

    def net_spec(self, net: str) -> str:
        """The zoo spec of a level-set net (wide = 2N + 2 hidden units)."""
        return NETS[net].format(h=self.linear_width, wide=2 * self.level_samples + 2, narrow=self.narrow)

    def run(self, ctx: Context) -> xr.Dataset:
        yc = ctx.map(functools.partial(_yu_chen_cell, self), [{"part": "yu-chen", "d1": w} for w in self.widths])
        ds = xr.Dataset({"loss": (("d1", "run"), np.stack([c["loss"] for c in yc])),
                         "grad_norm": (("d1", "run"), np.stack([c["grad_norm"] for c in yc]))},
                        coords={"d1": list(self.widths), "run": np.arange(self.runs)})
        if self.pairs:
            level = ctx.map(functools.partial(_level_cell, self), [{"part": "level", "net": n} for n in self.nets])
            for name in ("threshold", "success", "geodesic", "beads", "line_max", "path_max"):
                ds[f"string_{name}"] = (("net", "pair", "fraction"), np.stack([c[name] for c in level]))
            ds["end_loss"] = (("net", "pair", "end"), np.stack([c["ends"] for c in level]))
            ds = ds.assign_coords(net=list(self.nets), pair=np.arange(self.pairs), fraction=list(self.thresholds))
        return ds

    def check(self, ds: xr.Dataset) -> list[Row]:
        rows: list[Row] = []
        for d1 in ds.d1.values:
            loss, grad = ds.loss.sel(d1=d1).values, ds.grad_norm.sel(d1=d1).values
            success = loss <= self.success_loss
            mask, enough = converged_runs(success | (grad <= CRITICAL_GRAD))
            unconverged = int((~mask).sum())
            key: dict[str, Any] = {"d1": int(d1), "m": self.samples}
            expected: Expected = published(100.0, YU_CHEN, MARGIN_RATE) if d1 >= self.samples else REPORTED
            criterion = f"loss ≤ {self.success_loss:g} or ‖∇L‖ ≤ {CRITICAL_GRAD:g} at the end"
            note = (f"{unconverged} of {loss.size} runs still descending when the step budget ended (‖∇L‖ > "
                    f"{CRITICAL_GRAD:g}), not counted") if unconverged else ""
            if d1 < self.samples:  # reported: the rate over all runs, the unconverged ones named in the note
                rows.append(Row.compare("success_pct", key, expected, rate(int(success.sum()), loss.size),
                                        note="d₁ < m: the theorem says nothing" + (f"; {note}" if note else "")))
                continue
            if not enough:
                rows.append(Row.unconverged_row("success_pct", key, expected, runs=loss.size, unconverged=unconverged,
                                                criterion=criterion))
                continue
            rows.append(Row.compare("success_pct", key, expected, rate(int(success[mask].sum()), int(mask.sum())),
                                    note=note, unconverged=unconverged))
        if "string_success" not in ds:
            return rows
        for net in ds.net.values:
            key_net = str(net)
            success = ds.string_success.sel(net=net).values
            geodesic = ds.string_geodesic.sel(net=net).values
            for j, fraction in enumerate(ds.fraction.values):
                key = {"net": key_net, "threshold": float(fraction)}
                s = success[:, j]
                expected = published(CONNECTED[key_net], CONNECTED_REFS[key_net], MARGIN_RATE) \
                    if key_net in CONNECTED else REPORTED
                rows.append(Row.compare("connected_pct", key, expected, rate(int(s.sum()), s.size),
                                        note=f"λ = max end loss + {fraction:g}·Var(y)",
                                        family=f"connected_pct:{key_net}"))
                rows.append(Row.compare("geodesic_length", key, REPORTED, sample(geodesic[s > 0, j])))
            both = (success[:, 0] > 0) & (success[:, -1] > 0)
            if both.any() and len(ds.fraction) > 1:
                high, low = float(geodesic[both, 0].mean()), float(geodesic[both, -1].mean())
                rows.append(Row.compare("geodesic_grows", {"net": key_net}, published(
                    "yes", "Freeman & Bruna 2017, Sec. 4 (normalised geodesic length grows as the level drops, on "
                           "their nets; not quoted by the seeds)", 0.0), exact("yes" if low > high else "no"),
                    note=f"mean normalised geodesic length {high:.3f} at f = {float(ds.fraction[0]):g}, {low:.3f} at "
                         f"f = {float(ds.fraction[-1]):g} ({int(both.sum())} pairs connected at both)"))
        if "string_path_max" in ds:
            rows += self._venturi_rows(ds)
        return rows

    def _venturi_rows(self, ds: xr.Dataset) -> list[Row]:
        """The bound of seed 000:97 on every two-layer net, from the stored ends, lines and strings."""
        rows = []
        for net in ds.net.values:
            m = two_layer_width(self.net_spec(str(net)))
            if m is None:
                continue
            ends = ds.end_loss.sel(net=net).values  # (pair, end)
            line = ds.string_line_max.sel(net=net).values[:, 0]  # the same straight line at every threshold
            paths = ds.string_path_max.sel(net=net).values  # (pair, threshold)
            best = np.fmin(line, np.nanmin(paths, axis=1))
            bound = np.array([venturi_bound(e.max(), m, self.level_dim) for e in ends])
            holds = best <= bound
            gap = float(m) ** (-1.0 / self.level_dim)
            rows.append(Row.compare(
                "venturi_bound_pct", {"net": str(net), "m": m, "n": self.level_dim},
                published(100.0, VENTURI, MARGIN_RATE), rate(int(holds.sum()), holds.size),
                note=f"m^(−1/n) = {gap:.3g}; λ = the larger end loss (max {ends.max():.3g}); best path level per pair "
                     f"{', '.join(f'{b:.3g}' for b in best)} (line or string); {int((~holds).sum())} pairs with "
                     "no path found under the bound (the search's limit, not a counterexample)"))
        return rows

    def figures(self, ds: xr.Dataset, folder: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        level = "string_success" in ds
        fig, axes = plt.subplots(1, 2 if level else 1, figsize=(11 if level else 5.5, 4), squeeze=False)
        ax = axes[0, 0]
        rates = [100 * float((ds.loss.sel(d1=d).values <= self.success_loss).mean()) for d in ds.d1.values]
        ax.plot(ds.d1.values, rates, "o-", label=f"measured ({self.runs} runs per width)")
        ax.axvline(self.samples, color="grey", ls="--", label=f"d₁ = m = {self.samples}")
        ax.set(xscale="log", xlabel="hidden units d₁", ylabel=f"% runs with loss ≤ {self.success_loss:g}",
               title="Yu & Chen: one-hidden-layer sigmoid nets", ylim=(-5, 105))
        ax.set_xticks(list(ds.d1.values), [str(int(d)) for d in ds.d1.values])
        ax.minorticks_off()
        ax.legend(fontsize=8)
        if level:
            ax = axes[0, 1]
            for k, net in enumerate(ds.net.values):
                geo = ds.string_geodesic.sel(net=net).values
                ok = ds.string_success.sel(net=net).values > 0
                means = [float(geo[ok[:, j], j].mean()) if ok[:, j].any() else np.nan for j in range(geo.shape[1])]
                rate = [100 * float(ok[:, j].mean()) for j in range(geo.shape[1])]
                ax.plot(ds.fraction.values, means, "o-", color=f"C{k}",
                        label=f"{net} (connected {', '.join(f'{r:.0f}' for r in rate)}%)")
            ax.set(xscale="log", xlabel="f (λ = max end loss + f·Var y)", ylabel="normalised geodesic length",
                   title="Level sets by string sampling")
            ax.set_xticks(list(ds.fraction.values), [f"{f:g}" for f in ds.fraction.values])
            ax.minorticks_off()
            ax.invert_xaxis()
            ax.legend(fontsize=7)
        return [save_figure(fig, folder / "overparameterisation.png", dpi=120)]


__all__ = ["CONNECTED", "NETS", "Overparameterisation", "random_regression", "sigmoid_net_loss"]
