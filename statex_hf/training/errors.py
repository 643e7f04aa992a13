"""The error for bad post-training input: the command line prints it as one line and exits with 2."""


class PosttrainInputError(ValueError):
    """Bad data, option or model for post-training; the message names the value and the fix."""


class PosttrainDataNotFound(PosttrainInputError, FileNotFoundError):
    """The data argument names no file, folder, glob match or Hub dataset."""


__all__ = ["PosttrainDataNotFound", "PosttrainInputError"]
