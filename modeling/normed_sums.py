"""A block's residual add handed to the norm that reads its sum next, for every family's blocks (issue 20).

On the decode path one kernel adds and normalizes (``dispatch.one_launch_add_rmsnorm``); the sum goes on as the
block's output, and the norm's next call with that very sum, unchanged, returns the result kept beside it instead of
launching its own kernel. A model tells each block which norm reads its output (``link_next_norms``); whatever
rearranges the layers later hands a sum to a norm that is not called with it, and the norm that is computes its own.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch
from statex_hf.modeling.decode_linear import hooked
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

# A residual sum -> (the norm that normalized it, the versions of the sum and of that norm's weight, how that norm is
# called (``reading``), the normed sum), for that norm's next such call with this very sum, which takes the entry.
# Keyed weakly by identity: an entry is dropped with its sum, so no result outlives the tensor it was computed from.
_NORMED_SUMS = WeakIdKeyDictionary()


def _versions_tracked(weight: torch.Tensor | None) -> bool:
    """Whether the tensors of a call keep version counters: not those made in ``torch.inference_mode``."""
    return not torch.is_inference_mode_enabled() and (weight is None or not weight.is_inference())


def _versions(summed: torch.Tensor, weight: torch.Tensor | None) -> tuple[int, int]:
    """The version counters of a residual sum and a norm's weight: an in-place change of either bumps one."""
    return summed._version, -1 if weight is None else weight._version


def add_and_normalize(
    norm: nn.Module, add_and_norm: Callable[[], tuple[torch.Tensor, torch.Tensor] | None], reading: Hashable = None
) -> torch.Tensor | None:
    """The sum of ``add_and_norm()`` (a ``dispatch.one_launch_add_rmsnorm`` call with ``norm``'s weight: the sum and
    its norm, or ``None``), its norm kept for ``norm``'s next call with it as ``reading``. ``None`` where the caller
    adds with torch: a compiled graph (told first: dynamo cannot trace the inference-mode checks), a hooked norm (its
    hooks see every call), ``torch.inference_mode`` (its tensors keep no version to tell an in-place change by), or
    where the dispatch declines (training, CPU)."""
    weight = getattr(norm, "weight", None)
    if torch.compiler.is_compiling() or hooked(norm) or not _versions_tracked(weight):
        return None
    fused = add_and_norm()
    if fused is None:
        return None
    summed, normed = fused
    _NORMED_SUMS[summed] = (norm, _versions(summed, weight), reading, normed)
    return summed


def take_normed_sum(norm: nn.Module, hidden_states: torch.Tensor, reading: Hashable = None) -> torch.Tensor | None:
    """What ``add_and_normalize`` computed for ``norm`` on this very tensor, unchanged since, read as ``reading``
    (taken: a second call computes its own); ``None`` otherwise, and the norm normalizes ``hidden_states`` itself."""
    if torch.compiler.is_compiling():  # `add_and_normalize` leaves a compiled graph to torch
        return None
    pending = _NORMED_SUMS.pop(hidden_states, None)
    if pending is None or pending[0] is not norm:
        return None
    if pending[1:3] != (_versions(hidden_states, getattr(norm, "weight", None)), reading):
        return None
    return pending[3]


def link_next_norms(blocks: Sequence[nn.Module], first_norms: Sequence[nn.Module], final_norm: nn.Module) -> None:
    """Each block's ``next_norm``: the next block's first norm (``first_norms[i + 1]``), the last block's the model's
    ``final_norm``. Kept in the block's ``__dict__``, not as a submodule (no second copy of its weight in the state
    dict, nothing in ``named_modules``)."""
    for block, next_norm in zip(blocks, [*first_norms[1:], final_norm]):  # no blocks: nothing to link
        block.__dict__["next_norm"] = next_norm
