"""The error for bad conversion input: a :class:`statex_hf.errors.StateXUserError`, one line and exit code 2."""

from __future__ import annotations

from statex_hf.errors import StateXUserError


class StateXInputError(StateXUserError):
    """The user's checkpoint or choices cannot be converted; the message names the field, the value and the fix."""
