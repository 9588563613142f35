"""``--model SPEC``: build a seeded model from the zoo, a Python file, or an importable module.

Spec forms (see :func:`build_model`):

* ``zoo:NAME[:key=value,...]``, e.g. ``zoo:mlp:widths=256-256,activation=tanh``;
* ``path/to/file.py:function``, the file imported with ``importlib.util.spec_from_file_location``;
* ``package.module:function``, imported with ``importlib.import_module``;
* ``hf:DIR`` / ``hf:path/config.json`` a Hugging Face model from local files (:mod:`lossatlas.models.hf`, the
  ``[hf]`` extra).

A user function is called with ``input_shape=...`` and/or ``output_dim=...`` when its signature accepts
them (by name or through ``**kwargs``), otherwise with no arguments, and must return an ``nn.Module``.
Everything a user can get wrong raises :class:`~lossatlas.errors.UserInputError` with a one-line message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from lossatlas.errors import UserInputError
from lossatlas.models.zoo import ZOO, build_zoo_model
from lossatlas.specs import call_with_accepted, load_user_function, parse_spec


def _check_shape(input_shape: Sequence[int], output_dim: int) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise UserInputError(
            f"input_shape must be a non-empty per-sample shape of positive sizes, got {tuple(input_shape)}"
        )
    if int(output_dim) < 1:
        raise UserInputError(f"output_dim must be at least 1, got {output_dim}")
    return shape


def _call_user_function(function: Callable[..., object], label: str, input_shape: tuple[int, ...],
                        output_dim: int) -> nn.Module:
    """Call with the subset of ``input_shape``/``output_dim`` its signature accepts; check the result."""
    kwargs = call_with_accepted(function, {"input_shape": input_shape, "output_dim": output_dim})
    try:
        model = function(**kwargs)
    except TypeError as exc:
        raise UserInputError(f"calling '{label}' failed ({exc}); give its other parameters default values or "
                             "pass them in the spec as key=value") from None
    if not isinstance(model, nn.Module):
        raise UserInputError(
            f"'{label}' returned {type(model).__name__}, not a torch.nn.Module; make it return the model"
        )
    return model


def _build_unseeded(spec: str, input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    parsed = parse_spec(spec, "model", builtins=list(ZOO), prefix="zoo:")
    if parsed.builtin:
        return build_zoo_model(parsed, input_shape=input_shape, output_dim=output_dim)
    function = load_user_function(parsed, "model", reserved=("input_shape", "output_dim"))
    return _call_user_function(function, f"{parsed.target}:{parsed.name}", input_shape, output_dim)


def build_model(spec: str, *, input_shape: tuple[int, ...], output_dim: int, seed: int = 0) -> nn.Module:
    """Build the model named by ``spec``, with parameters drawn from ``torch.manual_seed(seed)``.

    Args:
        spec: ``zoo:NAME[:key=value,...]`` (see :data:`lossatlas.models.ZOO`), ``path/to/file.py:function``
            or ``package.module:function``.
        input_shape: per-sample input shape without the batch dimension, e.g. ``(40,)`` for MNIST-1D,
            ``(1, 8, 8)`` for sklearn digits, ``(3, 32, 32)`` for CIFAR.
        output_dim: number of classes (or regression outputs).
        seed: seed for parameter initialisation. Construction runs inside ``torch.random.fork_rng``, so
            the global torch RNG state is untouched and equal seeds give bit-identical ``state_dict``s.

    Returns:
        The model on CPU, float32, in ``eval()`` mode.

    Raises:
        UserInputError: malformed spec, unknown zoo model or key, bad value, missing file, module or
            function, or a function that does not return an ``nn.Module``.
    """
    if isinstance(spec, str) and spec.strip().startswith("hf:"):  # transformers is imported only here
        from lossatlas.models.hf import build_hf_model

        return build_hf_model(spec, input_shape=_check_shape(input_shape, output_dim), output_dim=int(output_dim),
                              seed=seed)
    shape = _check_shape(input_shape, output_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build_unseeded(spec, shape, int(output_dim))
    return model.to(device="cpu", dtype=torch.float32).eval()
