"""The one error type for bad conversion input.

The CLI turns it into a single line on stderr and exit code 2; everything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class StateXInputError(ValueError):
    """The user's checkpoint or choices cannot be converted; the message names the field, the value and the fix."""
