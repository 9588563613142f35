"""Errors a user can fix.

Anything raised as :class:`UserInputError` is shown by the CLI as one red line and exit code 2,
never as a traceback. Bugs keep their traceback.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input the user can fix: a malformed spec, a missing file, a mismatched checkpoint.

    The message is one line saying what is wrong and how to fix it.
    """
