"""``generate`` support shared by the StateX models: transformers' input preparation, fitted to a recurrent cache.

The prompt is fed once, then one token per step; the cache (a :class:`StateXCache`, made by the first
forward) carries the rest. Everything else ``generate`` passes (``output_hidden_states``,
``output_attentions``, ``use_cache``, ``logits_to_keep``, ...) reaches the forward, as for transformers'
own models. On CUDA the one-token steps run as captured CUDA graphs (``modeling/decode_graphs.py``), and the
loop checks for its end one step late, so the host never waits for the GPU (``modeling/stop_check.py``).
"""

from __future__ import annotations

import inspect

import torch
from statex_hf.modeling.cache import tokens_seen
from statex_hf.modeling.decode_graphs import compile_ahead_wanted, decode_graphs_for, keywords_served
from statex_hf.modeling.stop_check import deferred_stop_checks
from transformers import GenerationMixin
from transformers.generation import utils as generation_utils
from transformers.utils import logging

logger = logging.get_logger(f"transformers.{__name__}")

# The cache's older names: `past_key_values` (fla, most of transformers) and `cache_params` (Mamba); both became
# `cache` in transformers 5.24, and `generate` before 5.24 passes them under the old names.
LEGACY_CACHE_NAMES = ("past_key_values", "cache_params")
# What transformers' input preparation never forwards to a decode step's forward (``position_ids`` too, here).
_NOT_FORWARDED = frozenset(
    ("labels", "next_sequence_length", "position_ids")
    + tuple(getattr(generation_utils, "MULTIMODAL_INPUTS_TO_DROP_OUTSIDE_PREFILL", ()))
)
# Inputs transformers' preparation slices to the step's tokens: a decode step with any of them takes that path.
_SLICED_INPUTS = ("token_type_ids", "mm_token_type_ids", "moe_mm_token_type_ids", "decoder_attention_mask")


def _tokens_not_in_cache(
    cache, input_ids: torch.LongTensor, inputs_embeds: torch.Tensor | None, attention_mask: torch.Tensor | None
) -> int | None:
    """How many trailing tokens of the input the cache has not seen, when the input is the whole sequence.

    As transformers decides it: embeddings are always the whole sequence; ids are when the attention
    mask covers exactly them (or there is no mask). ``None`` when nothing needs slicing.
    """
    seen = tokens_seen(cache)
    if not seen:
        return None
    if inputs_embeds is not None:
        return inputs_embeds.shape[1] - seen
    if attention_mask is None or attention_mask.shape[-1] == input_ids.shape[1]:
        return input_ids.shape[1] - seen
    return None  # only the new tokens were given, with a mask over the whole sequence


def _check_new_tokens(cache, new_tokens: int) -> None:
    if new_tokens <= 0:
        raise ValueError(
            f"The cache has already absorbed {tokens_seen(cache)} tokens and the input holds no token after "
            "them: to continue from a cache, pass the whole sequence (the earlier tokens and the new ones), or "
            "only the new tokens with an attention_mask over the whole sequence."
        )


class StateXGenerationMixin(GenerationMixin):
    def _sample(self, *args, **kwargs):
        """transformers' greedy / sampling loop, its stop check deferred by a step on CUDA (``modeling/stop_check.py``;
        on no device with ``synced_gpus``, whose peers must agree on every step, nor with a cache passed in:
        ``generate`` makes none for these models before the loop, so one there is the user's, and transformers before
        5.24 marks it as the user's only under the one name it expects for the class)."""
        passed_in = any(kwargs.get(name) is not None for name in ("cache", *LEGACY_CACHE_NAMES))
        self._compile_decode_steps_ahead(*args, **kwargs)
        with deferred_stop_checks(every_step=bool(kwargs.get("synced_gpus")) or passed_in):
            return super()._sample(*args, **kwargs)

    def _compile_decode_steps_ahead(self, *args, **kwargs) -> None:
        """Where the loop's decode steps will replay as CUDA graphs (``modeling/decode_graphs.py``), start compiling
        their kernels on threads now, while the prompt's forward runs (``DecodeGraphs.compile_ahead``): a first
        capture would otherwise wait for them. Nothing is started where no step follows the prompt's token or
        the steps run eagerly (a keyword the graphs do not serve), nor with ``STATEX_COMPILE_AHEAD=0``. It only
        saves time: if it fails, ``generate`` goes on as without it (the capture compiles what it needs)."""
        if not compile_ahead_wanted():
            return
        try:
            bound = inspect.signature(GenerationMixin._sample).bind(self, *args, **kwargs).arguments
            input_ids, config = bound["input_ids"], bound["generation_config"]
            model_kwargs = bound.get("model_kwargs", {})
            if not self._valid_auto_compile_criteria(model_kwargs, config):
                return
            if config.max_length is None or config.max_length - input_ids.shape[1] < 2:
                return
            prompt_only = ("attention_mask", "inputs_embeds", "cache", *LEGACY_CACHE_NAMES, *_NOT_FORWARDED)
            step_kwargs = {key: value for key, value in model_kwargs.items() if key not in prompt_only}
            logits_to_keep = model_kwargs.get("logits_to_keep", 0)
            if not keywords_served(step_kwargs) or not isinstance(logits_to_keep, int):
                return
            decode_graphs_for(self).compile_ahead(input_ids.shape[0], self.device, logits_to_keep)
        except Exception as error:  # noqa: BLE001 - a time saving that failed: the capture still compiles
            logger.warning_once(f"The decode step's kernels were not compiled ahead ({error}).")

    def _validate_model_kwargs(self, model_kwargs: dict) -> None:
        # The forward takes the cache under its older names too (``recurrent_model.accepts_legacy_cache_names``), which
        # its signature does not show: transformers before 5.24 passes them on as they are, and would reject
        # ``generate(ids, past_key_values=cache)`` as an unused argument (5.24 on renames them before this check).
        # Two names at once are an error, as in the forward: ``prepare_inputs_for_generation`` would keep one of them.
        given = [name for name in ("cache", *LEGACY_CACHE_NAMES) if model_kwargs.get(name) is not None]
        if len(given) > 1:
            names = " and ".join(f"`{name}`" for name in given)
            raise ValueError(f"generate got the cache under {names}: pass it once, as `cache`")
        super()._validate_model_kwargs({k: v for k, v in model_kwargs.items() if k not in LEGACY_CACHE_NAMES})

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # The forward makes its own StateXCache on the first call, on every transformers version (a
        # DynamicCache made by generate before 5.2x has no token count for recurrent layers).
        return False

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache=None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ) -> dict:
        for name in LEGACY_CACHE_NAMES:  # generate before transformers 5.24 hands the cache back under these
            legacy = kwargs.pop(name, None)
            cache = cache if cache is not None else legacy
        if not is_first_iteration and self._is_plain_decode_step(input_ids, next_sequence_length, cache, kwargs):
            return self._decode_step_inputs(input_ids, next_sequence_length, cache, kwargs)
        if is_first_iteration and cache is not None:
            # Continuing from a cache (transformers 5.17 slices only caches it calls `past_key_values`).
            if next_sequence_length is None:
                next_sequence_length = _tokens_not_in_cache(cache, input_ids, inputs_embeds, attention_mask)
            if next_sequence_length is not None:
                _check_new_tokens(cache, next_sequence_length)
        # Positions only mark packed documents in these models; generate's (counted over the padding) are not that.
        kwargs.pop("position_ids", None)
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        for name in LEGACY_CACHE_NAMES:
            model_inputs.pop(name, None)
        model_inputs["cache"] = cache
        if kwargs.get("use_cache", True) and not is_first_iteration:
            # A decode step's one token is never padding (as transformers' Mamba2 decides).
            model_inputs.pop("attention_mask", None)
        return model_inputs

    def _is_plain_decode_step(self, input_ids, next_sequence_length: int | None, cache, kwargs: dict) -> bool:
        """Whether this is a decode step from ids that :meth:`_decode_step_inputs` prepares as transformers would."""
        return (
            next_sequence_length is not None
            and cache is not None
            and kwargs.get("use_cache", True)
            and isinstance(input_ids, torch.Tensor)
            and input_ids.device == self.get_input_embeddings().weight.device
            and not any(kwargs.get(name) is not None for name in _SLICED_INPUTS)
        )

    def _decode_step_inputs(self, input_ids: torch.LongTensor, next_sequence_length: int, cache, kwargs: dict) -> dict:
        """A decode step's inputs, as transformers' ``prepare_inputs_for_generation`` and the rules above make them.

        The same keys and values, made in a few microseconds: ``generate`` waits for the GPU once a token (its stop
        check), and everything between that wait and the next step's launch leaves the GPU idle, which at one
        sequence is a measurable share of each token (benchmarks/profile_generate_loop.py). transformers walks the
        model's parameters and the cache's layers there and copies the ids; the last ids are passed as a view here
        (the forward only reads them, and ``generate`` makes a new ``input_ids`` each step)."""
        model_inputs = {"input_ids": input_ids[:, -next_sequence_length:], "cache": cache}
        for key, value in kwargs.items():
            if key not in _NOT_FORWARDED:
                model_inputs.setdefault(key, value)
        return model_inputs
