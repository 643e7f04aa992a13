"""The errors for bad post-training input: :class:`statex_hf.errors.StateXUserError`, one line and exit code 2."""

from statex_hf.errors import StateXUserError


class PosttrainInputError(StateXUserError):
    """Bad data, option or model for post-training; the message names the value and the fix."""


class PosttrainDataNotFound(PosttrainInputError, FileNotFoundError):
    """The data argument names no file, folder, glob match or Hub dataset."""


__all__ = ["PosttrainDataNotFound", "PosttrainInputError"]
