"""Named parameter dicts: the coordinates every other module works in.

A point in parameter space θ is an ordered ``dict[str, Tensor]`` keyed by the names of
``model.named_parameters()`` (and, for BN ``states`` policies, float buffers). Functions here are
pure: they take and return dicts and never mutate a user's ``nn.Module``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lossatlas.batch import logits_of, model_args
from lossatlas.errors import UserInputError

ParamDict = dict[str, Tensor]


def parameters_of(model: nn.Module) -> ParamDict:
    """θ of ``model``: detached clones of its parameters, in registration order."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def buffers_of(model: nn.Module) -> ParamDict:
    """Detached clones of every buffer (BN running statistics, ``num_batches_tracked``)."""
    return {name: b.detach().clone() for name, b in model.named_buffers()}


def float_buffer_names(model: nn.Module) -> list[str]:
    """Buffers that are real-valued states (BN ``running_mean``/``running_var``), not counters."""
    return [name for name, b in model.named_buffers() if b.is_floating_point()]


def private_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode that lossatlas may switch modes on; the user's model stays untouched."""
    clone = copy.deepcopy(model)
    clone.eval()
    return clone


def functional_forward(model: nn.Module, theta: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                       x: Any) -> Tensor:
    """Evaluate ``model`` at parameters ``theta`` with ``buffers``, via ``torch.func.functional_call``.

    ``x`` follows the batch contract (:mod:`lossatlas.batch`): a tensor, a tuple (``model(*x)``) or a dict
    (``model(**x)``); the output is reduced to its tensor (a tuple's first element, ``.logits``). Entries of
    ``theta`` override buffers of the same name (the BN ``states`` policy perturbs them). Tied parameters
    (a language model's output head sharing the input embedding) follow the one entry ``theta`` holds for them.
    """
    merged = dict(buffers)
    merged.update(theta)
    args, kwargs = model_args(x)
    return logits_of(functional_call(model, merged, args, kwargs, tie_weights=True, strict=False))


def add_scaled(theta: Mapping[str, Tensor], directions: Iterable[Mapping[str, Tensor]],
               coefficients: Iterable[float]) -> ParamDict:
    """θ + Σᵢ cᵢ dᵢ, over the keys of ``theta`` (a direction missing a key contributes zero)."""
    out = {k: v.clone() for k, v in theta.items()}
    for d, c in zip(directions, coefficients, strict=True):
        for k in out:
            if k in d:
                out[k].add_(d[k], alpha=float(c))
    return out


def stack_points(theta: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]],
                 coords: Tensor) -> ParamDict:
    """Stacked parameters for P points: ``out[k][p] = θ[k] + Σᵢ coords[p, i] · dᵢ[k]``.

    Args:
        theta: base point, tensors of shape ``S_k``.
        directions: ``m`` direction dicts over the same keys.
        coords: ``(P, m)`` coefficients.

    Returns:
        dict of tensors of shape ``(P, *S_k)`` for ``torch.func.vmap`` over points.
    """
    out: ParamDict = {}
    for k, t in theta.items():
        d = torch.stack([dirs[k] for dirs in directions])          # (m, *S)
        delta = torch.tensordot(coords.to(t.dtype), d, dims=1)       # (P, *S)
        out[k] = t.unsqueeze(0) + delta
    return out


def flatten(theta: Mapping[str, Tensor]) -> Tensor:
    """Concatenate a parameter dict into one vector (in key order)."""
    return torch.cat([t.reshape(-1) for t in theta.values()])


def unflatten(vector: Tensor, like: Mapping[str, Tensor], dtype: torch.dtype | None = None) -> ParamDict:
    """Inverse of :func:`flatten`: split ``vector`` (n,) into tensors shaped like ``like`` (views where possible).

    ``dtype``: of the result; default each entry of ``like``'s dtype (pass ``vector.dtype`` to keep it).
    """
    total = sum(t.numel() for t in like.values())
    if total != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, the parameter dict {total}")
    out: ParamDict = {}
    offset = 0
    for k, t in like.items():
        n = t.numel()
        out[k] = vector[offset:offset + n].reshape(t.shape).to(dtype or t.dtype)
        offset += n
    return out


def inner(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    """⟨a, b⟩ summed over all shared keys, in float64."""
    return sum((a[k].double() * b[k].double()).sum() for k in a if k in b)  # type: ignore[return-value]


def norm(a: Mapping[str, Tensor]) -> float:
    """Euclidean norm of a parameter dict."""
    return float(torch.sqrt(inner(a, a)))


def tensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    """A content hash of named tensors (name, dtype, shape and bytes), for provenance."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint without unpickling: safetensors, or ``torch.load(weights_only=True)``.

    A ``.pt`` file holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.
    """
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"checkpoint '{p}' does not exist; pass the path of a .safetensors or .pt file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as exc:  # noqa: BLE001 - SafetensorError's home moved between releases
            raise UserInputError(f"checkpoint '{p}' is not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here is the file's fault
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(
            f"checkpoint '{p}' cannot be loaded with torch.load(weights_only=True): {first}"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserInputError(f"checkpoint '{p}' does not hold a state dict of tensors")
    return dict(obj)


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """A copy of ``model`` with the checkpoint's weights; the first mismatch is named in one line."""
    state = read_state_dict(path)
    expected = model.state_dict()
    for name, t in expected.items():
        if name not in state:
            raise UserInputError(
                f"checkpoint '{path}' does not match the model: parameter '{name}' is missing from it"
            )
        if tuple(state[name].shape) != tuple(t.shape):
            raise UserInputError(
                f"checkpoint '{path}' does not match the model: parameter '{name}' has shape "
                f"{tuple(state[name].shape)} in the checkpoint but {tuple(t.shape)} in the model"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise UserInputError(
            f"checkpoint '{path}' does not match the model: it has parameter '{extra[0]}' the model lacks"
        )
    clone = private_copy(model)
    clone.load_state_dict({k: state[k].to(expected[k].dtype) for k in expected})
    return clone


def save_checkpoint(model_or_state: nn.Module | Mapping[str, Tensor], path: str | Path) -> Path:
    """Write a state dict as safetensors (``.safetensors``) or weights-only ``.pt``."""
    from safetensors.torch import save_file

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    state = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    if p.suffix == ".safetensors":
        save_file(state, str(tmp))
    else:
        torch.save(state, tmp)
    tmp.replace(p)
    return p
