"""Loading the model and tokenizer an eval runs on, after checking that they are there.

:func:`check_sources` and :func:`check_device` look without loading anything, so a missing folder,
a checkpoint without a tokenizer, a truncated weight file or a device that is not there is one line
before the eval starts; errors while loading are one line too (:class:`~statex_hf.errors.StateXUserError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from statex_hf.errors import StateXUserError
from statex_hf.paths import check_checkpoint_folder, looks_like_local_path, require_tokenizer_folder
from statex_hf.saved_files import TOKENIZER_FILES

DTYPE_NAMES = ("bfloat16", "float16", "float32")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None) -> None:
    """``--device`` names a device torch knows and this machine has."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise StateXUserError(f"--device {device!r} is not a torch device; use e.g. cpu, cuda or cuda:1") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise StateXUserError(
                f"--device {device}: this machine has no usable CUDA GPU (torch.cuda.is_available() is False); "
                "use --device cpu"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise StateXUserError(
                f"--device {device}: there are {torch.cuda.device_count()} CUDA GPU(s) here (cuda:0 ...); "
                "choose one of them"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise StateXUserError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif parsed.type == "meta":
        raise StateXUserError(
            f"--device {device}: meta tensors hold no values, so nothing can be evaluated; use --device cpu"
        )
    elif parsed.type != "cpu":  # xpu, hpu, ...: a backend module of torch that says whether it is there
        backend = getattr(torch, parsed.type, None)
        if not getattr(backend, "is_available", lambda: True)():  # a backend torch has no module for: torch decides
            raise StateXUserError(f"--device {device}: no {parsed.type} device is available here; use --device cpu")


def check_sources(model: str, tokenizer: str | None) -> None:
    """A local MODEL is a checkpoint folder with readable weights and, unless ``--tokenizer`` is given, a tokenizer.

    A Hub id is left to ``from_pretrained``; the same "local path or Hub id" rule as every command
    (:mod:`statex_hf.paths`) decides which one a name is.
    """
    if looks_like_local_path(model):
        check_checkpoint_folder(model, "MODEL")
        folder = Path(model).expanduser()
        if tokenizer is None and not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise StateXUserError(
                f"MODEL {model} has no tokenizer files; pass --tokenizer NAME_OR_PATH "
                "(e.g. the tokenizer of the model it was converted from)"
            )
    if tokenizer is not None and looks_like_local_path(tokenizer):
        require_tokenizer_folder(tokenizer, "--tokenizer")


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def load_tokenizer(model: str, tokenizer: str | None = None, trust_remote_code: bool = False) -> Any:
    """The tokenizer of ``model``, or the one named by ``tokenizer`` for checkpoints that ship none
    (``state-spaces/mamba2-*`` use ``EleutherAI/gpt-neox-20b``)."""
    from transformers import AutoTokenizer

    name = tokenizer or model
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:  # unknown repo, no tokenizer files, unreadable tokenizer.json
        raise StateXUserError(
            f"cannot load the tokenizer of {name!r}: {_first_line(err)}; pass --tokenizer NAME_OR_PATH"
        ) from err


def load_model(model: str, device: str | None = None, dtype: str | None = None, trust_remote_code: bool = False) -> Any:
    """Any ``AutoModelForCausalLM`` checkpoint (local directory or Hub id), on ``device``, in eval mode.

    ``dtype=None`` means bfloat16 on CUDA and float32 on CPU (CPU bf16 matmuls are slow and rarely what
    an eval wants).
    """
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    import statex_hf

    statex_hf.register_auto_classes()
    device = device or default_device()
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    try:
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, SafetensorError) as err:  # unreadable config or weights, unknown architecture
        raise StateXUserError(f"cannot load MODEL {model!r}: {_first_line(err)}") from err
    return lm.to(device).eval()
