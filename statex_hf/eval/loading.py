"""Loading the model and tokenizer an eval runs on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_local(name: str) -> None:
    looks_local = name.startswith((".", "/", "~")) or Path(name).exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise FileNotFoundError(f"{name!r} is not a directory")


def load_tokenizer(model: str, tokenizer: str | None = None, trust_remote_code: bool = False) -> Any:
    """The tokenizer of ``model``, or the one named by ``tokenizer`` for checkpoints that ship none
    (``state-spaces/mamba2-*`` use ``EleutherAI/gpt-neox-20b``)."""
    from transformers import AutoTokenizer

    _check_local(model)
    return AutoTokenizer.from_pretrained(tokenizer or model, trust_remote_code=trust_remote_code)


def load_model(model: str, device: str | None = None, dtype: str | None = None, trust_remote_code: bool = False) -> Any:
    """Any ``AutoModelForCausalLM`` checkpoint (local directory or Hub id), on ``device``, in eval mode.

    ``dtype=None`` means bfloat16 on CUDA and float32 on CPU (CPU bf16 matmuls are slow and rarely what
    an eval wants).
    """
    from transformers import AutoModelForCausalLM

    import statex_hf  # noqa: F401  (registers the StateX Auto classes)

    _check_local(model)
    device = device or default_device()
    torch_dtype = DTYPES[dtype] if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    return lm.to(device).eval()
