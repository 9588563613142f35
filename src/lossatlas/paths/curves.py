"""Mode-connecting curves between two trained models (Garipov et al. 2018, "Loss Surfaces, Mode Connectivity,
and Fast Ensembling of DNNs", Sec. 3).

A curve φ_w: [0, 1] → Θ with fixed ends φ(0) = θ_A, φ(1) = θ_B and trainable control points w ("bends"):

* Bézier (Sec. 3.2): φ(t) = Σ_k C(n, k) tᵏ (1 − t)ⁿ⁻ᵏ P_k with P_0 = θ_A, P_n = θ_B, n = bends + 1
  (one bend: (1 − t)² θ_A + 2t(1 − t) w + t² θ_B);
* polygonal chain: the straight segments P_0 → P_1 → … → P_n, bend k at t = k / n.

Training minimises E_{t ~ U(0,1)} L(φ_w(t)) by SGD with one t per minibatch (Sec. 3.1). The model is never
rewritten into "curve layers": the point φ_w(t) is built as a parameter dict and the *unchanged* module is
called through ``torch.func.functional_call`` (BatchNorm layers use batch statistics while training, as in
the paper). Bends start on the straight line, where the curve is the line itself.

Evaluation (Sec. 5) goes through the engine at ``points`` values of t: loss and accuracy on train and test
along the curve and along the straight line, BatchNorm statistics re-estimated on the train split at every
t (so t = 0 reproduces A, t = 1 reproduces B), barrier heights (:mod:`lossatlas.paths.barrier`) and the
arc length ∫‖φ'(t)‖ dt in parameter space.

Files in the output directory ``DIR``::

    curve.json                   the configuration (a rerun with another one is refused)
    state.pt                     bends + optimiser + generator after the last finished epoch (resume)
    control_points.safetensors   every control point, ``point{k}/{parameter name}`` (k = 0 … n)
    curve.zarr                   coords t; curve_<metric> and line_<metric>; attrs: provenance, barriers,
                                 lengths (kind = "curve")
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from lossatlas.batch import float_dtype_of, num_rows, take
from lossatlas.engine import EvalSpec, Evaluator
from lossatlas.engine.bn import has_batchnorm
from lossatlas.engine.losses import minibatch_loss
from lossatlas.errors import UserInputError
from lossatlas.execute import WorkUnit
from lossatlas.grid import Axis, PointTask, run_grid
from lossatlas.params import (
    ParamDict,
    buffers_of,
    functional_forward,
    parameters_of,
    private_copy,
    tensors_sha256,
)
from lossatlas.paths.barrier import (
    check_same_architecture,
    evaluate_combinations,
    loss_barrier,
    path_eval_spec,
)
from lossatlas.store import provenance as provenance_attrs
from lossatlas.store import update_attrs

Progress = Callable[[int, int], None]


class CurveKind(str, Enum):  # noqa: UP042 - the project's option style (Typer choices)
    """Shape of a mode-connecting curve (Garipov et al. 2018, Sec. 3.2)."""

    bezier = "bezier"
    """Bézier curve of degree bends + 1 through Bernstein polynomials."""
    polychain = "polychain"
    """Polygonal chain: straight segments between consecutive control points."""


@dataclass(frozen=True)
class CurveSpec:
    """How a curve is trained and evaluated (validated here, once).

    Attributes:
        kind: :class:`CurveKind`.
        bends: trainable control points between the fixed ends.
        epochs: passes over the training split (one t ~ U(0, 1) per minibatch).
        lr, momentum, weight_decay: SGD on the bends (weight decay on the bends only, as in the paper).
        batch_size: training minibatch size.
        points: values of t in [0, 1] where curve and line are evaluated.
        seed: seeds the minibatch order, the draws of t and any dropout.
    """

    kind: CurveKind = CurveKind.bezier
    bends: int = 1
    epochs: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 128
    points: int = 61
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", CurveKind(self.kind))
        except ValueError:
            raise UserInputError(f"--kind must be bezier or polychain, got '{self.kind}'") from None
        checks = [
            (self.bends >= 1, f"--bends must be >= 1, got {self.bends}"),
            (self.epochs >= 0, f"--epochs must be >= 0, got {self.epochs}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.points >= 3, f"--points must be >= 3 (t = 0, 1 and one inside), got {self.points}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserInputError(message)


# -- the curve as a function of t ---------------------------------------------------------------------
def curve_coefficients(kind: CurveKind | str, n_points: int, t: Tensor) -> Tensor:
    """Weights c_k(t) with φ(t) = Σ_k c_k(t) P_k, for ``n_points`` control points P_0 … P_{n_points−1}.

    Args:
        kind: ``bezier`` (Bernstein polynomials of degree n_points − 1) or ``polychain`` (hat functions
            with knots at k / (n_points − 1)).
        t: (P,) values in [0, 1], any float dtype.

    Returns:
        (P, n_points) coefficients; each row sums to 1, and is exactly (1, 0, …) at t = 0 and (…, 0, 1) at t = 1.
    """
    kind = CurveKind(kind)
    n = n_points - 1
    t = t.reshape(-1)
    if kind is CurveKind.bezier:
        k = torch.arange(n_points, dtype=t.dtype, device=t.device)
        binom = torch.tensor([math.comb(n, i) for i in range(n_points)], dtype=t.dtype, device=t.device)
        return binom * t[:, None] ** k * (1 - t[:, None]) ** (n - k)
    segment = torch.clamp(torch.floor(t * n), max=n - 1).long()
    s = t * n - segment.to(t.dtype)
    out = torch.zeros(t.shape[0], n_points, dtype=t.dtype, device=t.device)
    rows = torch.arange(t.shape[0], device=t.device)
    out[rows, segment] = 1 - s
    out[rows, segment + 1] = s
    return out


def curve_point(control_points: Sequence[Mapping[str, Tensor]], coefficients: Tensor) -> ParamDict:
    """φ = Σ_k coefficients[k] · P_k for one point (``coefficients`` (n_points,)); differentiable in the P_k."""
    return {name: sum(c * p[name] for c, p in zip(coefficients, control_points, strict=True))  # type: ignore[misc]
            for name in control_points[0]}


def bezier_curve(control_points: Sequence[Mapping[str, Tensor]], t: float) -> ParamDict:
    """The Bézier curve through ``control_points`` (P_0 = θ_A … P_n = θ_B) at ``t`` (Garipov et al. 2018, Eq. 3)."""
    c = curve_coefficients(CurveKind.bezier, len(control_points), torch.tensor([float(t)], dtype=torch.float64))[0]
    return curve_point(control_points, c.to(next(iter(control_points[0].values())).dtype))


def polygonal_chain(control_points: Sequence[Mapping[str, Tensor]], t: float) -> ParamDict:
    """The polygonal chain through ``control_points`` at ``t`` (Garipov et al. 2018, Eq. 2)."""
    c = curve_coefficients(CurveKind.polychain, len(control_points),
                           torch.tensor([float(t)], dtype=torch.float64))[0]
    return curve_point(control_points, c.to(next(iter(control_points[0].values())).dtype))


def curve_length(control_points: Sequence[Mapping[str, Tensor]], kind: CurveKind | str, panels: int = 64) -> float:
    """Arc length ∫₀¹ ‖φ'(t)‖ dt in parameter space (Euclidean, over every entry of the control points).

    φ'(t) = Σ_k c'_k(t) P_k is a combination of the differences Q_k = P_{k+1} − P_k, so ‖φ'(t)‖² is a
    quadratic form in the small Gram matrix G = (⟨Q_i, Q_j⟩) (float64); the integral over t is then a
    composite Gauss–Legendre sum (``panels`` panels of 16 nodes) for the Bézier curve, and exact for the
    polygonal chain, whose speed is constant on each segment.
    """
    kind = CurveKind(kind)
    diffs = [{k: (b[k].double() - a[k].double()) for k in a} for a, b in zip(control_points[:-1], control_points[1:],
                                                                            strict=True)]
    m = len(diffs)
    gram = torch.zeros(m, m, dtype=torch.float64)
    for i in range(m):
        for j in range(i, m):
            gram[i, j] = gram[j, i] = sum((diffs[i][k] * diffs[j][k]).sum() for k in diffs[i])  # type: ignore[assignment]
    if kind is CurveKind.polychain:
        return float(torch.sqrt(torch.clamp(torch.diagonal(gram), min=0)).sum())
    x, w = np.polynomial.legendre.leggauss(16)
    left = np.arange(panels) / panels
    t = torch.from_numpy((left[:, None] + (x[None] + 1) / (2 * panels)).reshape(-1))
    w = np.tile(w / panels, panels)
    # d/dt Bernstein of degree m: m Σ_k B_k^{m-1}(t) Q_k
    b = curve_coefficients(CurveKind.bezier, m, t) * m if m > 1 else torch.full((t.shape[0], 1), 1.0,
                                                                                dtype=torch.float64)
    speed = torch.sqrt(torch.clamp(torch.einsum("pi,ij,pj->p", b, gram, b), min=0))
    return float((speed * torch.from_numpy(w / 2)).sum())


def initial_control_points(theta_a: Mapping[str, Tensor], theta_b: Mapping[str, Tensor], bends: int) -> list[ParamDict]:
    """P_0 = θ_A, P_k = θ_A + k/(bends+1) (θ_B − θ_A), P_{bends+1} = θ_B: on the straight line, evenly spaced
    (for both kinds the curve then *is* the line, φ(t) = (1 − t) θ_A + t θ_B)."""
    n = bends + 1
    points = [dict(theta_a)]
    for k in range(1, n):
        points.append({name: theta_a[name] + (k / n) * (theta_b[name] - theta_a[name]) for name in theta_a})
    points.append(dict(theta_b))
    return points


# -- evaluation through the engine --------------------------------------------------------------------
@dataclass
class CurveTask(PointTask):
    """Metrics on the curve and on the straight line at the t values of a :class:`WorkUnit` (picklable).

    ``theta`` is θ_A and ``directions`` = [θ_B − θ_A] (what the store records as the line's direction).
    """

    control_points: list[ParamDict] | None = None
    kind: CurveKind = CurveKind.bezier

    def __call__(self, unit: WorkUnit) -> dict[str, np.ndarray]:
        assert self.control_points is not None
        t = torch.from_numpy(np.asarray(unit.coords[:, 0], dtype=np.float64))
        line_points = [self.control_points[0], self.control_points[-1]]  # θ_A and θ_B, bit-exact
        out: dict[str, np.ndarray] = {}
        for prefix, points, coeffs in (
                ("curve", self.control_points, curve_coefficients(self.kind, len(self.control_points), t)),
                ("line", line_points, torch.stack([1 - t, t], dim=1))):
            values = evaluate_combinations(self.evaluator, points, coeffs)
            out.update({f"{prefix}_{m}": v.numpy() for m, v in values.items()})
        return out

    @property
    def metric_names(self) -> list[str]:
        return [f"{p}_{m}" for p in ("curve", "line") for m in self.evaluator.metric_names]

    def to(self, device: str | torch.device) -> CurveTask:
        super().to(device)
        self.theta = {k: v.to(device) for k, v in self.theta.items()}
        self.directions = [{k: v.to(device) for k, v in d.items()} for d in self.directions]
        self.control_points = [{k: v.to(device) for k, v in p.items()} for p in self.control_points or []]
        return self


# -- training -------------------------------------------------------------------------------------------
def _config(spec: CurveSpec, eval_spec: EvalSpec, theta_a: ParamDict, theta_b: ParamDict, data: Any,
            provenance: Mapping[str, Any]) -> dict[str, Any]:
    return {"curve": {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(spec).items()},
            "loss": eval_spec.loss, "eval_batch_size": eval_spec.batch_size,
            "theta_a_sha256": tensors_sha256(theta_a), "theta_b_sha256": tensors_sha256(theta_b),
            "data_sha256": data.fingerprint(),
            **{k: v for k, v in provenance.items() if k in ("model", "data")}}


def _prepare_dir(out: Path, config: dict[str, Any], overwrite: bool) -> None:
    config_file = out / "curve.json"
    if config_file.exists():
        old = json.loads(config_file.read_text())
        if old != config:
            if not overwrite:
                raise UserInputError(f"'{out}' holds a curve with a different configuration; choose another --out "
                                     "or pass --overwrite")
            for name in ("state.pt", "control_points.safetensors"):
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / "curve.zarr", ignore_errors=True)
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise UserInputError(f"'{out}' exists and is not a curve directory; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(config, indent=2))


def fit_control_points(model: nn.Module, data: Any, control_points: list[ParamDict], spec: CurveSpec, loss: str,
                       state_file: Path | None = None, progress: Callable[[int, int, float], None] | None = None
                       ) -> tuple[list[ParamDict], list[float]]:
    """Train the bends P_1 … P_{n−1} (ends fixed) by SGD on L(φ(t)), one t ~ U(0, 1) per minibatch.

    Returns the control points and the mean minibatch loss of every epoch. With ``state_file`` the state after
    each epoch is saved there and a later call continues from it, bit-identically to an uninterrupted run
    (minibatch order and t come from one ``torch.Generator``; dropout, if any, is seeded per epoch).
    """
    net = private_copy(model)
    net.train()
    buffers = buffers_of(net)
    loss_fn = minibatch_loss(loss)
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    points = [{k: v.detach().clone() for k, v in p.items()} for p in control_points]
    bends = points[1:-1]
    for bend in bends:
        for name in trainable:
            bend[name].requires_grad_(True)
    params = [bend[name] for bend in bends for name in bend if name in trainable]
    optimizer = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    generator = torch.Generator().manual_seed(spec.seed)
    history: list[float] = []
    start = 0
    if state_file is not None and state_file.exists():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        with torch.no_grad():
            for bend, saved in zip(bends, state["bends"], strict=True):
                for name in bend:
                    bend[name].copy_(saved[name])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start, history = int(state["epoch"]), list(state["history"])
    x, y = data.split("train")
    dtype = float_dtype_of(net)
    for epoch in range(start + 1, spec.epochs + 1):
        order = torch.randperm(num_rows(x), generator=generator)
        total, count = 0.0, 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed * 1_000_003 + epoch)  # dropout masks, if the model has any
            for i in range(0, num_rows(x), spec.batch_size):
                idx = order[i:i + spec.batch_size]
                t = torch.rand(1, generator=generator, dtype=torch.float64)
                coeffs = curve_coefficients(spec.kind, len(points), t)[0].to(dtype)
                out = functional_forward(net, curve_point(points, coeffs), buffers, take(x, idx))
                batch_loss = loss_fn(out, take(y, idx))
                optimizer.zero_grad(set_to_none=True)
                batch_loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                total += float(batch_loss.detach()) * len(idx)
                count += len(idx)
        history.append(total / max(count, 1))
        if state_file is not None:
            tmp = state_file.with_suffix(".tmp")
            torch.save({"bends": [{k: v.detach() for k, v in b.items()} for b in bends],
                        "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                        "epoch": epoch, "history": history}, tmp)
            tmp.replace(state_file)
        if progress:
            progress(epoch, spec.epochs, history[-1])
    return [{k: v.detach().clone() for k, v in p.items()} for p in points], history


def save_control_points(points: Sequence[Mapping[str, Tensor]], path: str | Path) -> Path:
    """Write control points as one safetensors file, keys ``point{k}/{parameter name}``."""
    from safetensors.torch import save_file

    flat = {f"point{k}/{name}": v.detach().cpu().contiguous().clone() for k, p in enumerate(points)
            for name, v in p.items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(flat, str(tmp))
    tmp.replace(path)
    return path


def load_control_points(path: str | Path) -> list[ParamDict]:
    """Read back :func:`save_control_points` (a list of parameter dicts, P_0 = θ_A first)."""
    from safetensors.torch import load_file

    flat = load_file(str(path))
    n = 1 + max(int(key.split("/", 1)[0].removeprefix("point")) for key in flat)
    points: list[ParamDict] = [{} for _ in range(n)]
    for key, v in flat.items():
        head, name = key.split("/", 1)
        points[int(head.removeprefix("point"))][name] = v
    return points


def train_curve(model_a: nn.Module, model_b: nn.Module, data: Any, spec: CurveSpec | None = None, *,
                out: str | Path, loss: str = "cross_entropy", eval_batch_size: int = 1000, overwrite: bool = False,
                provenance: Mapping[str, Any] | None = None, progress: Progress | None = None,
                device: str = "cpu") -> xr.Dataset:
    """Train a mode-connecting curve between two models and evaluate it beside the straight line.

    Args:
        model_a, model_b: the two endpoints θ_A (t = 0) and θ_B (t = 1); same architecture; never modified.
        data: a :class:`lossatlas.data.Dataset` (train split for training and BN statistics; test if present).
        spec: :class:`CurveSpec`.
        out: the output directory (layout in the module docstring); a rerun resumes training and evaluation.
        loss: per-sample loss (as for :class:`EvalSpec`), used for training and evaluation.
        progress: ``progress(done, total)`` over epochs, then evaluated points.

    Returns:
        The ``curve.zarr`` Dataset: coord ``t`` (``spec.points`` values in [0, 1]); variables ``curve_<metric>``
        and ``line_<metric>`` for ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``; attrs
        ``kind = "curve"``, provenance, ``<path>_<loss>_barrier``, ``<path>_<loss>_barrier_mean``,
        ``<path>_<loss>_max``, ``curve_length``, ``line_length``.
    """
    spec = spec or CurveSpec()
    out = Path(out)
    check_same_architecture(model_a.state_dict(), model_b.state_dict())
    eval_spec = path_eval_spec(loss, eval_batch_size)
    theta_a, theta_b = parameters_of(model_a), parameters_of(model_b)
    prov = dict(provenance or {})
    _prepare_dir(out, _config(spec, eval_spec, theta_a, theta_b, data, prov), overwrite)
    total = spec.epochs + spec.points
    points_file = out / "control_points.safetensors"
    if points_file.exists():
        points = load_control_points(points_file)
    else:
        def epoch_done(epoch: int, epochs: int, _loss: float) -> None:
            if progress:
                progress(epoch, total)

        if progress:
            progress(0, total)
        points, _history = fit_control_points(model_a, data, initial_control_points(theta_a, theta_b, spec.bends),
                                              spec, loss, out / "state.pt", epoch_done)
        save_control_points(points, points_file)
    history = _history_of(out / "state.pt")
    evaluator = Evaluator(model_a, data, eval_spec, device=device)
    task = CurveTask(evaluator, theta_a, [{k: theta_b[k] - theta_a[k] for k in theta_a}], points, spec.kind)
    length, line_length = curve_length(points, spec.kind), float(np.sqrt(sum(
        float(((theta_b[k].double() - theta_a[k].double()) ** 2).sum()) for k in theta_a)))
    extra = {"x": "", "y": "", "seed": spec.seed, "norm": "none", "ignore": "none", "directions": "curve",
             "curve_kind": spec.kind.value, "bends": spec.bends, "epochs": spec.epochs, "lr": spec.lr,
             "momentum": spec.momentum, "weight_decay": spec.weight_decay, "train_batch_size": spec.batch_size,
             "points": spec.points, "has_batchnorm": has_batchnorm(model_a),
             "checkpoint2_sha256": prov.pop("checkpoint2_sha256", None) or tensors_sha256(model_b.state_dict()),
             "control_points_sha256": tensors_sha256({f"{k}/{n}": v for k, p in enumerate(points)
                                                     for n, v in p.items()}),
             "curve_length": length, "line_length": line_length,
             "training_loss_history": [float(v) for v in history]}
    attrs = provenance_attrs("curve", model_a, data, eval_spec, extra, prov)
    axis = Axis(0.0, 1.0, spec.points).values()

    def grid_progress(done: int, _n: int) -> None:
        if progress:
            progress(spec.epochs + done, total)

    ds = run_grid(task, {"t": axis}, out / "curve.zarr", attrs, overwrite=False, progress=grid_progress)
    summary = curve_summary(ds)
    update_attrs(out / "curve.zarr", **summary)
    ds.attrs.update(summary)
    return ds


def _history_of(state_file: Path) -> list[float]:
    if not state_file.exists():
        return []
    return list(torch.load(state_file, map_location="cpu", weights_only=True)["history"])


def curve_summary(ds: xr.Dataset) -> dict[str, float]:
    """Barrier heights of every loss along the curve and the line of a ``curve.zarr`` Dataset."""
    t = ds["t"].values
    summary: dict[str, float] = {}
    for name in ds.data_vars:
        name = str(name)
        if not name.endswith("_loss") or not name.startswith(("curve_", "line_")):
            continue
        b = loss_barrier(t, ds[name].values)
        summary.update({f"{name}_max": b["max"], f"{name}_barrier": b["barrier"],
                        f"{name}_barrier_mean": b["barrier_mean"]})
    return summary


__all__ = ["CurveKind", "CurveSpec", "bezier_curve", "curve_coefficients", "curve_length", "curve_point",
           "fit_control_points", "initial_control_points", "load_control_points", "polygonal_chain",
           "save_control_points", "train_curve"]
