"""The cache's name in transformers, which became ``cache`` in transformers 5.24.

From 5.24 on, the cache is ``cache`` everywhere: the forward argument, the model outputs' field and
``generate``'s model kwargs; ``past_key_values`` (``cache_params`` for Mamba models) remain as deprecated
aliases. Before 5.24 those older names were the only ones. The StateX models take ``cache`` and still
accept their older name; their outputs hold the cache in the field the installed transformers reads,
so ``generate`` carries it from step to step on either side of the rename.
"""

from __future__ import annotations

import dataclasses

from statex_hf.modeling.cache import StateXRecurrentCache
from transformers.utils import ModelOutput


def output_cache_field(output_class: type[ModelOutput]) -> str:
    """The field of a transformers output class that holds the cache, in the installed transformers."""
    names = {field.name for field in dataclasses.fields(output_class)}
    return next(name for name in ("cache", "past_key_values", "cache_params") if name in names)


def cache_argument(cache: StateXRecurrentCache | None, kwargs: dict, legacy_name: str) -> StateXRecurrentCache | None:
    """The cache a forward was given: ``cache``, or the same under its older name ``legacy_name``
    (taken out of ``kwargs``, so it is not passed on twice)."""
    legacy = kwargs.pop(legacy_name, None)
    if legacy is None:
        return cache
    if cache is not None:
        raise ValueError(f"The cache was given twice, as `cache` and as `{legacy_name}`: pass it once, as `cache`.")
    return legacy
