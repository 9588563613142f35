"""The engine's inference copy of a model: parameters loaded into slots, Linear(+ReLU) fused on CPU.

The point-by-point path of :class:`lossatlas.engine.Evaluator` runs one plain forward pass per batch at every
grid point. Two per-pass costs that a plain ``model(x)`` loop (loss-landscapes) does not pay, or pays worse, are
removed here, without changing a number beyond float rounding:

* **loading a point** assigns its tensors to the modules' parameter and buffer slots of a private copy, once per
  point (``torch.func.functional_call`` does the same swap, and swaps back, at every call: once per batch);
* **Linear layers on CPU** (float32, no autograd) run through oneDNN's inner product with the bias, and the ReLU
  that follows them in an ``nn.Sequential``, applied in the matmul's epilogue
  (``torch.ops.mkldnn._linear_pointwise``, the kernel ``torch.compile`` emits for the same pattern). A plain
  ``F.linear`` first broadcasts the bias into the output, then runs the GEMM with β = 1, then ReLU reads and
  writes the activation again; the fused kernel writes each activation once.

The copy is used only without autograd (the evaluator's ``torch.no_grad`` point loop); anything else (gradients,
HVPs, other dtypes or devices) falls back to ``F.linear`` and ``relu``. :func:`fused_matches` checks the fused copy
against the plain model on a few samples before the evaluator relies on it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lossatlas.batch import call_model


def _onednn_linear() -> Any:
    """oneDNN's fused inner product (``mkldnn::_linear_pointwise``, its default overload), or None without it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


class FusedLinear(nn.Module):
    """``relu(x Wᵀ + b)`` (or ``x Wᵀ + b``) in one oneDNN inner product on CPU; ``F.linear`` elsewhere.

    Holds the very ``weight`` and ``bias`` parameters of the ``nn.Linear`` it replaces, so parameter names
    (``layers.0.weight``) do not change.
    """

    def __init__(self, linear: nn.Linear, relu: bool) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.relu = relu
        self._attr = "relu" if relu else "none"
        self._onednn = _onednn_linear()

    def forward(self, x: Tensor) -> Tensor:  # a few µs of Python matter: this runs per layer and batch
        w, b = self.weight, self.bias
        if (x.dim() == 2 and x.dtype is torch.float32 and w.dtype is torch.float32 and x.is_cpu and w.is_cpu
                and not torch.is_grad_enabled() and self._onednn is not None
                and (b is None or b.dtype is torch.float32)):
            return self._onednn(x, w, b, self._attr, [], "")  # type: ignore[no-any-return]
        out = F.linear(x, w, b)
        return torch.relu(out) if self.relu else out

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, relu={self.relu}"


class _FusedSequential(nn.Sequential):
    """An ``nn.Sequential`` whose forward skips the ``nn.Identity`` left where a ReLU moved into a
    :class:`FusedLinear` (indexing and parameter names unchanged)."""

    _run: list[nn.Module]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        for module in self._run:
            x = module(x)
        return x


def fuse_linear_relu(model: nn.Module) -> int:
    """Replace, in place, every exact ``nn.Linear`` by a :class:`FusedLinear`; inside an exact ``nn.Sequential``
    a directly following exact ``nn.ReLU`` moves into it (and becomes an ``nn.Identity`` that the Sequential's
    forward skips). Returns the count of Linear layers replaced. Subclasses, hooked modules and modules used at
    several places are left alone (their forward may differ, or a replacement would untie them). Linear layers on
    other inputs than 2-D float32 CPU tensors, or under autograd, run ``F.linear`` (+ ``relu``).
    """
    uses: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        uses[id(module)] = uses.get(id(module), 0) + 1

    def _plain(module: nn.Module) -> bool:
        return uses[id(module)] == 1 and not (module._forward_hooks or module._forward_pre_hooks)

    replaced = 0
    for parent in list(model.modules()):
        children = list(parent._modules.items())
        sequential = type(parent) is nn.Sequential
        placeholders: list[nn.Module] = []
        for i, (name, child) in enumerate(children):
            if type(child) is not nn.Linear or not _plain(child):
                continue
            nxt = children[i + 1][1] if sequential and i + 1 < len(children) else None
            relu = type(nxt) is nn.ReLU and _plain(nxt)  # type: ignore[arg-type]
            parent._modules[name] = FusedLinear(child, relu)
            if relu:
                placeholders.append(nn.Identity())
                parent._modules[children[i + 1][0]] = placeholders[-1]
            replaced += 1
        if placeholders:  # our private copy: its forward skips the placeholders
            parent.__class__ = _FusedSequential
            parent._run = [m for m in parent._modules.values()  # type: ignore[assignment]
                           if m is not None and all(m is not p for p in placeholders)]
    return replaced


class PointModel:
    """A private copy of a model whose parameters and buffers are *assigned*, not swapped per call.

    ``load(tensors)`` puts each named tensor into its module slot (what ``functional_call`` does without restoring
    afterwards: the copy belongs to one evaluator thread); calling the object runs the copy's forward.

    Args:
        model: the network (eval mode); deep-copied.
        fuse: replace Linear(+ReLU) by :class:`FusedLinear` (CPU float32 inference).
    """

    def __init__(self, model: nn.Module, fuse: bool) -> None:
        self.module = copy.deepcopy(model).eval()
        self.fused = fuse_linear_relu(self.module) if fuse and _onednn_linear() is not None else 0
        self._slots: dict[str, tuple[dict[str, Tensor | None], str]] = {}
        for prefix, module in self.module.named_modules(remove_duplicate=False):
            for kind in (module._parameters, module._buffers):
                for name in kind:
                    self._slots.setdefault(f"{prefix}.{name}" if prefix else name, (kind, name))

    def load(self, tensors: Mapping[str, Tensor]) -> None:
        """Assign ``tensors`` (parameter and buffer names of the model) to the copy; unknown names are ignored."""
        slots = self._slots
        for key, value in tensors.items():
            slot = slots.get(key)
            if slot is not None:
                slot[0][slot[1]] = value

    def __call__(self, x: Any) -> Tensor:
        return call_model(self.module, x)


def fused_matches(plain: nn.Module, fused: PointModel, theta: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
                  x: Tensor) -> bool:
    """Whether the fused copy gives the plain model's output on ``x`` at θ and at a moved point 1.05 θ (every entry
    changed, so a parameter that does not reach the fused copy shows); to float rounding; any failure, False."""
    from lossatlas.params import functional_forward

    with torch.no_grad():
        for point in (theta, {k: v * 1.05 for k, v in theta.items()}):
            ref = functional_forward(plain, point, buffers, x)
            try:
                fused.load(buffers)
                fused.load(point)
                got = fused(x)
            except Exception:  # noqa: BLE001 - any failure of the fused copy just means "run the plain one"
                return False
            if ref.shape != got.shape or not bool(torch.allclose(ref, got, rtol=1e-4, atol=1e-5)):
                return False
    return True


__all__ = ["FusedLinear", "PointModel", "fuse_linear_relu", "fused_matches"]
