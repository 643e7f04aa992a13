"""Running a causal LM over same-length prompts in batches: greedy continuations and next-token argmaxes.

Prompts of one length have exactly the same number of tokens (the tasks are built that way), so a
batch is a plain stacked tensor: no padding, and nothing depends on how a model treats left padding.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def model_device(model: Any) -> torch.device:
    """Where the model's weights live (CPU for a weightless module)."""
    if hasattr(model, "device") and isinstance(model.device, torch.device):
        return model.device
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def batch_size_for(length: int, batch_size: int, max_batch_tokens: int) -> int:
    """How many prompts of ``length`` tokens go in one forward pass."""
    return max(1, min(batch_size, max_batch_tokens // max(length, 1)))


def map_batches(
    fn: Callable[[Sequence[T]], list[R]], items: Sequence[T], batch_size: int, on_done: Callable[[int], Any]
) -> list[R]:
    """``fn`` over ``items`` in batches; on CUDA out-of-memory the batch is halved and retried.

    ``on_done(n)`` is told how many items finished (drives a progress bar).
    """
    results: list[R] = []
    start = 0
    while start < len(items):
        batch = items[start : start + batch_size]
        try:
            results.extend(fn(batch))
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            torch.cuda.empty_cache()
            continue
        start += len(batch)
        on_done(len(batch))
    return results


def _greedy_generation_config(model: Any, max_new_tokens: int, pad_token_id: int | None) -> dict[str, Any]:
    config = getattr(model, "generation_config", None)
    if config is None:  # not a transformers model (a test stub): plain arguments
        return {"max_new_tokens": max_new_tokens, "do_sample": False}
    config = copy.deepcopy(config)
    # A checkpoint's generation config may ask for sampling; greedy decoding is part of the eval's definition.
    config.do_sample = False
    config.num_beams = 1
    config.temperature = None
    config.top_p = None
    config.top_k = None
    config.max_new_tokens = max_new_tokens
    config.max_length = None
    if config.pad_token_id is None:
        config.pad_token_id = pad_token_id if pad_token_id is not None else config.eos_token_id
    return {"generation_config": config}


@torch.inference_mode()
def greedy_continuations(
    model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_token_id: int | None = None
) -> list[list[int]]:
    """The greedy continuation (new tokens only, at most ``max_new_tokens``) of each same-length prompt."""
    input_ids = torch.tensor([list(p) for p in prompts], dtype=torch.long, device=model_device(model))
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        **_greedy_generation_config(model, max_new_tokens, pad_token_id),
    )
    sequences = out.sequences if hasattr(out, "sequences") else out
    return [row.tolist() for row in sequences[:, input_ids.shape[1] :]]


@torch.inference_mode()
def next_token_argmax(model: Any, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    """For each same-length prompt, the model's most likely next token at every position (teacher forcing)."""
    input_ids = torch.tensor([list(p) for p in prompts], dtype=torch.long, device=model_device(model))
    logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
    return logits.argmax(dim=-1).tolist()
