"""Dynamic string sampling (Freeman & Bruna 2017, "Topology and Geometry of Half-Rectified Network
Optimization", Sec. 4.1, Alg. 1): is there a path between two models along which the loss stays ≤ λ?

The path is a string of beads θ_A = b_0, b_1, …, b_m = θ_B joined by straight segments. Greedily, left to
right (the paper's recursion ``ConnectModels`` in iterative form):

1. evaluate the train loss densely along the first segment not yet checked (``points`` values, the engine);
2. if its maximum is ≤ λ the segment is done;
3. otherwise start a new bead at the segment's worst point and descend on

       L(θ) + (μ/2) ‖θ − θ_mid‖²,   θ_mid = the segment's midpoint,

   (the paper trains the new bead with a term that keeps it near the middle of the segment it replaces, so the
   string does not collapse onto one end. The notes in ``shared/seeds`` do not reproduce Alg. 1 and the paper
   could not be re-read here, so the quadratic form of the penalty and the default μ = 1e-3 are this
   implementation's choice, not a transcription) by minibatch SGD until the train loss is
   ≤ ``λ_target = L_end + depth · (λ − L_end)`` (L_end the larger endpoint loss), checked with the engine
   every ``check_every`` steps; insert it and split the segment in two;
4. stop with success when every segment is done, with failure when ``max_beads`` beads exist, the training
   budget (SGD steps in all) is spent, or a bead cannot reach λ_target with the steps left.

Result: the beads, the loss on the dense path, its maximum, the number of beads and the *normalised geodesic
length* Σ‖b_{k+1} − b_k‖ / ‖θ_B − θ_A‖ (Freeman & Bruna: ≈ 1 for a nearly convex connection, large for a
winding one); the costs (evaluated points, SGD steps) are recorded. BatchNorm statistics are re-estimated at
every evaluated point (:func:`lossatlas.paths.barrier.path_eval_spec`).

Files in ``DIR``: ``string.json`` (configuration), ``state.pt`` (beads and progress after every change: a
rerun resumes, bit-identically, because every descent is seeded by its bead number), ``beads.safetensors``
(``bead{k}/{name}``) and ``string.zarr`` (coord ``s`` = cumulative length / ‖θ_B − θ_A‖ along the beads'
path, metrics on it; coord ``t`` with the straight line's ``line_<metric>``; kind = "string").
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from lossatlas.batch import num_rows, take
from lossatlas.engine import Evaluator
from lossatlas.engine.losses import minibatch_loss
from lossatlas.errors import UserInputError
from lossatlas.params import ParamDict, buffers_of, functional_forward, parameters_of, private_copy, tensors_sha256
from lossatlas.paths.barrier import check_same_architecture, evaluate_combinations, path_eval_spec
from lossatlas.store import config_hash
from lossatlas.store import provenance as provenance_attrs

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class StringSpec:
    """Settings of dynamic string sampling.

    Attributes:
        threshold: λ, the train-loss level the path must stay below.
        max_beads: most beads between the ends before giving up.
        budget: most SGD steps, all beads together, before giving up.
        points: dense evaluation points per segment, ends included.
        lr, momentum, batch_size: minibatch SGD of a bead's descent.
        penalty: μ of (μ/2)‖θ − θ_mid‖².
        depth: a bead descends to L_end + depth · (λ − L_end), L_end the larger endpoint loss (0 < depth ≤ 1).
        check_every: SGD steps between two full train-loss evaluations of a descending bead.
        seed: seeds every descent (bead k uses a generator seeded by ``seed`` and k).
    """

    threshold: float
    max_beads: int = 20
    budget: int = 20_000
    points: int = 21
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 128
    penalty: float = 1e-3
    depth: float = 0.5
    check_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (math.isfinite(self.threshold), f"--threshold must be a finite number, got {self.threshold}"),
            (self.max_beads >= 0, f"--max-beads must be >= 0, got {self.max_beads}"),
            (self.budget >= 0, f"--budget must be >= 0, got {self.budget}"),
            (self.points >= 3, f"--points must be >= 3, got {self.points}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.penalty >= 0, f"--penalty must be >= 0, got {self.penalty}"),
            (0 < self.depth <= 1, f"--depth must be in (0, 1], got {self.depth}"),
            (self.check_every >= 1, f"--check-every must be >= 1, got {self.check_every}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserInputError(message)


def _segment_metrics(evaluator: Evaluator, a: Mapping[str, Tensor], b: Mapping[str, Tensor],
                     points: int) -> dict[str, Tensor]:
    """Metrics (float64, (points,)) at (1 − s) a + s b for ``points`` values of s in [0, 1] (both ends exact)."""
    s = torch.linspace(0, 1, points, dtype=torch.float64)
    return evaluate_combinations(evaluator, [a, b], torch.stack([1 - s, s], dim=1))


def _descend(model: nn.Module, data: Any, evaluator: Evaluator, start: ParamDict, mid: ParamDict, target: float,
             spec: StringSpec, steps_left: int, bead: int, loss: str) -> tuple[ParamDict, int, int, float]:
    """Minibatch SGD on L(θ) + (μ/2)‖θ − θ_mid‖² from ``start`` until the train loss is ≤ ``target``.

    Returns (bead, SGD steps used, points evaluated, last train loss).
    """
    net = private_copy(model)
    net.train()
    buffers = buffers_of(net)
    loss_fn = minibatch_loss(loss)
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    theta = {k: v.detach().clone().requires_grad_(k in trainable) for k, v in start.items()}
    optimizer = torch.optim.SGD([theta[k] for k in theta if k in trainable], lr=spec.lr, momentum=spec.momentum)
    generator = torch.Generator().manual_seed(spec.seed * 1_000_003 + bead)
    x, y = data.split("train")
    steps, evaluated = 0, 0
    current = float("inf")
    order = torch.randperm(num_rows(x), generator=generator)
    cursor = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed * 1_000_003 + bead)  # dropout masks, if any
        while True:
            if steps % spec.check_every == 0:
                current = evaluator.evaluate_one({k: v.detach() for k, v in theta.items()})["train_loss"]
                evaluated += 1
                if current <= target or steps >= steps_left:
                    break
            if cursor >= num_rows(x):
                order, cursor = torch.randperm(num_rows(x), generator=generator), 0
            idx = order[cursor:cursor + spec.batch_size]
            cursor += spec.batch_size
            value = loss_fn(functional_forward(net, theta, buffers, take(x, idx)), take(y, idx))
            if spec.penalty:
                value = value + 0.5 * spec.penalty * sum(((theta[k] - mid[k]) ** 2).sum() for k in trainable)
            optimizer.zero_grad(set_to_none=True)
            value.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            steps += 1
    return {k: v.detach().clone() for k, v in theta.items()}, steps, evaluated, current


def _save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _path_length(beads: list[ParamDict]) -> np.ndarray:
    """Cumulative Euclidean length at every bead (float64), starting at 0."""
    steps = [math.sqrt(sum(float(((b[k].double() - a[k].double()) ** 2).sum()) for k in a))
             for a, b in zip(beads[:-1], beads[1:], strict=True)]
    return np.concatenate([[0.0], np.cumsum(steps)])


def string_sampling(model_a: nn.Module, model_b: nn.Module, data: Any, spec: StringSpec, *, out: str | Path,
                    loss: str = "cross_entropy", eval_batch_size: int = 1000, overwrite: bool = False,
                    provenance: Mapping[str, Any] | None = None, progress: Progress | None = None) -> xr.Dataset:
    """Connect two models by a string of beads below ``spec.threshold`` (Freeman & Bruna 2017, Alg. 1).

    Args:
        model_a, model_b: the ends θ_A and θ_B (same architecture; never modified).
        data: a :class:`lossatlas.data.Dataset`; the threshold applies to the train loss.
        spec: :class:`StringSpec`.
        out: output directory (layout in the module docstring); a rerun resumes.
        progress: ``progress(done, total)``: SGD steps used out of the budget.

    Returns:
        The ``string.zarr`` Dataset; attrs ``success``, ``reason``, ``n_beads``, ``max_train_loss`` (on the
        dense path), ``normalized_geodesic_length``, ``line_max_train_loss``, ``evaluated_points``,
        ``sgd_steps``.
    """
    out = Path(out)
    check_same_architecture(model_a.state_dict(), model_b.state_dict())
    eval_spec = path_eval_spec(loss, eval_batch_size)
    evaluator = Evaluator(model_a, data, eval_spec)
    theta_a, theta_b = parameters_of(model_a), parameters_of(model_b)
    config = {"string": asdict(spec), "loss": loss, "eval_batch_size": eval_batch_size,
              "theta_a_sha256": tensors_sha256(theta_a), "theta_b_sha256": tensors_sha256(theta_b),
              "data_sha256": data.fingerprint()}
    ends = [evaluator.evaluate_one(theta_a)["train_loss"], evaluator.evaluate_one(theta_b)["train_loss"]]
    for name, value in zip("AB", ends, strict=True):
        if spec.threshold <= value:
            raise UserInputError(f"--threshold {spec.threshold:g} is not above the train loss of model {name} "
                                 f"({value:.6g}); no path can stay below it, raise the threshold")
    state_file = out / "state.pt"
    _prepare_dir(out, config, overwrite)
    if state_file.exists():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    else:
        state = {"beads": [theta_a, theta_b], "done": [False], "values": [None], "line": None, "ends": ends,
                 "steps": 0, "evaluated": 2, "trained": 0, "status": "running", "reason": ""}
        _save_state(state_file, state)
    target = max(state["ends"]) + spec.depth * (spec.threshold - max(state["ends"]))
    while state["status"] == "running":
        if progress:
            progress(min(state["steps"], spec.budget), spec.budget)
        if all(state["done"]):
            state.update(status="success", reason="every segment stays below the threshold")
            break
        k = state["done"].index(False)
        a, b = state["beads"][k], state["beads"][k + 1]
        values = _segment_metrics(evaluator, a, b, spec.points)
        state["evaluated"] += spec.points
        if state["line"] is None:
            state["line"] = values
        worst = int(torch.argmax(values["train_loss"]))
        if values["train_loss"][worst] <= spec.threshold:
            state["done"][k], state["values"][k] = True, values
        elif len(state["beads"]) - 2 >= spec.max_beads:
            state.update(status="failure", reason=f"{spec.max_beads} beads used (--max-beads) and a segment still "
                                                  "exceeds the threshold")
        elif state["steps"] >= spec.budget:
            state.update(status="failure", reason=f"the budget of {spec.budget} SGD steps is spent")
        else:
            s = worst / (spec.points - 1)
            start = {n: (1 - s) * a[n] + s * b[n] for n in a}
            mid = {n: 0.5 * (a[n] + b[n]) for n in a}
            bead, used, evaluated, reached = _descend(model_a, data, evaluator, start, mid, target, spec,
                                                      spec.budget - state["steps"], state["trained"], loss)
            state["steps"] += used
            state["evaluated"] += evaluated
            state["trained"] += 1
            if reached > target:
                state["values"][k] = values
                state.update(status="failure", reason=f"bead {state['trained']} stopped at train loss {reached:.4g} "
                                                      f"above its target {target:.4g} when the budget ran out")
            else:
                state["beads"].insert(k + 1, bead)
                state["done"][k:k + 1] = [False, False]
                state["values"][k:k + 1] = [None, None]
        _save_state(state_file, state)
    for k in range(len(state["done"])):  # a failed string: evaluate what is left, for the record
        if state["values"][k] is None:
            state["values"][k] = _segment_metrics(evaluator, state["beads"][k], state["beads"][k + 1], spec.points)
            state["evaluated"] += spec.points
    _save_state(state_file, state)
    if progress:
        progress(spec.budget, spec.budget)
    return _write_result(out, state, spec, model_a, data, eval_spec, config, provenance)


def _prepare_dir(out: Path, config: dict[str, Any], overwrite: bool) -> None:
    config_file = out / "string.json"
    if config_file.exists() and json.loads(config_file.read_text()) != config:
        if not overwrite:
            raise UserInputError(f"'{out}' holds a string with a different configuration; choose another --out "
                                 "or pass --overwrite")
        shutil.rmtree(out)
    elif not config_file.exists() and out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserInputError(f"'{out}' exists and is not a string directory; choose another --out or pass "
                                 "--overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(config, indent=2))


def _write_result(out: Path, state: dict[str, Any], spec: StringSpec, model: nn.Module, data: Any, eval_spec: Any,
                  config: dict[str, Any], provenance: Mapping[str, Any] | None) -> xr.Dataset:
    from safetensors.torch import save_file

    beads: list[ParamDict] = state["beads"]
    save_file({f"bead{k}/{n}": v.contiguous() for k, b in enumerate(beads) for n, v in b.items()},
              str(out / "beads.safetensors"))
    cumulative = _path_length(beads)
    scale = float(_path_length([beads[0], beads[-1]])[-1]) or 1.0  # ‖θ_B − θ_A‖
    u = np.linspace(0, 1, spec.points)
    s_parts, metric_parts, segment = [], [], []
    for k, values in enumerate(state["values"]):
        keep = slice(0, None) if k == len(state["values"]) - 1 else slice(0, -1)  # shared bead counted once
        s_parts.append((cumulative[k] + u * (cumulative[k + 1] - cumulative[k]))[keep] / scale)
        metric_parts.append({m: v.numpy()[keep] for m, v in values.items()})
        segment.append(np.full(len(u[keep]), k))
    metrics = list(metric_parts[0])
    data_vars: dict[str, Any] = {m: ("s", np.concatenate([p[m] for p in metric_parts])) for m in metrics}
    data_vars["segment"] = ("s", np.concatenate(segment))
    data_vars.update({f"line_{m}": ("t", state["line"][m].numpy()) for m in metrics})
    max_loss = float(data_vars["train_loss"][1].max())
    extra = {"x": "", "y": "", "seed": spec.seed, "norm": "none", "ignore": "none", "directions": "string",
             **{f"string_{k}": v for k, v in asdict(spec).items()}, "config": json.dumps(config, sort_keys=True)}
    attrs = provenance_attrs("string", model, data, eval_spec, extra, provenance)
    attrs["config_hash"] = config_hash(config)
    attrs.update(success=state["status"] == "success", reason=state["reason"], n_beads=len(beads) - 2,
                 max_train_loss=max_loss, threshold=spec.threshold,
                 line_max_train_loss=float(state["line"]["train_loss"].max()),
                 normalized_geodesic_length=float(cumulative[-1] / scale), path_length=float(cumulative[-1]),
                 endpoint_distance=float(scale), bead_s=[float(c / scale) for c in cumulative],
                 evaluated_points=int(state["evaluated"]), sgd_steps=int(state["steps"]),
                 endpoint_train_losses=[float(v) for v in state["ends"]], status="complete")
    ds = xr.Dataset(data_vars, coords={"s": np.concatenate(s_parts), "t": u}, attrs=attrs)
    ds.to_zarr(out / "string.zarr", mode="w", consolidated=False)
    return ds


__all__ = ["StringSpec", "string_sampling"]
