"""The error for bad conversion input (a :class:`statex_hf.errors.StateXUserError`: one line, exit code 2), and the
translation of the config classes' messages into the command line's words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from statex_hf.errors import StateXUserError


class StateXInputError(StateXUserError):
    """The user's checkpoint or choices cannot be converted; the message names the field, the value and the fix."""


def in_flag_words(message: str, flags: Mapping[str, str]) -> str:
    """A config class's message with each config field the user sets by a flag named by that flag.

    ``statex_num_heads=3 does not divide num_heads=4`` -> ``--num-heads 3 does not divide num_heads=4``
    (``flags = {"statex_num_heads": "--num-heads"}``); fields of the checkpoint keep their names.
    """
    for field, flag in flags.items():
        message = re.sub(rf"\b{re.escape(field)}=", f"{flag} ", message)
        message = re.sub(rf"\b{re.escape(field)}\b", flag, message)
    return message
