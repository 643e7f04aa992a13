"""Which layers StateX expands: the paper's four evenly spaced layers, one in every k, or an explicit list."""

from __future__ import annotations

from collections.abc import Sequence

from statex_hf.expansion.errors import StateXInputError, in_flag_words
from statex_hf.modeling.config_checks import check_statex_layers

# The paper expands four layers (GLA-1.3B: 0, 6, 12, 18 of 24; Mamba2-1.3B: 0, 12, 24, 36 of 48).
DEFAULT_EXPANDED_LAYERS = 4
# The option that lists the layers, and the config field it sets.
LAYERS_FLAG = "--layers"


def choose_layers(
    num_layers: int,
    *,
    every: int | None = None,
    layers: Sequence[int] | None = None,
    count: int = DEFAULT_EXPANDED_LAYERS,
) -> list[int]:
    """Indices of the layers to expand, sorted.

    ``layers`` wins when given (may be empty: nothing expanded); else ``every`` gives
    ``range(0, num_layers, every)``; else ``count`` layers spaced ``num_layers // count`` apart from layer 0.
    """
    if every is not None and layers is not None:
        raise StateXInputError("give either --every or --layers, not both")
    if layers is not None:
        try:  # the rules (range, each layer once) are the config's (statex_layers)
            return check_statex_layers([int(i) for i in layers], num_layers)
        except ValueError as err:
            raise StateXInputError(in_flag_words(str(err), {"statex_layers": LAYERS_FLAG})) from err
    if every is not None:
        if every < 1:
            raise StateXInputError(f"--every must be a positive integer (one expanded layer in every k), got {every}")
        return list(range(0, num_layers, every))
    step = max(1, num_layers // count)
    return list(range(0, num_layers, step))[:count]
