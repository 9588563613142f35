"""Dense float64 references for curvature code, shipped with the package (as curvlinops ships its own).

Everything here is deliberately naive and independent of :mod:`lossatlas.curvature`: the whole split in
one forward pass (no batching), the Hessian from ``torch.autograd.functional.hessian`` on a flat vector,
eigenvalues from ``torch.linalg.eigvalsh``. Only for tiny problems (n up to a few thousand).

It also holds closed-form test problems: :class:`QuadraticBowl` (a model whose per-sample "output" is a
fixed function of its weights, so the loss and its Hessian are known exactly) and :func:`output_loss`, the
per-sample loss that returns that output (usable as ``--loss lossatlas.testing.reference:output_loss``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lossatlas.data import Dataset


def _split_flat(flat: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out, offset = {}, 0
    for k, t in like.items():
        out[k] = flat[offset:offset + t.numel()].reshape(t.shape)
        offset += t.numel()
    return out


def full_batch_loss(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
                    names: list[str] | None = None) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """``(L(flat θ), θ₀)``: the mean loss over all samples at once, in float64, as a function of the
    flattened parameters ``names`` (default: all); other parameters and buffers stay at the model's values.

    The model is deep-copied, cast to float64 and put in eval mode (BatchNorm uses running statistics).
    """
    net = copy.deepcopy(model).double().eval()
    params = {k: p.detach() for k, p in net.named_parameters()}
    state = {**{k: b.detach() for k, b in net.named_buffers()}, **params}
    chosen = {k: params[k] for k in (names or list(params))}
    x64 = x.double() if x.is_floating_point() else x
    y64 = y.double() if y.is_floating_point() else y

    def loss(flat: Tensor) -> Tensor:
        merged = {**state, **_split_flat(flat, chosen)}
        return loss_fn(functional_call(net, merged, (x64,)), y64).mean()

    return loss, torch.cat([t.reshape(-1) for t in chosen.values()])


def dense_hessian(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
                  names: list[str] | None = None) -> Tensor:
    """The ``(n, n)`` float64 Hessian of the full-batch mean loss w.r.t. the parameters ``names``."""
    loss, theta = full_batch_loss(model, loss_fn, x, y, names)
    h = torch.autograd.functional.hessian(loss, theta, vectorize=True)
    return (h + h.T) / 2


def dense_gradient(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
                   names: list[str] | None = None) -> Tensor:
    """The flat float64 gradient of the full-batch mean loss."""
    loss, theta = full_batch_loss(model, loss_fn, x, y, names)
    theta = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(theta), theta)
    return g


def dense_function_hessian(fn: Callable[[Tensor], Tensor], theta: Tensor) -> Tensor:
    """Hessian of a scalar function of a flat float64 vector."""
    return torch.autograd.functional.hessian(fn, theta.double())


def spectrum(h: Tensor) -> Tensor:
    """All eigenvalues of a symmetric matrix, ascending, float64."""
    return torch.linalg.eigvalsh(h.double())


class QuadraticBowl(nn.Module):
    """A "model" whose output for every sample is L(w) = ½ wᵀ A w + (c/12) Σᵢ wᵢ⁴.

    With :func:`output_loss` the dataset-mean loss is L(w) itself, so ∇²L(w) = A + c·diag(w²) exactly
    (A for c = 0: the Hessian of a quadratic, the same at every point). ``w`` starts at ``w0``.
    """

    a: Tensor

    def __init__(self, a: Tensor, w0: Tensor | None = None, quartic: float = 0.0) -> None:
        super().__init__()
        a = (a + a.T) / 2
        self.register_buffer("a", a.clone())
        self.w = nn.Parameter(torch.zeros(a.shape[0], dtype=a.dtype) if w0 is None else w0.clone().to(a.dtype))
        self.quartic = quartic

    def forward(self, x: Tensor) -> Tensor:
        value = 0.5 * self.w @ self.a @ self.w + self.quartic / 12 * (self.w ** 4).sum()
        return value.reshape(1, 1).expand(x.shape[0], 1) + 0 * x.reshape(x.shape[0], -1)[:, :1]

    def hessian(self, w: Tensor | None = None) -> Tensor:
        """The exact Hessian at ``w`` (default the current weights)."""
        w = self.w.detach() if w is None else w
        return self.a + self.quartic * torch.diag(w.to(self.a.dtype) ** 2)


def tiny_bn_problem(n: int = 53, seed: int = 0, classes: int = 3) -> tuple[nn.Module, Dataset]:
    """A small test case: Conv(1→2) → BatchNorm2d → ReLU → Linear(32→3) on 4×4 Gaussian-blob images.

    123 parameters; BatchNorm is in eval mode with non-default running statistics; ``n`` defaults to 53 so
    batches of 16 leave an uneven last batch.
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 1, 4, 4, generator=g) * 2

    def draw(m: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(0, classes, (m,), generator=g)
        return centres[y] + torch.randn(m, 1, 4, 4, generator=g), y

    (x, y), (xt, yt) = draw(n), draw(max(n // 3, 1))
    data = Dataset(name="tiny-blobs", x_train=x, y_train=y, x_test=xt, y_test=yt, task="classification",
                   num_classes=classes)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                        nn.Linear(32, classes))
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 1, 4, 4, generator=g) * 2 + 0.5)
    return net.eval(), data


def output_loss(out: Tensor, y: Tensor) -> Tensor:
    """Per-sample loss = the model's first output (for :class:`QuadraticBowl`); ``y`` is ignored."""
    return out[:, 0]


__all__ = ["QuadraticBowl", "dense_function_hessian", "dense_gradient", "dense_hessian", "full_batch_loss",
           "output_loss", "spectrum", "tiny_bn_problem"]
