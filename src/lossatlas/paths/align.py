"""Weight alignment over hidden-unit permutations: weight matching of Ainsworth, Hayase & Srinivasa 2023
("Git Re-Basin: Merging Models modulo Permutation Symmetries", Sec. 3.2 and Alg. 1).

Permuting the hidden units of a layer (rows of its weight and bias, BatchNorm weight, bias *and running
statistics*, and the matching columns of the next layer) leaves the function unchanged: the "exponentially
many global minima" of the notes (seeds/004). Weight matching picks, for model B, the permutations π that
maximise Σ_ℓ ⟨W_ℓ^A, P_ℓ W_ℓ^B P_{ℓ−1}ᵀ⟩; coordinate descent solves one linear assignment problem
(``scipy.optimize.linear_sum_assignment``) per permutation group at a time, in a random order per sweep,
until a sweep improves nothing.

A *permutation spec* says which axes move together: ``{state-dict name: (axis group, ...)}`` with one entry
per axis, ``None`` for an axis that never moves, or ``"G"`` / ``"G:k"`` for an axis permuted by group G (with
``:k``: the axis holds k consecutive entries per unit, as after flattening (C, k) features to C·k). Example,
a 2-hidden-layer MLP::

    {"layers.0.weight": ("P0", None), "layers.0.bias": ("P0",),
     "layers.2.weight": ("P1", "P0"), "layers.2.bias": ("P1",),
     "layers.4.weight": (None, "P1"), "layers.4.bias": (None,)}

:func:`permutation_spec` derives it from a ``torch.fx`` trace for nets built of Linear / Conv / BatchNorm,
elementwise activations, pooling, flattening and residual additions: every Linear/Conv output opens a group,
BatchNorm and elementwise ops pass it on, ``a + b`` merges the groups of a and b (a ResNet's residual stream
is one group), and whatever reaches the input or the output is fixed. That covers the zoo's ``mlp``,
``linear``, ``two_layer``, ``cnn1d``, ``bncnn``, ``vgg9``, ``resnet20/56/110`` and ``wrn``; anything else
(``torch.cat`` in DenseNet, attention, ...) asks for a user spec (JSON, or ``file.py:function`` returning
the mapping).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
import xarray as xr
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from lossatlas.batch import take
from lossatlas.errors import UserInputError

PermutationSpec = dict[str, tuple[str | None, ...]]
"""State-dict name -> one entry per axis: a group name (``"P3"``, or ``"P3:k"`` for k entries per unit) or None."""

_ELEMENTWISE_MODULES = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.Identity, nn.Dropout, nn.LeakyReLU, nn.ELU,
                        nn.SiLU, nn.Softplus, nn.ReLU6, nn.Hardtanh, nn.Mish)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d)
_ELEMENTWISE_FUNCTIONS: set[Any] = {F.relu, torch.relu, F.gelu, torch.tanh, torch.sigmoid, F.silu, F.leaky_relu,
                                    F.elu, F.dropout, torch.nn.functional.relu6, F.softplus, operator.neg}
_POOL_FUNCTIONS: set[Any] = {F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
                             F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_BINARY_FUNCTIONS: set[Any] = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul,
                               operator.iadd, operator.imul}
_ELEMENTWISE_METHODS = {"relu", "tanh", "sigmoid", "contiguous", "clone", "relu_", "neg"}
_BINARY_METHODS = {"add", "sub", "mul", "add_", "mul_"}
_RESHAPE = {"flatten", "view", "reshape"}


class _Groups:
    """Union–find over permutation groups; group 0 is "fixed" (reaches the input or the output)."""

    def __init__(self) -> None:
        self.parent = [0]

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the fixed group (0) always wins, so fixedness spreads
            lo, hi = min(ra, rb), max(ra, rb)
            self.parent[hi] = lo


def _unsupported(what: str) -> UserInputError:
    return UserInputError(f"cannot derive a permutation spec automatically: {what}; pass one with --spec "
                          "(JSON {parameter: [group or null per axis]} or file.py:function)")


def permutation_spec(model: nn.Module, example_input: Tensor) -> PermutationSpec:
    """Derive the permutation spec of ``model`` from a ``torch.fx`` trace on ``example_input`` (N, *input_shape).

    Feature axis = dim 1 of every traced tensor. Entries for every parameter and buffer are returned
    (all-``None`` for tensors that never move, e.g. ``num_batches_tracked``).
    """
    from lossatlas.params import private_copy

    try:
        gm = torch.fx.symbolic_trace(private_copy(model))  # eval mode, so tracing cannot touch BN statistics
        ShapeProp(gm).propagate(example_input)  # a trace that cannot run again (control flow baked in) is the same
    except Exception as exc:  # noqa: BLE001 - tracing failures are the model's, reported in one line
        raise _unsupported(f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__})") from None
    groups = _Groups()
    feature: dict[torch.fx.Node, tuple[int, int] | None] = {}  # node -> (group, units' block size) on dim 1
    axes: dict[str, list[tuple[int, int] | None]] = {}
    modules = dict(gm.named_modules())

    def shape(node: Any) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def group_of(arg: Any) -> tuple[int, int] | None:
        return feature.get(arg) if isinstance(arg, torch.fx.Node) else None

    def merge(a: tuple[int, int] | None, b: tuple[int, int] | None, where: str) -> tuple[int, int] | None:
        if a is None or b is None:
            return a or b
        if a[1] != b[1]:
            raise _unsupported(f"'{where}' combines features of different layouts")
        groups.union(a[0], b[0])
        return a

    for node in gm.graph.nodes:
        args = [a for a in node.args if isinstance(a, torch.fx.Node) and shape(a) is not None]
        inp = group_of(args[0]) if args else None
        if node.op == "placeholder":
            feature[node] = (0, 1)
        elif node.op == "get_attr":
            raise _unsupported(f"'{node.target}' is used as a tensor inside forward")
        elif node.op == "output":
            out = node.args[0]
            for leaf in (out if isinstance(out, (tuple, list)) else [out]):
                reached = group_of(leaf)
                if reached is not None:
                    groups.union(reached[0], 0)
        elif shape(node) is None:
            continue  # sizes, shapes, ints: not tensors
        elif node.op == "call_module":
            m = modules[node.target]
            prefix = f"{node.target}."
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                if isinstance(m, nn.Linear) and inp is not None and inp[0] != 0 and len(shape(args[0]) or ()) != 2:
                    raise _unsupported(f"Linear '{node.target}' acts on the last axis of a >2-D feature map")
                if not isinstance(m, nn.Linear) and m.groups != 1:
                    raise _unsupported(f"grouped convolution '{node.target}'")
                opened = (groups.new(), 1)
                spatial = m.weight.dim() - 2
                axes[prefix + "weight"] = [opened, inp, *([None] * spatial)]
                if m.bias is not None:
                    axes[prefix + "bias"] = [opened]
                feature[node] = opened
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                for name in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(m, name, None) is not None:
                        axes[prefix + name] = [inp]
                feature[node] = inp
            elif isinstance(m, _ELEMENTWISE_MODULES + _POOL_MODULES):
                feature[node] = inp
            elif isinstance(m, nn.Flatten):
                feature[node] = _flatten(inp, shape(args[0]), shape(node), node.target)
            else:
                raise _unsupported(f"layer '{node.target}' ({type(m).__name__}) is not one it knows")
        elif node.op in ("call_function", "call_method"):
            target = node.target
            if target in _ELEMENTWISE_FUNCTIONS | _POOL_FUNCTIONS or target in _ELEMENTWISE_METHODS:
                feature[node] = inp
            elif target in _BINARY_FUNCTIONS or target in _BINARY_METHODS:
                tensors = [a for a in node.args if isinstance(a, torch.fx.Node) and shape(a) is not None]
                g = group_of(tensors[0]) if tensors else None
                for other in tensors[1:]:
                    g = merge(g, group_of(other), str(node.name))
                feature[node] = g
            elif target in (torch.flatten,) or target in _RESHAPE:
                feature[node] = _flatten(inp, shape(args[0]), shape(node), str(node.name))
            else:
                raise _unsupported(f"operation '{getattr(target, '__name__', target)}' in forward")
    spec: PermutationSpec = {}
    names: dict[int, str] = {}
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        entries = axes.get(name, [None] * tensor.dim())
        resolved: list[str | None] = []
        for entry in entries:
            root = groups.find(entry[0]) if entry is not None else 0
            if root == 0 or entry is None:
                resolved.append(None)
                continue
            label = names.setdefault(root, f"P{len(names)}")
            resolved.append(label if entry[1] == 1 else f"{label}:{entry[1]}")
        spec[name] = tuple(resolved)
    return spec


def _flatten(inp: tuple[int, int] | None, before: tuple[int, ...] | None, after: tuple[int, ...] | None,
             where: Any) -> tuple[int, int] | None:
    """Feature group after a reshape: unchanged, or (C, k…) flattened to C·k with k entries per unit."""
    if inp is None or inp[0] == 0 or before == after:
        return inp
    if before is None or after is None or len(before) < 2:
        raise _unsupported(f"reshape '{where}'")
    block = int(np.prod(before[2:])) if len(before) > 2 else 1
    if len(after) == 2 and after[0] == before[0] and after[1] == before[1] * block:
        return inp[0], inp[1] * block
    raise _unsupported(f"reshape '{where}' of permuted features to {after}")


def _parse_axis(entry: str | None) -> tuple[str, int] | None:
    if entry is None:
        return None
    name, _, block = str(entry).partition(":")
    return name, int(block) if block else 1


def _permute_axis(t: Tensor, axis: int, perm: Tensor, block: int) -> Tensor:
    if block == 1:
        return t.index_select(axis, perm)
    shape = t.shape
    split = t.reshape(*shape[:axis], shape[axis] // block, block, *shape[axis + 1:])
    return split.index_select(axis, perm).reshape(shape)


def apply_permutation(spec: PermutationSpec, state: Mapping[str, Tensor], perms: Mapping[str, Tensor],
                      except_axis: tuple[str, int] | None = None) -> dict[str, Tensor]:
    """Permute every tensor of ``state`` named in ``spec``: along an axis of group G, unit i becomes unit
    ``perms[G][i]`` (``index_select``). Tensors not in the spec are returned unchanged."""
    out: dict[str, Tensor] = {}
    for name, t in state.items():
        for axis, entry in enumerate(spec.get(name, ())):
            parsed = _parse_axis(entry)
            if parsed is None or except_axis == (name, axis) or parsed[0] not in perms:
                continue
            t = _permute_axis(t, axis, perms[parsed[0]], parsed[1])
        out[name] = t
    return out


def _group_sizes(spec: PermutationSpec, state: Mapping[str, Tensor]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for name, entries in spec.items():
        if name not in state:
            raise UserInputError(f"the permutation spec names '{name}', which the model does not have")
        if len(entries) != state[name].dim():
            raise UserInputError(f"the permutation spec gives {len(entries)} axes for '{name}', which has "
                                 f"{state[name].dim()}")
        for axis, entry in enumerate(entries):
            parsed = _parse_axis(entry)
            if parsed is None:
                continue
            group, block = parsed
            n, rem = divmod(int(state[name].shape[axis]), block)
            if rem or sizes.setdefault(group, n) != n:
                raise UserInputError(f"the permutation spec's group '{group}' has inconsistent sizes at '{name}'")
    return sizes


def weight_matching(spec: PermutationSpec, theta_a: Mapping[str, Tensor], theta_b: Mapping[str, Tensor],
                    max_sweeps: int = 100, seed: int = 0) -> dict[str, Tensor]:
    """Permutations of B's units that maximise Σ ⟨θ_A, π(θ_B)⟩ (Ainsworth et al. 2023, Alg. 1).

    Args:
        spec: :data:`PermutationSpec`; only tensors present in both dicts enter the objective (pass weights,
            not BN running statistics, as in the paper).
        theta_a, theta_b: parameter dicts of the two models.
        max_sweeps: upper bound on coordinate-descent sweeps over all groups.
        seed: order in which groups are visited in each sweep.

    Returns:
        ``{group: LongTensor (n,)}``; apply with :func:`apply_permutation`.
    """
    a = {k: v.detach().double() for k, v in theta_a.items() if k in spec}
    b = {k: v.detach().double() for k, v in theta_b.items() if k in spec}
    sizes = _group_sizes(spec, a)
    perms = {g: torch.arange(n) for g, n in sizes.items()}
    members = {g: [(name, axis, p[1]) for name, entries in spec.items() if name in a
                   for axis, p in ((i, _parse_axis(e)) for i, e in enumerate(entries)) if p and p[0] == g]
               for g in sizes}
    rng = np.random.default_rng(seed)
    for _sweep in range(max_sweeps):
        improved = False
        for g in rng.permutation(sorted(sizes)):
            n = sizes[g]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for name, axis, block in members[g]:
                wa = a[name]
                wb = apply_permutation(spec, {name: b[name]}, perms, except_axis=(name, axis))[name]
                shape = wa.shape
                wa = wa.reshape(*shape[:axis], n, block, *shape[axis + 1:]).movedim(axis, 0).reshape(n, -1)
                wb = wb.reshape(*shape[:axis], n, block, *shape[axis + 1:]).movedim(axis, 0).reshape(n, -1)
                cost += wa @ wb.T
            rows, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.from_numpy(cols).long()
            old_value = float(cost[torch.arange(n), perms[g]].sum())
            new_value = float(cost[torch.from_numpy(rows), new].sum())
            if new_value > old_value + 1e-12 * max(1.0, abs(old_value)):
                perms[g] = new
                improved = True
        if not improved:
            break
    return perms


def load_spec(source: str | Path, model: nn.Module) -> PermutationSpec:
    """A user permutation spec: a JSON file ``{name: [group or null, ...]}`` or ``file.py:function`` /
    ``module:function`` called with the model and returning such a mapping."""
    text = str(source)
    if text.endswith(".json") or Path(text).is_file():
        try:
            raw = json.loads(Path(text).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserInputError(f"--spec '{text}' is not a readable JSON file ({type(exc).__name__})") from None
    elif ":" in text:
        from lossatlas.userfunc import load_callable

        target, _, name = text.rpartition(":")
        raw = load_callable(target, name, "permutation spec")(model)
    else:
        raise UserInputError(f"--spec must be a .json file or file.py:function, got '{text}'")
    if not isinstance(raw, Mapping):
        raise UserInputError(f"--spec '{text}' must map parameter names to lists of group names (or null)")
    spec: PermutationSpec = {}
    for name, entries in raw.items():
        if not isinstance(entries, (list, tuple)) or not all(e is None or isinstance(e, str) for e in entries):
            raise UserInputError(f"--spec entry '{name}' must be a list of group names or null, one per axis")
        spec[str(name)] = tuple(entries)
    return spec


def align_weights(model_a: nn.Module, model_b: nn.Module, example_input: Tensor,
                  spec: PermutationSpec | None = None, seed: int = 0,
                  log: Callable[[str], None] | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Model B's state dict permuted to match model A (weight matching; BN running statistics follow).

    Returns ``(aligned state dict of B, {group: permutation})``; ``model_a`` and ``model_b`` are not modified.
    """
    from lossatlas.paths.barrier import check_same_architecture

    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    check_same_architecture(state_a, state_b, "the two checkpoints")
    spec = spec if spec is not None else permutation_spec(model_a, example_input)
    _group_sizes(spec, state_a)
    params = dict(model_a.named_parameters())
    perms = weight_matching({k: v for k, v in spec.items() if k in params},
                            {k: state_a[k] for k in params}, {k: state_b[k] for k in params}, seed=seed)
    aligned = apply_permutation(spec, state_b, perms)
    return {k: v.clone() for k, v in aligned.items()}, perms


def align_checkpoint(model_a: nn.Module, model_b: nn.Module, data: Any, *, out: str | Path,
                     spec: PermutationSpec | None = None, points: int = 25, loss: str = "cross_entropy",
                     batch_size: int = 1000, seed: int = 0, provenance: Mapping[str, Any] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> xr.Dataset:
    """Align B to A, write B's aligned weights, and measure the interpolation barrier before and after.

    Writes ``out`` (B aligned, a state dict in safetensors: parameters *and* buffers) and, beside it,
    ``<out stem>.zarr``: coord ``t`` (``points`` values in [0, 1]), variables ``before_<metric>`` on
    (1 − t) θ_A + t θ_B and ``after_<metric>`` on (1 − t) θ_A + t π(θ_B), BN statistics re-estimated at every t
    (:func:`lossatlas.paths.barrier.path_eval_spec`); attrs ``kind = "alignment"``, the barriers
    (:func:`lossatlas.paths.barrier.loss_barrier`), the groups and how many units each moved.
    """
    from safetensors.torch import save_file

    from lossatlas.engine import Evaluator
    from lossatlas.params import parameters_of, tensors_sha256
    from lossatlas.paths.barrier import evaluate_combinations, loss_barrier, path_eval_spec
    from lossatlas.store import provenance as provenance_attrs

    if points < 3:
        raise UserInputError(f"--points must be >= 3, got {points}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserInputError(f"--out must name a .safetensors file, got '{out}'")
    x, _ = data.split("train")
    aligned, perms = align_weights(model_a, model_b, take(x, slice(0, 2)), spec=spec, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in aligned.items()}, str(out))
    eval_spec = path_eval_spec(loss, batch_size)
    evaluator = Evaluator(model_a, data, eval_spec)
    theta_a = parameters_of(model_a)
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    coeffs = torch.stack([1 - t, t], dim=1)
    data_vars: dict[str, Any] = {}
    for step, (label, theta_b) in enumerate((("before", parameters_of(model_b)),
                                             ("after", {k: aligned[k] for k in theta_a}))):
        values = evaluate_combinations(evaluator, [theta_a, theta_b], coeffs)
        data_vars.update({f"{label}_{m}": ("t", v.numpy()) for m, v in values.items()})
        if progress:
            progress(step + 1, 2)
    moved = {g: int((p != torch.arange(len(p))).sum()) for g, p in perms.items()}
    extra: dict[str, Any] = {"x": "", "y": "", "seed": seed, "norm": "none", "ignore": "none", "directions": "align",
                             "points": points, "groups": json.dumps({g: len(p) for g, p in perms.items()}),
                             "units_moved": json.dumps(moved), "aligned_checkpoint": str(out),
                             "aligned_sha256": tensors_sha256(aligned),
                             "checkpoint2_sha256": dict(provenance or {}).get("checkpoint2_sha256")
                             or tensors_sha256(model_b.state_dict())}
    attrs = provenance_attrs("alignment", model_a, data, eval_spec, extra, provenance)
    ds = xr.Dataset(data_vars, coords={"t": t.numpy()}, attrs=attrs)
    for name in list(ds.data_vars):
        if str(name).endswith("_loss"):
            b = loss_barrier(ds["t"].values, ds[name].values)
            ds.attrs.update({f"{name}_barrier": b["barrier"], f"{name}_barrier_mean": b["barrier_mean"],
                             f"{name}_max": b["max"]})
    ds.attrs["status"] = "complete"
    ds.to_zarr(out.with_suffix(".zarr"), mode="w", consolidated=False)
    return ds


__all__ = ["PermutationSpec", "align_checkpoint", "align_weights", "apply_permutation", "load_spec",
           "permutation_spec", "weight_matching"]
