"""Checks shared by the StateX configs. Each error names the field, the value and the fix."""

from __future__ import annotations


def check_statex_layers(statex_layers, num_hidden_layers: int) -> list[int]:
    """Return ``statex_layers`` as a sorted list of ints after checking range and uniqueness."""
    if statex_layers is None:
        return []
    if isinstance(statex_layers, int) or not all(isinstance(i, int) and not isinstance(i, bool) for i in statex_layers):
        raise ValueError(
            f"statex_layers must be a list of layer indices (ints), got {statex_layers!r}; e.g. statex_layers=[0, 6]"
        )
    layers = list(statex_layers)
    out_of_range = [i for i in layers if not 0 <= i < num_hidden_layers]
    if out_of_range:
        raise ValueError(
            f"statex_layers: layer index {out_of_range[0]} is out of range for num_hidden_layers={num_hidden_layers}; "
            f"use indices 0..{num_hidden_layers - 1}"
        )
    if len(set(layers)) != len(layers):
        duplicates = sorted({i for i in layers if layers.count(i) > 1})
        raise ValueError(f"statex_layers: layer {duplicates[0]} is listed twice; list each layer once")
    return sorted(layers)


def check_divides(field: str, heads: int, dim_name: str, dim: int) -> None:
    if heads < 1 or dim % heads != 0:
        raise ValueError(
            f"{field}={heads} does not divide {dim_name}={dim}; choose a head count that divides {dim_name}"
        )


def check_chunked_loss_size(chunked_loss_size: int | None) -> None:
    if chunked_loss_size is not None and chunked_loss_size < 1:
        raise ValueError(f"chunked_loss_size must be a positive number of tokens or None, got {chunked_loss_size}")
