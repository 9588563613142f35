"""BatchNorm at a perturbed point: the three policies, and whole-split statistics.

Ioffe & Szegedy 2015 normalise with the statistics of the data. At a point θ' that training never visited, the
running statistics stored with θ no longer describe the activations, so a surface must say what it does:

* ``eval``: keep the stored running statistics (the default; what ``model.eval()`` does);
* ``recompute``: re-estimate them at every point from the training split, then evaluate in eval mode;
* ``states``: treat them as coordinates, perturbed along the directions like the weights (Li et al.'s code).

:func:`recompute_statistics` gives the statistics a BatchNorm layer would compute if the *whole* training split
were one batch: per channel Σx and Σx² accumulated in float64 over every batch (so the result does not depend on
the batch size), layer after layer in the order the forward pass reaches them (a layer's input depends on the
statistics of the layers before it, normalised with the biased variance as in a train-mode pass). ``running_var`` is
stored as the unbiased N/(N−1) variance, as BatchNorm stores it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

import torch
from torch import Tensor, nn

from lossatlas.batch import num_rows, take
from lossatlas.engine.batches import sum_over_batches
from lossatlas.params import ParamDict, functional_forward


class BNPolicy(str, Enum):
    """How BatchNorm statistics are treated at a perturbed point."""

    eval = "eval"
    """Use the model's running statistics unchanged (default)."""
    recompute = "recompute"
    """Re-estimate running statistics at every point from the whole training split, then evaluate."""
    states = "states"
    """Treat running statistics as coordinates: directions perturb them too (needs ``--ignore none``)."""


def batchnorm_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """BatchNorm modules that keep running statistics, by qualified name."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


def has_batchnorm(model: nn.Module) -> bool:
    return bool(batchnorm_layers(model))


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has been seen."""


def _execution_order(model: nn.Module, point: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                     x: Tensor) -> list[str]:
    """Names of the BatchNorm layers in the order a forward pass reaches them (one sample)."""
    order: list[str] = []
    layers = batchnorm_layers(model)
    handles = [m.register_forward_pre_hook(lambda _m, _i, name=name: order.append(name) if name not in order
                                           else None) for name, m in layers.items()]
    try:
        with torch.no_grad():
            functional_forward(model, point, buffers, take(x, slice(0, 1)))
    finally:
        for h in handles:
            h.remove()
    return order + [n for n in layers if n not in order]  # layers the pass never reached keep their place


def _channel_moments(model: nn.Module, layer: nn.Module, point: Mapping[str, Tensor],
                     buffers: Mapping[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    """Σx, Σx² per channel and the count of the input of ``layer`` over the batch ``x`` (eval-mode pass)."""
    seen: dict[str, Tensor] = {}

    def hook(_m: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        z = inputs[0].detach().to(torch.float64)
        dims = [d for d in range(z.dim()) if d != 1]
        seen.update(s1=z.sum(dim=dims), s2=(z * z).sum(dim=dims),
                    n=torch.tensor(float(z.numel() // z.shape[1]), dtype=torch.float64))
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            functional_forward(model, point, buffers, x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError("a BatchNorm layer was not reached by the forward pass")
    return seen


def recompute_statistics(model: nn.Module, point: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                         x: Tensor, batch_size: int) -> ParamDict:
    """BatchNorm running statistics at ``point`` from the whole split ``x``, as one batch of all samples would give.

    Args:
        model: the network in eval mode (a private copy; hooks are added and removed).
        point: parameters θ' (entries named like BN buffers are ignored: statistics come from the data).
        buffers: the model's buffers; those of BN layers are replaced in the returned copy.
        x: the inputs (N, ...) the statistics are taken over (the training split).
        batch_size: samples per pass; the result does not depend on it (float64 sums).

    Returns:
        a copy of ``buffers`` with ``running_mean``, ``running_var`` (unbiased) of every BN layer recomputed.
    """
    layers = batchnorm_layers(model)
    out = {k: v.clone() for k, v in buffers.items()}
    if not layers:
        return out
    point = {k: v for k, v in point.items() if k not in buffers}
    y = torch.zeros(num_rows(x))
    counts: dict[str, float] = {}
    for name in _execution_order(model, point, out, x):
        prefix = f"{name}." if name else ""
        layer = layers[name]
        def moments(xb: Tensor, _yb: Tensor, layer: nn.Module = layer) -> dict[str, Tensor]:
            return _channel_moments(model, layer, point, out, xb)

        m = sum_over_batches(moments, x, y, batch_size)
        n = counts[prefix] = float(m["n"])
        mean = m["s1"] / n
        dtype = out[prefix + "running_mean"].dtype
        out[prefix + "running_mean"] = mean.to(dtype)
        # the layers after this one see it normalise with the biased variance, as in a train-mode pass
        out[prefix + "running_var"] = (m["s2"] / n - mean * mean).clamp_min(0.0).to(dtype)
        if prefix + "num_batches_tracked" in out:
            out[prefix + "num_batches_tracked"] = torch.ones_like(out[prefix + "num_batches_tracked"])
    for prefix, n in counts.items():  # stored, like BatchNorm's running_var, as the unbiased estimate
        out[prefix + "running_var"] = out[prefix + "running_var"] * (n / max(n - 1.0, 1.0))
    return out


__all__ = ["BNPolicy", "batchnorm_layers", "has_batchnorm", "recompute_statistics"]
