"""The ``…Model`` and ``…ForCausalLM`` forwards every StateX family shares (fla's ``FLAModel`` / ``FLAForCausalLM``).

A family's ``…Model`` builds ``embeddings``, ``layers`` (its blocks, each called as
``block(hidden_states, attention_mask, cache, cu_seqlens)``) and a final norm, and names its output
class; its ``…ForCausalLM`` builds the decoder at ``base_model_prefix`` and ``lm_head``. Everything
else (cache, packing, padding, hidden states, logits, loss, generation) is here, once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from statex_hf.kernels.linear.row_norm import RowNorm
from statex_hf.modeling.cache import count_tokens
from statex_hf.modeling.causal_lm import causal_lm_head
from statex_hf.modeling.decode_graphs import decode_graphs_for, graphs_wanted
from statex_hf.modeling.decode_linear import final_norm_goes_into_head
from statex_hf.modeling.generation import LEGACY_CACHE_NAMES, StateXGenerationMixin
from statex_hf.modeling.recurrent_run import start_recurrent_run
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput
from transformers.utils.deprecation import deprecate_kwarg

_CACHE_RENAMED_IN = "5.40.0"  # when transformers drops the old names too


def accepts_legacy_cache_names(forward):
    """``forward`` also takes the cache as ``past_key_values`` or ``cache_params``; both names at once is an error."""
    for old_name in LEGACY_CACHE_NAMES:
        forward = deprecate_kwarg(old_name, _CACHE_RENAMED_IN, new_name="cache", raise_if_both_names=True)(forward)
    return forward


def output_cache_field(output_class: type[ModelOutput]) -> str:
    """The field of a transformers output class that holds the cache: ``cache`` from transformers 5.24
    on, ``past_key_values`` or ``cache_params`` before (what that version's ``generate`` reads)."""
    names = {field.name for field in dataclasses.fields(output_class)}
    return next(name for name in ("cache", *LEGACY_CACHE_NAMES) if name in names)


class StateXRecurrentModel(PreTrainedModel):
    """Embeddings, the recurrent blocks and a final norm.

    Subclasses set:
        output_class: the ``ModelOutput`` returned (``last_hidden_state``, ``hidden_states`` and the cache).
        final_norm_name: the attribute holding the final norm (named as in the source checkpoints).
        hidden_states_are_layer_inputs: ``output_hidden_states`` gives each layer's input, then the final
            output (fla's convention) when ``True``; each layer's output, then the final output
            (transformers' Mamba2) when ``False``. Either way they are the tensors the forward computed
            with, on the autograd path.
        final_row_norm: the final norm as a one-row product computes it (``kernels/linear/row_norm.py``), for the
            causal LM's head to take it; without one the decoder always runs it.
    """

    output_class: type[ModelOutput]
    final_norm_name = "norm"
    hidden_states_are_layer_inputs = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "output_class" in cls.__dict__:  # found once, not in the forward (a compiled graph cannot inspect classes)
            cls.cache_output_field = output_cache_field(cls.output_class)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def final_row_norm(self, product_dtype: torch.dtype) -> RowNorm | None:
        """The final norm as the one-row products of ``product_dtype`` that read its output compute it as they load
        the residual stream, where calling it runs just its kernel; ``None`` here (the family's model says)."""
        return None

    @accepts_legacy_cache_names
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        apply_final_norm: bool = True,
        **kwargs,
    ) -> tuple | ModelOutput:
        """``apply_final_norm=False``: ``last_hidden_state`` is the residual stream before the final norm (the causal
        LM's one-row decode step, whose head computes the norm in its own launch)."""
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        run = start_recurrent_run(
            self, input_ids, inputs_embeds, cache, use_cache, attention_mask, position_ids, kwargs
        )
        hidden_states, cache = run.hidden_states, run.cache
        all_hidden_states = () if output_hidden_states else None
        for layer in self.layers:
            if output_hidden_states and self.hidden_states_are_layer_inputs:
                all_hidden_states += (hidden_states,)
            hidden_states = layer(hidden_states, run.attention_mask, cache, run.cu_seqlens)
            if output_hidden_states and not self.hidden_states_are_layer_inputs:
                all_hidden_states += (hidden_states,)
        if apply_final_norm:
            hidden_states = getattr(self, self.final_norm_name)(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        if cache is not None:
            count_tokens(cache, hidden_states.shape[1])

        if not return_dict:
            return tuple(x for x in (hidden_states, cache, all_hidden_states) if x is not None)
        return self.output_class(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            **{self.cache_output_field: cache},
        )


class StateXRecurrentForCausalLM(PreTrainedModel, StateXGenerationMixin):
    """A StateX decoder at ``base_model_prefix`` with a language-model head.

    Subclasses set ``output_class`` (``loss``, ``logits``, ``hidden_states`` and the cache).
    """

    output_class: type[ModelOutput]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "output_class" in cls.__dict__:
            cls.cache_output_field = output_cache_field(cls.output_class)

    def get_decoder(self) -> nn.Module:
        return getattr(self, self.base_model_prefix)

    def _final_norm_for_head(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        labels: torch.LongTensor | None,
        output_hidden_states: bool | None,
        logits_to_keep: int | torch.Tensor,
    ) -> RowNorm | None:
        """The decoder's final norm for the head to compute in its launch, where this forward is a one-row decode
        step that leaves it there (``decode_linear.final_norm_goes_into_head``): logits only, no hidden states
        returned (the last is the norm's output); ``None`` otherwise, and the decoder runs its norm."""
        decoder, inputs = self.get_decoder(), input_ids if input_ids is not None else inputs_embeds
        if (
            not final_norm_goes_into_head(decoder, self.lm_head)  # first: the switch, gradients, compiling
            or inputs is None
            or inputs.dim() < 2
            or math.prod(inputs.shape[:2]) != 1
            or labels is not None
            or not isinstance(logits_to_keep, int)
            or (output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states)
        ):
            return None
        return decoder.final_row_norm(self.lm_head.weight.dtype)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.get_decoder().embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.get_decoder().embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def _valid_auto_compile_criteria(self, model_kwargs: dict, generation_config) -> bool:
        """``generate`` asks whether to run its decode steps through ``get_compiled_call``: on CUDA, yes,
        as CUDA graphs, unless ``disable_compile=True`` (``modeling/decode_graphs.py``)."""
        return graphs_wanted(self, generation_config)

    def get_compiled_call(self, compile_config=None) -> Callable:
        """The decode step replayed as CUDA graphs, any other call eager; ``compile_config`` is not used."""
        return decode_graphs_for(self)

    @accepts_legacy_cache_names
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> tuple | ModelOutput:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        decoder = self.get_decoder()
        head_norm = self._final_norm_for_head(input_ids, inputs_embeds, labels, output_hidden_states, logits_to_keep)
        outputs = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            position_ids=position_ids,
            apply_final_norm=head_norm is None,
            **kwargs,
        )
        loss, logits = causal_lm_head(
            self, outputs.last_hidden_state, labels, logits_to_keep, final_norm=head_norm, **kwargs
        )
        cache = getattr(outputs, decoder.cache_output_field)
        if not return_dict:
            output = tuple(x for x in (logits, cache, outputs.hidden_states) if x is not None)
            return (loss, *output) if loss is not None else output
        return self.output_class(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            **{self.cache_output_field: cache},
        )
