"""The two kinds of error lossatlas raises on purpose.

* :class:`UserInputError`: bad input the user can fix (a malformed spec, a missing file, a mismatched checkpoint).
  The CLI shows it as one red line and exit code 2, never as a traceback.
* :class:`NonFiniteError`: a computation met NaN or inf (a diverged point, an overflowing loss). Code that can
  carry on without the value (a convexity map leaving one grid point empty) catches exactly this, so a real
  input error is never swallowed; the CLI shows it as one line too.

Bugs keep their traceback.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input the user can fix. The message is one line saying what is wrong and how to fix it."""


class NonFiniteError(ArithmeticError):
    """A value that must be finite (a loss, a Hessian-vector product) is NaN or infinite."""


__all__ = ["NonFiniteError", "UserInputError"]
