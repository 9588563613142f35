"""User code named in specs: ``path/to/file.py:function`` or ``package.module:function``.

One importer for every spec that names user code (``--model``, ``--data``, ``--loss``): a file is imported as
a module registered in ``sys.modules`` under a stable name (so pickling, e.g. to Dask workers, finds its
classes), with its folder on ``sys.path`` only while it runs. Every failure is a one-line
:class:`~lossatlas.errors.UserInputError`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from lossatlas.errors import UserInputError


def one_line(exc: BaseException) -> str:
    """``Type: first line of message`` of an exception, for one-line error messages."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def import_file(path_text: str, what: str = "user") -> ModuleType:
    """Import a Python file as a fresh module (its folder is on ``sys.path`` while it runs)."""
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise UserInputError(
            f"{what} file '{path_text}' not found (looked at {path}); check the path in the spec"
        )
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"lossatlas_user_{re.sub(r'[^0-9a-zA-Z_]', '_', path.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserInputError(f"cannot import '{path_text}' as Python; give a .py file in the spec")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look classes up here
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise UserInputError(f"importing {what} file '{path_text}' failed: {one_line(exc)}") from exc
    finally:
        if str(path.parent) in sys.path:
            sys.path.remove(str(path.parent))
    return module


def import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise UserInputError(
                f"cannot import module '{name}' ({one_line(exc)}); check the name or add its folder to "
                "PYTHONPATH"
            ) from exc
        raise UserInputError(f"importing module '{name}' failed: {one_line(exc)}") from exc
    except Exception as exc:
        raise UserInputError(f"importing module '{name}' failed: {one_line(exc)}") from exc


def find_function(module: ModuleType, attribute: str, where: str) -> Callable[..., object]:
    target: object = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[:12]
            defined = ", ".join(public) or "(nothing callable)"
            raise UserInputError(f"'{where}' has no function '{attribute}'; it defines: {defined}")
        target = getattr(target, part)
    if not callable(target):
        raise UserInputError(f"'{where}:{attribute}' is a {type(target).__name__}, not a function")
    return target  # type: ignore[return-value]


def is_file_target(target: str) -> bool:
    """Whether the part before ``:`` names a Python file rather than a module."""
    return target.endswith(".py") or "/" in target or "\\" in target or Path(target).is_file()


def load_callable(target: str, attribute: str, what: str = "user") -> Callable[..., object]:
    """The function ``attribute`` of the file or module ``target`` (one-line errors)."""
    module = import_file(target, what) if is_file_target(target) else import_module(target)
    return find_function(module, attribute, target)
