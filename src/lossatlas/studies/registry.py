"""The study registry: ``@study(name, paper=..., claim=...)`` over frozen dataclasses of parameters.

A study is a frozen dataclass whose fields are its parameters (the defaults are the ``quick`` preset) and
which subclasses :class:`Study`::

    @study("safran-shamir", paper="Safran & Shamir 2018, ...", claim="spurious minima are common ...")
    @dataclass(frozen=True)
    class SafranShamir(Study):
        ks: tuple[int, ...] = (6, 8, 10)
        runs: int = 300
        PUBLISHED = Published(source="...", columns=(...), rows=(...))

        @classmethod
        def full(cls) -> SafranShamir: return cls(ks=tuple(range(6, 21)), runs=1000)
        def run(self, ctx: Context) -> xr.Dataset: ...      # per-cell raw data, batched over runs
        def check(self, ds: xr.Dataset) -> list[Row]: ...   # published beside measured, CI, verdict

Names are the interface (``lossatlas study run NAME``); parameters are overridden from text with
:func:`parse_overrides` (``ks=6,8,10``, ``runs=200``, ``early_stop=false``), typed by the field's annotation.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from lossatlas.errors import UserInputError

if TYPE_CHECKING:
    import xarray as xr

    from lossatlas.studies.framework import Context, Row

PRESETS = ("quick", "full")


@dataclass(frozen=True)
class Published:
    """Published numbers as data, with where they come from.

    Attributes:
        source: the paper, table and (where the lecture notes reproduce it) the notes' page.
        columns: column names of ``rows``.
        rows: one tuple per published row, in ``columns`` order (``None`` for a missing entry).
        note: how to read the table (units, our reading of an ambiguous layout).
    """

    source: str
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[Any, ...], ...] = ()
    note: str = ""

    def records(self) -> list[dict[str, Any]]:
        """The rows as ``{column: value}`` dicts."""
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


class Study:
    """Base of every study's parameter dataclass: presets, published data, run, check, figures."""

    PUBLISHED: ClassVar[Published | None] = None
    NOTES: ClassVar[str] = ""
    """Standing notes for ``table.md`` (protocol choices, what the rows mean, known differences)."""

    @classmethod
    def quick(cls: type[S]) -> S:
        """The quick preset (seconds to a minute on two cores): the dataclass defaults."""
        return cls()

    @classmethod
    def full(cls: type[S]) -> S:
        """The full preset (every published row); defaults to the quick one."""
        return cls()

    def run(self, ctx: Context) -> xr.Dataset:  # pragma: no cover - abstract
        """Compute the raw per-run data, cell by cell through ``ctx.map`` (resumable)."""
        raise NotImplementedError

    def check(self, ds: xr.Dataset) -> list[Row]:  # pragma: no cover - abstract
        """Published beside measured for every row, with interval, tolerance and verdict."""
        raise NotImplementedError

    def figures(self, ds: xr.Dataset, folder: Path) -> list[Path]:
        """Write PNG figures into ``folder``; returns their paths (none by default)."""
        return []


S = TypeVar("S", bound=Study)


@dataclass(frozen=True)
class StudyInfo:
    """A registered study: its name, the paper, the claim it checks and its parameter class."""

    name: str
    cls: type[Study]
    paper: str
    claim: str

    @property
    def summary(self) -> str:
        """First paragraph of the class docstring."""
        return (self.cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")

    def preset(self, which: str) -> Study:
        """The parameters of preset ``quick`` or ``full``."""
        if which not in PRESETS:
            raise UserInputError(f"unknown preset '{which}'; use one of: {', '.join(PRESETS)}")
        made: Study = getattr(self.cls, which)()
        return made

    def fields(self) -> list[tuple[str, str, Any, Any]]:
        """``(name, type text, quick value, full value)`` of every parameter."""
        quick, full = self.preset("quick"), self.preset("full")
        hints = _hints(self.cls)
        return [(f.name, _describe(hints[f.name]), getattr(quick, f.name), getattr(full, f.name))
                for f in dataclasses.fields(self.cls)]  # type: ignore[arg-type]


_REGISTRY: dict[str, StudyInfo] = {}
BUILTIN_ORDER = ("critical-points", "deep-linear", "single-neuron", "safran-shamir", "xor-jellyfish", "index-vs-error",
                 "goodfellow", "mnist1d-baselines", "batch-size-weight-decay", "optimizer-switch", "skip-connections",
                 "initialisation", "ccnn", "overparameterisation",
                 "safran-shamir-overparam", "random-directions", "nguyen-hein", "mode-connectivity", "width-effect",
                 "ccnn-depth")
"""The built-in studies in the order of the lecture notes' argument (exact examples first, experiments last)."""


def study(name: str, *, paper: str, claim: str) -> Callable[[type[S]], type[S]]:
    """Register a frozen dataclass subclassing :class:`Study` under ``name``."""

    def register(cls: type[S]) -> type[S]:
        params = getattr(cls, "__dataclass_params__", None)
        if params is None or not params.frozen or not issubclass(cls, Study):
            raise TypeError(f"study '{name}': {cls.__name__} must be a frozen dataclass subclassing Study")
        _REGISTRY[name] = StudyInfo(name=name, cls=cls, paper=paper, claim=claim)
        return cls

    return register


def _load_all() -> None:
    import lossatlas.studies  # noqa: F401 - importing the package registers every built-in study


def study_names() -> list[str]:
    """Registered study names: the built-ins in :data:`BUILTIN_ORDER`, then any others in registration order."""
    _load_all()
    return sorted(_REGISTRY, key=lambda n: BUILTIN_ORDER.index(n) if n in BUILTIN_ORDER else len(BUILTIN_ORDER))


def get_study(name: str) -> StudyInfo:
    """The registered study ``name``; a one-line error listing the names otherwise."""
    _load_all()
    if name not in _REGISTRY:
        raise UserInputError(f"unknown study '{name}'; choose one of: {', '.join(study_names())}")
    return _REGISTRY[name]


# -- parameters from text -----------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    """The evaluated annotation of every dataclass field (string annotations resolved in the class's module)."""
    import sys

    namespace = {**vars(typing), **vars(sys.modules[cls.__module__])}
    return {f.name: eval(f.type, namespace) if isinstance(f.type, str) else f.type  # noqa: S307 - own source
            for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        return f"tuple[{_describe(args[0])}, ...]"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    return getattr(annotation, "__name__", str(annotation))


_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


def _scalar(text: str, kind: Any) -> Any:
    text = text.strip()
    if kind is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    if kind is str:
        if not text:
            raise ValueError
        return text
    if typing.get_origin(kind) is typing.Literal:
        if text in [str(a) for a in typing.get_args(kind)]:
            return text
        raise ValueError
    raise TypeError(f"unsupported parameter type {kind!r}")


def parse_value(text: str, annotation: Any) -> Any:
    """Text → a value of the annotated type (``bool``, ``int``, ``float``, ``str``, ``Literal``, or
    ``tuple[X, ...]`` written comma-separated, e.g. ``6,8,10``, empty for ``()``); ``ValueError`` when it does not
    parse."""
    if typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        if not text.strip():
            return ()
        return tuple(_scalar(p, item) for p in text.split(","))
    return _scalar(text, annotation)


def parse_overrides(info: StudyInfo, overrides: Mapping[str, str] | Sequence[str] | None) -> dict[str, Any]:
    """``{"ks": "6,8,10"}`` or ``["ks=6,8,10"]`` → typed field values for ``dataclasses.replace``.

    An unknown key or a value of the wrong type is a one-line :class:`UserInputError` listing the keys.
    """
    if not overrides:
        return {}
    if not isinstance(overrides, Mapping):
        pairs: dict[str, str] = {}
        for item in overrides:
            key, sep, value = str(item).partition("=")
            if not sep or not key.strip():
                raise UserInputError(f"--set expects KEY=VALUE, got '{item}'; valid keys for study "
                                     f"'{info.name}': {', '.join(_field_names(info))}")
            pairs[key.strip()] = value
        overrides = pairs
    hints = _hints(info.cls)
    names = _field_names(info)
    out: dict[str, Any] = {}
    for key, text in overrides.items():
        if key not in names:
            raise UserInputError(f"unknown parameter '{key}' for study '{info.name}'; valid keys: "
                                 f"{', '.join(names)}")
        try:
            out[key] = parse_value(str(text), hints[key])
        except ValueError:
            raise UserInputError(f"--set {key}={text}: {key} must be {_describe(hints[key])} (lists as "
                                 f"6,8,10); valid keys for study '{info.name}': {', '.join(names)}") from None
    return out


def _field_names(info: StudyInfo) -> list[str]:
    return [f.name for f in dataclasses.fields(info.cls)]  # type: ignore[arg-type]


def params_json(params: Study) -> dict[str, Any]:
    """The parameter values as JSON-able data (tuples become lists)."""
    return {f.name: _jsonable(getattr(params, f.name)) for f in dataclasses.fields(params)}  # type: ignore[arg-type]


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


__all__ = ["PRESETS", "Published", "Study", "StudyInfo", "get_study", "params_json", "parse_overrides",
           "parse_value", "study", "study_names"]
