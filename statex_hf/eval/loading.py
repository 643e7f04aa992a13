"""Loading the model and tokenizer an eval runs on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model_and_tokenizer(
    model: str,
    tokenizer: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Any ``AutoModelForCausalLM`` checkpoint (local directory or Hub id) in eval mode, and its tokenizer.

    ``dtype=None`` means bfloat16 on CUDA and float32 on CPU (CPU bf16 matmuls are slow and rarely what
    an eval wants). ``tokenizer`` names a different tokenizer source, for checkpoints that ship none
    (``state-spaces/mamba2-*`` use ``EleutherAI/gpt-neox-20b``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import statex_hf  # noqa: F401  (registers the StateX Auto classes)

    device = device or default_device()
    torch_dtype = DTYPES[dtype] if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    looks_local = model.startswith((".", "/", "~")) or Path(model).exists()
    if looks_local and not Path(model).expanduser().is_dir():
        raise FileNotFoundError(f"MODEL {model!r} is not a directory")
    tok = AutoTokenizer.from_pretrained(tokenizer or model, trust_remote_code=trust_remote_code)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    return lm.to(device).eval(), tok
