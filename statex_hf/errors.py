"""The one base for a user's mistake, and the exit code every command gives it.

A :class:`StateXUserError` is bad input (an argument, a file, a folder), never a bug: its message is
one line that names the problem and the fix. ``statex-hf``'s ``main()`` prints it as
``statex-hf COMMAND: error: MESSAGE`` and exits with :data:`EXIT_USER_ERROR`; anything else keeps its
traceback. It subclasses ``ValueError`` so Python callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2  # what argparse gives a bad argument; every user error gets the same


class StateXUserError(ValueError):
    """Bad input from the user; the message is one line naming the value, the problem and the fix."""


__all__ = ["EXIT_USER_ERROR", "StateXUserError"]
