"""ONE grammar for every spec that names a model, a dataset or a loss.

::

    spec     := builtin | file | module | npz
    builtin  := ["zoo:"] NAME [":" options]          zoo:mlp:widths=256-256   teacher:n=1000,d=10   mse
    file     := PATH ".py" ":" FUNCTION [":" options]  models/my.py:small_cnn:channels=32
    module   := DOTTED.MODULE ":" FUNCTION [":" options]  torch.nn.functional:cross_entropy:reduction=none
    npz      := PATH ".npz"                           (data only) arrays x, y [, x_test, y_test]
    options  := key "=" value ("," key "=" value)*

Model built-ins carry the ``zoo:`` prefix; datasets and losses don't. Option values are read by the type of the
target's parameter (its annotation, else its default's type): ``bool`` (true/false, yes/no, on/off, 1/0),
``int``, ``float``, ``str``, or a tuple of integers written with ``-`` (``widths=256-256``; empty = ``()``).
Every malformed spec is a one-line :class:`~lossatlas.errors.UserInputError` naming what is valid.
"""

from __future__ import annotations

import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lossatlas.errors import UserInputError
from lossatlas.userfunc import load_callable

_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_FILE = re.compile(r"^(?P<path>.+?\.py)(?::(?P<rest>.*))?$")
FORMS = {
    "model": "'zoo:NAME[:key=value,...]', 'path/file.py:function[:key=value,...]' or 'package.module:function'",
    "data": "a built-in NAME[:key=value,...], 'path/file.npz', 'path/file.py:function' or 'package.module:function'",
    "loss": "cross_entropy, mse, 'package.module:function[:key=value,...]' or 'path/file.py:function'",
}

_NOUN = {"data": "dataset"}


@dataclass(frozen=True)
class Spec:
    """A parsed spec.

    Attributes:
        text: the spec as given (stripped).
        kind: ``"builtin"``, ``"file"``, ``"module"`` or ``"npz"``.
        name: the built-in's name, or the function's name (``""`` for npz).
        target: the ``.py`` / ``.npz`` path or the module name (``""`` for built-ins).
        options: ``(key, raw value)`` pairs in the order given.
    """

    text: str
    kind: str
    name: str
    target: str = ""
    options: tuple[tuple[str, str], ...] = ()

    @property
    def builtin(self) -> bool:
        return self.kind == "builtin"


def split_hf_spec(text: str) -> tuple[str, str]:
    """``hf:PATH[:key=value,...]`` -> ``(PATH, "key=value,...")``: the options are what follows the last ``:`` when it
    holds a ``=``; a path containing ``:`` otherwise stays whole (:func:`lossatlas.models.hf.parse_hf_spec`)."""
    body = text.strip().removeprefix("hf:")
    path, sep, tail = body.rpartition(":")
    if not sep or "=" not in tail:
        return body.strip(), ""
    return path.strip(), tail.strip()


def canonical_spec(text: str) -> str:
    """The spec with its file path made absolute (``models/my.py:f`` → ``/abs/models/my.py:f``), so that the same
    file named two ways gives one configuration; other specs are returned unchanged."""
    if not isinstance(text, str):
        return text
    stripped = text.strip()
    if stripped.startswith("hf:"):
        path, tail = split_hf_spec(stripped)
        return f"hf:{Path(path).expanduser().resolve()}" + (f":{tail}" if tail else "")
    if stripped.startswith("text:"):
        path, sep, rest = stripped.removeprefix("text:").partition(",")
        return f"text:{Path(path).expanduser().resolve()}{sep}{rest}"
    if stripped.endswith(".npz"):
        return str(Path(stripped).expanduser().resolve())
    match = _FILE.match(stripped)
    if match and match.group("rest") is not None:
        return f"{Path(match.group('path')).expanduser().resolve()}:{match.group('rest')}"
    return stripped


def parse_options(text: str, where: str) -> tuple[tuple[str, str], ...]:
    """``"a=1,b=x"`` → ``(("a", "1"), ("b", "x"))``; one-line errors for items without ``=`` or repeated keys."""
    out: list[tuple[str, str]] = []
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, raw = (s.strip() for s in item.partition("="))
        if not sep or not key:
            raise UserInputError(f"{where}: expected key=value, got '{item.strip()}' (e.g. {where}:key=value)")
        if any(k == key for k, _ in out):
            raise UserInputError(f"{where}: key '{key}' is given twice; keep one")
        out.append((key, raw))
    return tuple(out)


def parse_spec(text: str, what: str, builtins: Collection[str] = (), *, prefix: str = "") -> Spec:
    """Parse a ``--model`` (``what="model"``, ``prefix="zoo:"``), ``--data`` or ``--loss`` spec.

    ``builtins``: names this kind knows without a file or module (zoo models, datasets, losses).
    """
    forms = FORMS.get(what, "")
    if not isinstance(text, str) or not text.strip():
        raise UserInputError(f"--{what} needs a spec: {forms}")
    text = text.strip()
    if what == "data" and text.endswith(".npz"):
        return Spec(text, "npz", "", text)
    head, sep, tail = text.partition(":")
    if prefix and text.lower().startswith(prefix):
        name, _, options = text[len(prefix):].partition(":")
        name = name.strip().lower()
        if name not in builtins:
            raise UserInputError(f"unknown {prefix.rstrip(':')} {what} '{name}'; choose one of: {', '.join(builtins)}")
        return Spec(text, "builtin", name, "", parse_options(options, f"{prefix}{name}"))
    if head.strip() in builtins:
        if prefix:
            raise UserInputError(f"{what} spec '{text}' has no '{prefix}' prefix; did you mean '{prefix}{text}'?")
        return Spec(text, "builtin", head.strip(), "", parse_options(tail, head.strip()))
    match = _FILE.match(text)
    if match and (match.group("rest") is not None or text.endswith(".py")):
        path, rest = match.group("path"), match.group("rest")
        function, _, options = (rest or "").partition(":")
        if not function.strip():
            raise UserInputError(f"{what} spec '{text}': name the function to call, as '{path}:make_{what}'")
        if not function.strip().isidentifier():
            raise UserInputError(f"{what} spec '{text}': '{function}' is not a Python function name")
        return Spec(text, "file", function.strip(), path, parse_options(options, f"{path}:{function.strip()}"))
    if sep:
        function, _, options = tail.partition(":")
        module = head.strip()
        if _MODULE.match(module) and function.strip().isidentifier():
            return Spec(text, "module", function.strip(), module,
                        parse_options(options, f"{module}:{function.strip()}"))
    hint = f" (did you mean '{prefix}{head.strip()}'?)" if prefix and head.strip().lower() in builtins else ""
    if not sep and not prefix:
        known = f" (built-ins: {', '.join(builtins)})" if builtins else ""
        raise UserInputError(f"unknown {_NOUN.get(what, what)} '{text}'; use {forms}{known}")
    raise UserInputError(f"cannot read {what} spec '{text}'{hint}; use {forms}")


def describe_type(annotation: object) -> str:
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if typing.get_origin(annotation) in (tuple, list, Sequence):
        return "integers joined by '-' (e.g. 256-256)"
    return "a string"


def _unoptional(annotation: object) -> object:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def coerce(raw: str, annotation: object, key: str, where: str) -> object:
    """Read the text ``raw`` of option ``key`` as ``annotation`` (see the module docstring)."""
    annotation = _unoptional(annotation)
    text = raw.strip()
    try:
        if annotation is bool:
            lowered = text.lower()
            if lowered in ("true", "yes", "on", "1"):
                return True
            if lowered in ("false", "no", "off", "0"):
                return False
            raise ValueError(text)
        if annotation is int:
            return int(text)
        if annotation is float:
            return float(text)
        if typing.get_origin(annotation) in (tuple, list, Sequence):
            return tuple(int(part) for part in text.split("-")) if text else ()
    except ValueError:
        raise UserInputError(f"bad value {key}={raw!r} for {where}; expected {describe_type(annotation)}") from None
    if annotation in (str, inspect.Parameter.empty, typing.Any):
        return _literal(text) if annotation is not str else text
    return text


def _literal(text: str) -> object:
    """An untyped option: an int, a float, a bool or ``none`` when it reads as one, else the string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return None if lowered == "none" else text


def keyword_parameters(function: Callable[..., Any], reserved: Collection[str] = ()) -> dict[str, object]:
    """``{name: annotation}`` of the parameters a function accepts by keyword (``reserved`` ones left out)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return {}
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the defaults' types
        hints = {}
    out: dict[str, object] = {}
    for name, p in signature.parameters.items():
        if name in reserved or p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default_type = type(p.default) if p.default not in (p.empty, None) else p.empty
        out[name] = hints.get(name, default_type)
    return out


def typed_options(options: Sequence[tuple[str, str]], function: Callable[..., Any], where: str,
                  reserved: Collection[str] = ()) -> dict[str, object]:
    """Options as keyword arguments of ``function``, typed by its signature; one-line error for unknown keys."""
    accepted = keyword_parameters(function, reserved)
    takes_any = _takes_var_keyword(function)
    out: dict[str, object] = {}
    for key, raw in options:
        if key not in accepted and not takes_any:
            raise UserInputError(f"unknown key '{key}' for {where}; valid keys: {', '.join(accepted) or '(none)'}")
        out[key] = coerce(raw, accepted.get(key, inspect.Parameter.empty), key, where)
    return out


def _takes_var_keyword(function: Callable[..., Any]) -> bool:
    try:
        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return False


def load_user_function(spec: Spec, what: str, reserved: Collection[str] = ()) -> Callable[..., Any]:
    """The function a ``file`` / ``module`` spec names, with its options bound as keyword arguments."""
    if spec.kind not in ("file", "module"):
        raise ValueError(f"{spec.text} does not name user code")
    function = load_callable(spec.target, spec.name, what)
    if not spec.options:
        return function
    kwargs = typed_options(spec.options, function, f"{spec.target}:{spec.name}", reserved)
    return functools.partial(function, **kwargs)


def call_with_accepted(function: Callable[..., Any], offered: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``offered`` keyword arguments that ``function`` accepts (all, with ``**kwargs``)."""
    target = function.func if isinstance(function, functools.partial) else function
    bound = function.keywords if isinstance(function, functools.partial) else {}
    if _takes_var_keyword(target):
        return {k: v for k, v in offered.items() if k not in bound}
    accepted = keyword_parameters(target)
    return {k: v for k, v in offered.items() if k in accepted and k not in bound}


__all__ = ["FORMS", "Spec", "canonical_spec", "call_with_accepted", "coerce", "describe_type", "keyword_parameters",
           "load_user_function", "parse_options", "parse_spec", "typed_options"]
