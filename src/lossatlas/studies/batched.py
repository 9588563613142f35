"""Many small training runs at once: stacked parameters with a leading run dimension, ``torch.func.vmap``.

A study with hundreds of tiny runs (XOR nets, deep linear nets, single neurons) keeps one parameter dict
whose tensors carry a leading dimension R, one slice per run, and takes every step of every run with one
vectorised ``grad`` (:func:`batched_descent`). Full-batch gradient descent and Adam (Kingma & Ba 2015, the
update of ``torch.optim.Adam`` without weight decay) are implemented on the stacked tensors; each run's
iterates are those it would have alone (:func:`descent_loop` is the per-run reference the tests compare
with). Runs whose gradient norm falls to ``grad_tol`` are frozen: their later updates are exactly zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from lossatlas.models import build_model
from lossatlas.params import ParamDict

LossFn = Callable[[ParamDict], Tensor]
"""``loss(theta) -> scalar`` for ONE run's parameters (no run dimension), or — with ``stacked=True`` —
``loss(theta) -> (R,)`` for the stacked parameters of all runs at once."""

OPTIMIZERS = ("gd", "adam")


def stack_runs(thetas: Sequence[Mapping[str, Tensor]]) -> ParamDict:
    """``[θ_1, ..., θ_R]`` → ``{name: (R, ...)}``."""
    return {k: torch.stack([t[k] for t in thetas]) for k in thetas[0]}


def run_slice(theta: Mapping[str, Tensor], i: int) -> ParamDict:
    """Run ``i`` of stacked parameters."""
    return {k: v[i] for k, v in theta.items()}


def zoo_runs(spec: str, seeds: Sequence[int], *, input_shape: tuple[int, ...], output_dim: int,
             dtype: torch.dtype = torch.float64) -> tuple[nn.Module, ParamDict]:
    """One zoo model per seed (:func:`lossatlas.models.build_model`, its default initialisation) as a template
    module and stacked parameters ``{name: (R, ...)}`` in ``dtype``."""
    models = [build_model(spec, input_shape=input_shape, output_dim=output_dim, seed=int(s)) for s in seeds]
    thetas = [{k: p.detach().to(dtype) for k, p in m.named_parameters()} for m in models]
    return models[0].to(dtype), stack_runs(thetas)


def stacked_mlp(theta: Mapping[str, Tensor], x: Tensor, activation: Callable[[Tensor], Tensor]) -> Tensor:
    """The zoo ``mlp`` forward pass (``layers.0, layers.2, …``: Linear → activation → … → Linear) for stacked
    parameters ``{name: (R, ...)}`` on shared inputs ``x (N, d)`` → ``(R, N, out)``, with batched matrix
    products instead of ``vmap`` (the same numbers as ``functional_call`` per run)."""
    names = sorted({k.rsplit(".", 1)[0] for k in theta}, key=lambda n: int(n.split(".")[-1]))
    h = x.expand(next(iter(theta.values())).shape[0], *x.shape)
    for i, name in enumerate(names):
        if i:
            h = activation(h)
        weight = theta[f"{name}.weight"]
        bias = theta.get(f"{name}.bias")
        h = (torch.baddbmm(bias[:, None, :], h, weight.transpose(1, 2)) if bias is not None
             else h @ weight.transpose(1, 2))
    return h


def model_loss(model: nn.Module, x: Tensor, y: Tensor,
               per_sample: Callable[[Tensor, Tensor], Tensor]) -> LossFn:
    """``θ ↦ mean_n per_sample(model_θ(x_n), y_n)`` over the whole set (full batch), functional."""

    def loss(theta: ParamDict) -> Tensor:
        return per_sample(functional_call(model, theta, (x,)), y).mean()

    return loss


@dataclass(frozen=True)
class Trajectory:
    """End of :func:`batched_descent`: parameters and, per run, loss, gradient norm and steps taken.

    ``snapshots`` (when requested) holds ``(step, θ)`` pairs, θ stacked over runs.
    """

    theta: ParamDict
    loss: Tensor
    grad_norm: Tensor
    steps: Tensor
    snapshots: tuple[tuple[int, ParamDict], ...] = ()


def batched_descent(loss_fn: LossFn, theta: Mapping[str, Tensor], *, optimizer: str = "gd", lr: float = 0.1,
                    steps: int = 1000, grad_tol: float | None = None, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8, snapshot_at: Sequence[int] = (),
                    monitor: Callable[[int, ParamDict], None] | None = None, stacked: bool = False) -> Trajectory:
    """``steps`` full-batch steps of every run of the stacked ``theta`` at once.

    Args:
        loss_fn: the loss of one run's parameters (vectorised over runs with ``vmap``).
        theta: ``{name: (R, ...)}``; not modified.
        optimizer: ``"gd"`` (θ ← θ − lr ∇L) or ``"adam"`` (bias-corrected moments, as ``torch.optim.Adam``).
        grad_tol: freeze a run once ‖∇L‖ ≤ grad_tol (its step count stops there); None: never.
        snapshot_at: step numbers at which to keep a copy of θ (0 = the start).
        monitor: called as ``monitor(t, θ)`` with the stacked θ before every step and at the end.
        stacked: ``loss_fn`` takes the stacked θ and returns the ``(R,)`` losses; the gradient of their sum is
            every run's own gradient (runs share no parameter), so no ``vmap`` is needed.

    Returns:
        :class:`Trajectory` with the final θ, and per run the loss and gradient norm at the final θ.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    # one flat (R, P) tensor: every update is a handful of operations, whatever the number of tensors
    shapes = {k: tuple(v.shape[1:]) for k, v in theta.items()}
    r = next(iter(theta.values())).shape[0]
    flat = torch.cat([v.reshape(r, -1) for v in theta.values()], dim=1)

    def views(x: Tensor) -> ParamDict:
        out, offset = {}, 0
        for k, shape in shapes.items():
            size = math.prod(shape)
            out[k] = x[..., offset:offset + size].reshape(*x.shape[:-1], *shape)
            offset += size
        return out

    if stacked:
        def total(x: Tensor) -> tuple[Tensor, Tensor]:
            losses = loss_fn(views(x))
            return losses.sum(), losses

        summed = grad_and_value(total, has_aux=True)

        def step_fn(x: Tensor) -> tuple[Tensor, Tensor]:
            g, (_, losses) = summed(x)
            return g, losses
    else:
        step_fn = vmap(grad_and_value(lambda x: loss_fn(views(x))))
    m, v2 = torch.zeros_like(flat), torch.zeros_like(flat)
    active = torch.ones(r, dtype=torch.bool, device=flat.device)
    taken = torch.zeros(r, dtype=torch.long, device=flat.device)
    wanted = set(int(s) for s in snapshot_at)
    snaps: list[tuple[int, ParamDict]] = []
    beta1, beta2 = betas
    for t in range(steps + 1):
        if t in wanted:
            snaps.append((t, {k: v.clone() for k, v in views(flat).items()}))
        if monitor is not None:
            monitor(t, views(flat))
        g, loss = step_fn(flat)
        gnorm = torch.linalg.vector_norm(g, dim=1)
        if grad_tol is not None:
            active &= gnorm > grad_tol
        if t == steps or not bool(active.any()):
            break
        taken += active
        if optimizer == "gd":
            update = lr * g
        else:
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v2.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            correction1, correction2 = 1 - beta1 ** (t + 1), 1 - beta2 ** (t + 1)
            update = (lr / correction1) * m / (v2.sqrt() / correction2**0.5).add_(eps)
        flat = flat - (update if bool(active.all()) else update * active.to(flat.dtype)[:, None])
    return Trajectory({k: v.clone() for k, v in views(flat).items()}, loss.detach(), gnorm.detach(), taken,
                      tuple(snaps))


def descent_loop(loss_fn: LossFn, theta: Mapping[str, Tensor], *, optimizer: str = "gd", lr: float = 0.1,
                 steps: int = 1000, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> ParamDict:
    """The reference: each run alone, with ``torch.optim.SGD`` / ``torch.optim.Adam`` on leaf tensors."""
    out = []
    r = next(iter(theta.values())).shape[0]
    for i in range(r):
        params = {k: v[i].clone().requires_grad_(True) for k, v in theta.items()}
        opt = (torch.optim.SGD(params.values(), lr=lr) if optimizer == "gd"
               else torch.optim.Adam(params.values(), lr=lr, betas=betas, eps=eps))
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(params).backward()
            opt.step()
        out.append({k: v.detach() for k, v in params.items()})
    return stack_runs(out)


__all__ = ["LossFn", "OPTIMIZERS", "Trajectory", "batched_descent", "descent_loop", "model_loss", "run_slice",
           "stack_runs", "stacked_mlp", "zoo_runs"]
