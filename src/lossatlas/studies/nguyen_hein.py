"""Nguyen & Hein 2017: a deep sigmoid net with one layer wider than the number of training samples has no
suboptimal local minima (under rank and non-degeneracy conditions)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from lossatlas.errors import UserInputError
from lossatlas.studies.framework import Context, Row, converged_runs, save_figure
from lossatlas.studies.registry import Published, Study, study
from lossatlas.studies.verdict import MARGIN_RATE, protocol, published, rate

CLAIM_REF = ("Nguyen & Hein 2017 (ICML), The Loss Surface of Deep and Wide Neural Networks, main theorem (Sec. 3): "
             "sigmoid, distinct samples, a layer with d_k >= m, full-rank layers above it and a non-degenerate "
             "Hessian w.r.t. W_{k+1:H} => a local minimum is global; the notes: seed 003:266")
"""Where the published claim comes from (read as: every critical point gradient-based training ends at is global)."""

STOP_REASONS = ("grad_tol", "global", "max_steps", "non_finite")
"""Why a run ended (``stop`` in results.zarr): ‖∇L‖ ≤ grad_tol, L ≤ global_loss · L₀, the step cap, or a
non-finite loss."""


@dataclass(frozen=True)
class Net:
    """The layer sizes of ŷ = W₃ σ(W₂ σ(W₁ x)) (no biases, as in the notes' formula), one output."""

    d0: int
    d1: int
    d2: int

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        return (self.d1, self.d0), (self.d2, self.d1), (1, self.d2)

    @property
    def size(self) -> int:
        return sum(a * b for a, b in self.shapes)

    def unpack(self, theta: Tensor) -> list[Tensor]:
        """``(R, P)`` → ``[W₁ (R, d₁, d₀), W₂ (R, d₂, d₁), W₃ (R, 1, d₂)]``."""
        parts = theta.split([a * b for a, b in self.shapes], dim=1)
        return [p.reshape(-1, a, b) for p, (a, b) in zip(parts, self.shapes, strict=True)]

    def init(self, runs: int, seed: int) -> Tensor:
        """``(runs, P)`` LeCun-normal starts: every W_l i.i.d. N(0, 1/fan_in), float64, from ``seed``."""
        g = torch.Generator().manual_seed(int(seed))
        parts = [torch.randn(runs, a, b, generator=g, dtype=torch.float64) / math.sqrt(b) for a, b in self.shapes]
        return torch.cat([p.flatten(1) for p in parts], 1)


def regression_data(samples: int, dim: int, seed: int) -> tuple[Tensor, Tensor]:
    """X ``(dim, samples)`` with columns x_i ~ N(0, I) (distinct with probability 1) and targets y ``(samples,)``
    ~ N(0, 1), float64."""
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(dim, samples, generator=g, dtype=torch.float64)
    return x, torch.randn(samples, generator=g, dtype=torch.float64)


def forward(net: Net, theta: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(F₁ = σ(W₁X) (R, d₁, m), F₂ = σ(W₂F₁) (R, d₂, m), ŷ (R, m))`` for stacked ``theta (R, P)``."""
    w1, w2, w3 = net.unpack(theta)
    f1 = torch.sigmoid(w1 @ x)
    f2 = torch.sigmoid(w2 @ f1)
    return f1, f2, (w3 @ f2)[:, 0, :]


def jacobian(net: Net, theta: Tensor, x: Tensor, f1: Tensor, f2: Tensor) -> Tensor:
    """∂ŷ_i/∂θ for every run: ``(R, m, P)`` in the order of :meth:`Net.unpack` (backpropagation by hand)."""
    _, w2, w3 = net.unpack(theta)
    r, m = theta.shape[0], x.shape[1]
    delta2 = w3.transpose(1, 2) * f2 * (1 - f2)  # ∂ŷ_i/∂(W₂F₁)_{j,i}: (R, d₂, m)
    delta1 = (w2.transpose(1, 2) @ delta2) * f1 * (1 - f1)  # ∂ŷ_i/∂(W₁X)_{l,i}: (R, d₁, m)
    j1 = torch.einsum("rli,qi->rilq", delta1, x).reshape(r, m, -1)
    j2 = torch.einsum("rji,rli->rijl", delta2, f1).reshape(r, m, -1)
    return torch.cat([j1, j2, f2.transpose(1, 2)], 2)


def mean_loss(net: Net, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """L(θ) = ½ Σ_i (ŷ_i − y_i)² / m per run → ``(R,)`` (the notes' ‖Y − Ŷ‖²_F up to the factor 1/(2m))."""
    out = forward(net, theta, x)[2]
    return 0.5 * ((out - y) ** 2).mean(1)


@dataclass(frozen=True)
class Ends:
    """Where every run of :func:`levenberg_marquardt` ended: arrays over runs ``(R,)`` and the final θ."""

    theta: Tensor
    loss: np.ndarray
    grad_norm: np.ndarray
    steps: np.ndarray
    stop: np.ndarray


def levenberg_marquardt(net: Net, theta0: Tensor, x: Tensor, y: Tensor, *, grad_tol: float, stop_below: float,
                        max_steps: int, damping: float = 1e-3) -> Ends:
    """Levenberg–Marquardt (Levenberg 1944; Marquardt 1963) on the squared loss, every run of ``theta0 (R, P)``.

    Step δ = −Jᵀ(JJᵀ + λI)⁻¹ r (= −(JᵀJ + λI)⁻¹Jᵀr, solved in the m × m form); a step is taken only when it
    lowers L (so L never rises), then λ ← λ/3, else λ ← 2λ. A run stops at the first iterate with ‖∇L‖ ≤
    ``grad_tol`` (∇L = Jᵀr/m), or L ≤ ``stop_below``, or after ``max_steps`` iterations, or at a non-finite loss;
    finished runs leave the batch.
    """
    runs, m = theta0.shape[0], x.shape[1]
    out_theta = theta0.clone()
    loss_out, grad_out = np.full(runs, np.nan), np.full(runs, np.nan)
    steps, stop = np.zeros(runs, dtype=np.int64), np.full(runs, 2, dtype=np.int64)
    active = torch.arange(runs)
    theta = theta0.clone()
    lam = torch.full((runs,), float(damping), dtype=theta.dtype)
    eye = torch.eye(m, dtype=theta.dtype)
    f1, f2, out = forward(net, theta, x)
    for t in range(max_steps + 1):
        res = out - y
        loss = 0.5 * (res * res).mean(1)
        jac = jacobian(net, theta, x, f1, f2)
        gnorm = torch.linalg.vector_norm(jac.transpose(1, 2) @ res[:, :, None], dim=(1, 2)) / m
        finite = torch.isfinite(loss) & torch.isfinite(gnorm)
        critical, below = gnorm <= grad_tol, loss <= stop_below
        finished = critical | below | ~finite | (t == max_steps)
        if bool(finished.any()):
            reason = torch.where(~finite, 3, torch.where(critical, 0, torch.where(below, 1, 2)))
            idx = active[finished].numpy()
            out_theta[idx] = theta[finished]
            loss_out[idx], grad_out[idx] = loss[finished].numpy(), gnorm[finished].numpy()
            steps[idx], stop[idx] = t, reason[finished].numpy()
            keep = ~finished
            active, theta, lam, f1, f2, out = active[keep], theta[keep], lam[keep], f1[keep], f2[keep], out[keep]
            res, loss, jac = res[keep], loss[keep], jac[keep]
            if active.numel() == 0:
                break
        gram = jac @ jac.transpose(1, 2) + lam[:, None, None] * eye
        delta = -(jac.transpose(1, 2) @ torch.linalg.solve(gram, res[:, :, None]))[:, :, 0]
        candidate = theta + delta
        c1, c2, c_out = forward(net, candidate, x)
        c_loss = 0.5 * ((c_out - y) ** 2).mean(1)
        better = c_loss < loss
        theta = torch.where(better[:, None], candidate, theta)
        f1 = torch.where(better[:, None, None], c1, f1)
        f2 = torch.where(better[:, None, None], c2, f2)
        out = torch.where(better[:, None], c_out, out)
        lam = torch.where(better, lam / 3, lam * 2).clamp(1e-12, 1e12)
    return Ends(out_theta, loss_out, grad_out, steps, stop)


def classify(loss: np.ndarray, stop: np.ndarray, global_below: float) -> tuple[np.ndarray, np.ndarray]:
    """``(converged, global)`` masks over runs: converged when the run stopped at ‖∇L‖ ≤ grad_tol (stop 0) or at
    L ≤ the global threshold (stop 1), with a finite loss; global when it converged with L ≤ ``global_below``."""
    converged = np.isfinite(loss) & ((stop == 0) | (stop == 1))
    return converged, converged & (loss <= global_below)


def end_conditions(net: Net, theta: Tensor, x: Tensor, y: Tensor) -> dict[str, np.ndarray]:
    """The conditions at each end ``theta (R, P)``: ``f1_smin`` (smallest of the min(d₁, m) singular values of
    F₁ = σ(W₁X), relative to the largest: rank F₁ = m needs d₁ ≥ m), ``w3_norm`` (‖W₃‖), ``theta_norm`` (‖θ‖) and
    ``saturation`` = ‖δ₂‖_F / (‖W₃‖ ‖r‖) with δ₂ = (W₃ᵀr) ⊙ σ'(W₂F₁), in [0, ¼]: near 0 when the second layer
    saturates on the samples that carry the residual. Since ‖∇_{W₂}L‖ = ‖δ₂F₁ᵀ‖/m ≥ σ_min(F₁) ‖δ₂‖/m, a small
    gradient at a non-zero residual with rank F₁ = m needs a small ``saturation``."""
    f1, f2, out = forward(net, theta, x)
    sv = torch.linalg.svdvals(f1)
    w3 = net.unpack(theta)[2]
    res = out - y  # (R, m)
    delta2 = w3.transpose(1, 2) * res[:, None, :] * f2 * (1 - f2)
    w3_norm = w3.flatten(1).norm(dim=1)
    saturation = delta2.flatten(1).norm(dim=1) / (w3_norm * res.norm(dim=1)).clamp_min(1e-300)
    return {"f1_smin": (sv[:, -1] / sv[:, 0]).numpy(), "w3_norm": w3_norm.numpy(),
            "theta_norm": theta.norm(dim=1).numpy(), "saturation": saturation.numpy()}


def _cell(params: NguyenHein, cell: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    x, y = regression_data(params.samples, params.input_dim, params.data_seed)
    net = Net(params.input_dim, int(cell["d1"]), params.d2)
    scale = 0.5 * float((y * y).mean())  # L₀: the loss of the zero predictor
    ends = levenberg_marquardt(net, net.init(params.runs, seed), x, y, grad_tol=params.grad_tol,
                               stop_below=params.global_loss * scale, max_steps=params.max_steps)
    return {"loss": ends.loss / scale, "grad_norm": ends.grad_norm, "steps": ends.steps, "stop": ends.stop,
            **end_conditions(net, ends.theta, x, y)}


@study("nguyen-hein",
       paper="Nguyen & Hein 2017, The Loss Surface of Deep and Wide Neural Networks (ICML)",
       claim="a deep sigmoid net whose first hidden layer has at least as many units as training samples (d1 >= m), "
             "pyramidal above it, has no suboptimal local minima (under rank and non-degeneracy conditions): every "
             "critical point training converges to is global (zero training loss)")
@dataclass(frozen=True)
class NguyenHein(Study):
    """Do converged training runs of a sigmoid net with a wide first layer (d₁ ≥ m) all reach zero training loss?

    Method: m = ``samples`` points x_i ~ N(0, I_{d₀}) (distinct with probability 1) with targets y_i ~ N(0, 1), fixed
    by ``data_seed``; the net ŷ = W₃ σ(W₂ σ(W₁ x)) of the notes (sigmoid σ, no biases, H = 3) with d₂ = ``d2`` and
    one output, so the layers above the wide one are pyramidal (d₁ ≥ d₂ ≥ 1); for each d₁ in ``widths``, ``runs``
    LeCun-normal starts trained on L = ½ Σ (ŷ_i − y_i)²/m by Levenberg–Marquardt, batched over runs.
    """

    samples: int = 12
    input_dim: int = 4
    d2: int = 3
    widths: tuple[int, ...] = (3, 12, 24)
    runs: int = 100
    grad_tol: float = 1e-9
    global_loss: float = 1e-6
    max_steps: int = 2000
    data_seed: int = 1234

    PUBLISHED = Published(
        source=CLAIM_REF,
        columns=("condition", "global_pct"),
        rows=(("d1 >= m", 100.0), ("d1 < m", None)),
        note="A theorem, not a table: with d1 >= m every local minimum meeting its conditions is global; we read it "
             "as 100% of converged runs at zero loss. d1 < m is outside the theorem (a control, no claim).")
    NOTES = """Claim and reading (seed 003:247-271): sigmoid activations, distinct samples, a layer k with
    d_k >= m, full-rank W_l above it and a Hessian w.r.t. W_{k+1:H} that is non-degenerate at W* => a local minimum
    W* is global; with d_1 >= m the global minimum is zero loss. For our H = 3 net (k = 1) the rank conditions
    alone already force it at a critical point: grad_{W2} L = delta_2 F_1^T / m = 0 with F_1 of rank m gives
    delta_2 = (W_3^T r) * sigma'(W_2 F_1) = 0, hence r = 0 when W_3 != 0 (the Hessian condition is how the theorem
    secures rank F_1 = m). The row global_pct (published 100, a theorem: no sampling error on its side) counts the
    runs that met the convergence gate and ended at L <= global_loss * L_0 (L_0 = the zero predictor's loss,
    1e-6: zero to six digits). Margin: MARGIN_RATE (5 points), the uniform rule for a rate over runs. Widths d1 < m
    are a control outside the theorem: global_pct_narrow has no expected value (not comparable) and is reported
    for contrast only.

    Optimizer, from a set-up check (not from a rate): plain gradient descent (step 1, float64) left more than half
    of the runs of a wide net (d1 = 24, 50 runs) short of the gate after 100,000 steps (median ||grad L|| about
    3e-4, some oscillating at a constant loss); Levenberg-Marquardt reaches it in a median of 20 to 40
    iterations. It is a descent method (a step is taken only when it lowers L), so it converges to critical
    points as gradient descent does, but its steps can be longer than a small gradient step's.

    Convergence gate (stated before the runs): ||grad L|| <= grad_tol (1e-9, Safran & Shamir's criterion) or
    L <= global_loss * L_0 (an early stop: L never rises, so such a run can only end global), within max_steps.
    Runs that hit max_steps are counted in `unconverged` and left out; fewer than half converged makes the row
    not comparable. In the set-up check the unconverged runs drift to large weights with saturated
    second-layer units and a vanishing gradient at a non-zero loss: a plateau at infinity, not a critical point
    (the note gives their weight norms); a few runs meet the gradient gate on such a plateau and count as
    converged above zero loss (the note says how many are saturated where their residual is).

    Data, d0 = 4, d2 = 3 and m = 12 are small choices of ours (the paper has no experiment to copy); the quick
    preset has d1 in (3 | 12, 24) with 100 runs, the full one (3, 6 | 12, 24, 48) with 500."""

    def __post_init__(self) -> None:
        if self.samples < 2 or self.input_dim < 1 or self.d2 < 1 or not self.widths or min(self.widths) < 1:
            raise UserInputError("nguyen-hein: samples >= 2, input_dim, d2 and widths >= 1 are needed")
        if self.runs < 1 or self.max_steps < 1 or self.grad_tol <= 0 or not 0 < self.global_loss < 1:
            raise UserInputError("nguyen-hein: runs, max_steps, grad_tol > 0 and 0 < global_loss < 1 are needed")

    @classmethod
    def full(cls) -> NguyenHein:
        return cls(widths=(3, 6, 12, 24, 48), runs=500)

    def run(self, ctx: Context) -> xr.Dataset:
        cells = [{"d1": d1} for d1 in self.widths]
        results = ctx.map(functools.partial(_cell, self), cells)
        data = {name: (("d1", "run"), np.stack([r[name] for r in results])) for name in results[0]}
        return xr.Dataset(data, coords={"d1": list(self.widths), "run": np.arange(self.runs)},
                          attrs={"samples": self.samples})

    def check(self, ds: xr.Dataset) -> list[Row]:
        rows: list[Row] = []
        criterion = f"||grad L|| <= {self.grad_tol:g} or L <= {self.global_loss:g} L_0 within {self.max_steps} steps"
        for d1 in ds.d1.values:
            d1 = int(d1)
            cell = ds.sel(d1=d1)
            wide = d1 >= self.samples
            quantity = "global_pct" if wide else "global_pct_narrow"
            expected = (published(100.0, CLAIM_REF, MARGIN_RATE) if wide else
                        protocol(None, f"control: d1 = {d1} < m = {self.samples} is outside Nguyen & Hein's "
                                       "condition; the theorem makes no claim, reported for contrast"))
            key = {"d1": d1, "m": self.samples}
            loss, stop = cell.loss.values, cell.stop.values
            converged, at_global = classify(loss, stop, self.global_loss)
            mask, enough = converged_runs(converged)
            unconverged = int((~mask).sum())
            if not enough:
                rows.append(Row.unconverged_row(quantity, key, expected, runs=mask.size, unconverged=unconverged,
                                                criterion=criterion))
                continue
            notes = []
            bad = mask & ~at_global
            if bad.any() and wide:
                full_rank = int((bad & (cell.f1_smin.values > 1e-8) & (cell.w3_norm.values > 1e-8)).sum())
                saturated = int((bad & (cell.saturation.values < 1e-6)).sum())
                notes.append(f"{int(bad.sum())} converged run(s) ended above zero loss (L/L_0 from "
                             f"{loss[bad].min():.3g} to {loss[bad].max():.3g}); at {full_rank} of them F_1 has full "
                             f"rank m (relative smallest singular value > 1e-8) and W_3 != 0, and at {saturated} the "
                             "second layer is saturated where the residual is (saturation < 1e-6): the gradient "
                             "vanishes there on a plateau approached at growing weights, not at a critical point")
            elif bad.any():
                notes.append(f"{int(bad.sum())} converged run(s) ended above zero loss (L/L_0 from "
                             f"{loss[bad].min():.3g} to {loss[bad].max():.3g})")
            if unconverged:
                theta = cell.theta_norm.values
                notes.append(f"{unconverged} run(s) left out ({criterion} not met; L/L_0 at the cap from "
                             f"{np.nanmin(loss[~mask]):.3g} to {np.nanmax(loss[~mask]):.3g}; median ||theta|| "
                             f"{np.nanmedian(theta[~mask]):.3g} vs {np.nanmedian(theta[mask]):.3g} for converged "
                             f"runs; median saturation {np.nanmedian(cell.saturation.values[~mask]):.2g})")
            rows.append(Row.compare(quantity, key, expected, rate(int(at_global.sum()), int(mask.sum())),
                                    note="; ".join(notes), unconverged=unconverged))
        return rows

    def figures(self, ds: xr.Dataset, folder: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for i, d1 in enumerate(ds.d1.values):
            loss = ds.loss.sel(d1=d1).values
            ok = np.isfinite(loss)
            jitter = np.random.default_rng(i).uniform(-0.15, 0.15, int(ok.sum()))
            ax.scatter(np.full(int(ok.sum()), i) + jitter, np.maximum(loss[ok], 1e-16), s=6, alpha=0.4,
                       color="C0" if int(d1) >= self.samples else "C1")
        ax.axhline(self.global_loss, color="C3", ls="--", lw=1, label="global threshold")
        ax.set_xticks(range(ds.sizes["d1"]), [f"d1={int(d)}" for d in ds.d1.values])
        ax.set(yscale="log", ylabel="L / L_0 at the end", title=f"Nguyen & Hein 2017: m = {self.samples} samples "
               "(blue: d1 >= m)")
        ax.legend(fontsize=8)
        return [save_figure(fig, folder / "ends.png", dpi=120)]


__all__ = ["CLAIM_REF", "Ends", "Net", "NguyenHein", "classify", "end_conditions", "forward", "jacobian",
           "levenberg_marquardt", "mean_loss", "regression_data"]
