"""The ``lossatlas`` command line: thin Typer commands over the library, Rich progress and errors.

One module per command group (:mod:`.train`, :mod:`.landscape`, :mod:`.hessian`, :mod:`.viz`, :mod:`.demo`, ...),
each registering its commands on the shared :data:`lossatlas.cli.common.app`; :func:`main` is the console script.
"""

from __future__ import annotations

import sys

import typer

from lossatlas.cli import (  # noqa: F401 - registers the commands
    demo,
    hessian,
    landscape,
    paths,
    study,
    train,
    trajectory,
    viz,
)
from lossatlas.cli.common import app, console, error_line
from lossatlas.errors import UserInputError

__all__ = ["app", "main"]


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Usage-error classes of click and of the click copy that newer Typer releases vendor."""
    import click

    types: list[type[BaseException]] = [click.UsageError]
    try:
        from typer._click import exceptions as vendored  # Typer >= 0.2x ships its own click

        types.append(vendored.UsageError)
    except ImportError:
        pass
    return tuple(types)


def main() -> None:
    """Console-script entry point: usage errors, like user errors, are one red line and exit 2."""
    usage_errors = _usage_error_types()
    try:
        code = app(standalone_mode=False)
    except usage_errors as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # Typer has printed the help already
            sys.exit(0)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)  # type: ignore[union-attr]
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        error_line(f"{message}{hint}")
        code = 2
    except (KeyboardInterrupt, typer.Abort):
        console.print("[yellow]interrupted[/yellow]")
        code = 130
    except UserInputError as exc:  # raised outside a command
        error_line(str(exc))
        code = 2
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
