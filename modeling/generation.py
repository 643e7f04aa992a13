"""``generate`` support shared by the StateX models: the model owns its recurrent cache."""

from __future__ import annotations

import torch
from transformers import GenerationMixin


class StateXGenerationMixin(GenerationMixin):
    """Feeds the whole prompt once, then one new token per step; the cache carries the rest.

    ``generate`` hands the cache back as ``cache`` (transformers >= 5.24) or under the model's older
    name ``legacy_cache_name`` (``cache_params`` for classes whose name contains "mamba", else
    ``past_key_values``); the forward always gets it as ``cache``.
    """

    legacy_cache_name = "past_key_values"

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # A DynamicCache grows with the sequence; these models keep a fixed-size state per layer.
        return False

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool = True,
        logits_to_keep: int | None = None,
        **kwargs,
    ) -> dict:
        cache = kwargs.get("cache")
        if cache is None:
            cache = kwargs.get(self.legacy_cache_name)
        model_inputs: dict = {}
        if cache is not None and cache.seen_tokens > 0:
            model_inputs["input_ids"] = input_ids[:, -1:].contiguous()
        elif inputs_embeds is not None:
            model_inputs["inputs_embeds"] = inputs_embeds
        else:
            model_inputs["input_ids"] = input_ids.contiguous()
        model_inputs["cache"] = cache
        model_inputs["use_cache"] = use_cache
        model_inputs["attention_mask"] = attention_mask
        if logits_to_keep is not None:
            model_inputs["logits_to_keep"] = logits_to_keep
        return model_inputs
