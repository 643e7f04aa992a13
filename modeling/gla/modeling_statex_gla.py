"""StateX GLA: flash-linear-attention's GLA with some layers' heads merged into one larger state.

Parameter names and shapes equal fla's ``GLAForCausalLM``, so an fla checkpoint loads unchanged;
a layer listed in ``config.statex_layers`` runs its token mixer with ``statex_num_heads`` heads
(same projections, a state ``num_heads / statex_num_heads`` times larger).
"""

from __future__ import annotations

import math

import torch
from statex_hf.kernels import dispatch
from statex_hf.kernels.gla.naive import gla_log_decay
from statex_hf.kernels.linear.row_norm import RowNorm
from statex_hf.modeling.cache import conv_state, recurrent_state, store_conv_state, store_recurrent_state
from statex_hf.modeling.decode_linear import (
    DecodeLinear,
    fused_swiglu,
    hooked,
    norms_go_into_products,
    one_launch,
    plus_residual,
    swiglu_of,
)
from statex_hf.modeling.gla.configuration_statex_gla import StateXGLAConfig
from statex_hf.modeling.normed_sums import add_and_normalize, link_next_norms, take_normed_sum
from statex_hf.modeling.recurrent_model import StateXRecurrentForCausalLM, StateXRecurrentModel
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

try:  # transformers >= 5: init functions that skip weights already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # pragma: no cover
    from torch.nn import init


# fla's GatedLinearAttention constants (not part of GLAConfig).
GATE_LOGIT_NORMALIZER = 16
GATE_LOW_RANK_DIM = 16


class StateXGLARMSNorm(nn.Module):
    """RMSNorm over the last dimension, computed in fp32; optionally followed by a swish gate."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, elementwise_affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size)) if elementwise_affine else None

    def forward(self, hidden_states: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        normed = take_normed_sum(self, hidden_states) if gate is None else None
        if normed is not None:  # `residual_add` normalized this very sum
            return normed
        # (rms_norm(x) * weight * silu(gate)) in fp32, cast to x's dtype once: one Triton kernel each way on
        # CUDA, torch's ops on CPU. (A layer's decode step normalizes three times; the two block norms run inside
        # the products that read them at one row (``row_norm_of``), inside the add's kernel at more
        # (``residual_add``), so this launches only the output gate's.)
        return dispatch.gated_rmsnorm(
            hidden_states, gate, self.weight, self.eps, hidden_states.shape[-1], norm_before_gate=True
        )

    def residual_add(self, residual: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """``residual + update``, a block's residual connection that this norm reads next.

        Where one kernel can also normalize the sum (``dispatch.one_launch_add_rmsnorm``: CUDA, no gradient; this
        norm without hooks; outside ``torch.inference_mode``), it does, and this norm's next call with the returned
        tensor, unchanged, returns that result (bit for bit the norm it would compute) instead of launching the
        norm (``modeling/normed_sums.py``): one kernel for the add and the norm where torch runs two. Everywhere
        else (training, CPU, a hooked norm) torch's add.
        """
        summed = add_and_normalize(
            self, lambda: dispatch.one_launch_add_rmsnorm(residual, update, self.weight, self.eps)
        )
        return residual + update if summed is None else summed


def row_norm_of(norm: nn.Module) -> RowNorm | None:
    """``norm`` for the one-row products that read its output to compute as they load their input
    (``kernels/linear/row_norm.py``), where calling it runs just its kernel: a ``StateXGLARMSNorm`` itself (not a
    subclass, nor a module put in its place by a wrapping tool, which has no such method), unhooked, with a weight;
    ``None`` otherwise (the caller calls it)."""
    if type(norm) is StateXGLARMSNorm and not hooked(norm) and norm.weight is not None:
        return RowNorm(norm.weight, norm.eps)
    return None


class StateXGLAMLP(nn.Module):
    """SwiGLU MLP with fla's ``GatedMLP`` names and default width."""

    def __init__(self, config: StateXGLAConfig) -> None:
        super().__init__()
        intermediate_size = config.intermediate_size
        if intermediate_size is None:
            ratio = 4 if config.hidden_ratio is None else config.hidden_ratio
            intermediate_size = int(config.hidden_size * ratio * 2 / 3)
            intermediate_size = 256 * ((intermediate_size + 255) // 256)
        if config.hidden_act not in ("swish", "silu"):
            raise ValueError(f"hidden_act={config.hidden_act!r} is not supported; StateX GLA uses 'swish'")
        self.gate_proj = DecodeLinear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = DecodeLinear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = DecodeLinear(intermediate_size, config.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        input_norm: StateXGLARMSNorm | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``down(silu(gate(x)) * up(x))``; with ``input_norm`` / ``residual`` (a block's one-row decode step,
        ``norms_go_into_products``) ``residual + self(input_norm(x))``, the norm computed in the gate and up
        products' launch and the add in the down product's where their one-row kernels apply."""
        # silu(gate(x)) * up(x): at one row on CUDA without gradients (decode; at a batch's rows too with
        # dispatch.GROUPED_MAX_ROWS raised) one launch for both products and the SwiGLU, else the two products and
        # dispatch.swiglu (one kernel without gradients on CUDA).
        act = None
        if input_norm is not None:
            norm = row_norm_of(input_norm)
            act = None if norm is None else fused_swiglu(hidden_states, self.gate_proj, self.up_proj, norm)
            if act is None:
                hidden_states = input_norm(hidden_states)
        if act is None:
            act = swiglu_of(hidden_states, self.gate_proj, self.up_proj)
        return self.down_proj(act) if residual is None else plus_residual(self.down_proj, act, residual)


class StateXGLATokenMixer(nn.Module):
    """Gated linear attention with ``config.layer_num_heads(layer_idx)`` heads.

    Per head: ``S_t = diag(exp(gk_t)) S_{t-1} + k_t^T v_t``, ``o_t = (q_t / sqrt(dk)) S_t``, then a
    per-head RMSNorm over the head's ``dv`` channels with a swish output gate. Merging heads regroups the
    projected channels and keeps every projection's shape; only the output norm's weight widens, from
    ``value_dim / num_heads`` to ``value_dim / statex_num_heads``.
    """

    def __init__(self, config: StateXGLAConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.layer_num_heads(layer_idx)
        self.num_kv_heads = self.num_heads if config.num_kv_heads is None else config.num_kv_heads
        self.num_kv_groups = self.num_heads // self.num_kv_heads
        self.key_dim, self.value_dim = config.key_dim, config.value_dim
        self.head_k_dim = self.key_dim // self.num_heads
        self.head_v_dim = self.value_dim // self.num_heads
        self.use_short_conv = config.use_short_conv
        self.use_output_gate = config.use_output_gate
        self.clamp_min = config.clamp_min
        self.feature_map = ACT2FN[config.feature_map] if config.feature_map is not None else None
        hidden = config.hidden_size
        key_dim_per_group = self.key_dim // self.num_kv_groups
        value_dim_per_group = self.value_dim // self.num_kv_groups

        self.q_proj = DecodeLinear(hidden, self.key_dim, bias=False)
        self.k_proj = DecodeLinear(hidden, key_dim_per_group, bias=False)
        self.v_proj = DecodeLinear(hidden, value_dim_per_group, bias=False)
        if self.use_output_gate:
            self.g_proj = DecodeLinear(hidden, self.value_dim, bias=False)
        if self.use_short_conv:
            for name, dim in (("q", self.key_dim), ("k", key_dim_per_group), ("v", value_dim_per_group)):
                conv = nn.Conv1d(dim, dim, config.conv_size, groups=dim, bias=False, padding=config.conv_size - 1)
                setattr(self, f"{name}_conv1d", conv)
        self.gk_proj = nn.Sequential(
            DecodeLinear(hidden, GATE_LOW_RANK_DIM, bias=False),
            DecodeLinear(GATE_LOW_RANK_DIM, key_dim_per_group, bias=True),
        )
        self.o_proj = DecodeLinear(self.value_dim, hidden, bias=False)
        # fla names the output norm by whether it is fused with the swish gate; keep its names.
        self.fuse_norm_and_gate = config.hidden_act == "swish" and config.fuse_norm and self.use_output_gate
        norm = StateXGLARMSNorm(self.head_v_dim, eps=config.norm_eps, elementwise_affine=config.elementwise_affine)
        if self.fuse_norm_and_gate:
            self.g_norm_swish_gate = norm
        else:
            self.g_norm = norm
            self.gate_fn = ACT2FN[config.hidden_act]

    def _short_conv(self, state_idx: int, name: str, x: torch.Tensor, cache: Cache | None, cu_seqlens):
        conv = getattr(self, f"{name}_conv1d")
        window = conv_state(cache, self.layer_idx, state_idx) if cache is not None else None
        x, window = dispatch.causal_conv1d(
            x, conv.weight.squeeze(1), conv.bias, "silu", window, cache is not None, cu_seqlens=cu_seqlens
        )
        if cache is not None:
            store_conv_state(cache, self.layer_idx, window, state_idx)
        return x

    def first_products(self) -> list[nn.Module]:
        """The projections of the mixer's input: q, k, v, the gate's low-rank down and g (one launch at one row, and
        at a batch's rows with ``dispatch.GROUPED_MAX_ROWS`` raised)."""
        return [
            self.q_proj,
            self.k_proj,
            self.v_proj,
            self.gk_proj[0],
            *([self.g_proj] if self.use_output_gate else []),
        ]

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        cu_seqlens: torch.LongTensor | None = None,
        input_norm: StateXGLARMSNorm | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The mixer's output; with ``input_norm`` / ``residual`` (a block's one-row decode step,
        ``norms_go_into_products``) ``residual + self(input_norm(hidden_states))``, the norm computed in the first
        products' launch and the add in ``o_proj``'s where their one-row kernels apply."""
        shape = hidden_states.shape
        if cu_seqlens is not None:  # packed documents run as one row
            hidden_states = hidden_states.reshape(1, -1, shape[-1])
        batch, seqlen, _ = hidden_states.shape
        use_cache = cache is not None
        mask = None if attention_mask is None else attention_mask[:, -seqlen:, None].to(hidden_states.dtype)
        # A one-row decode step takes q, k, v, the gate's low-rank down and g as one grouped GEMV launch, with
        # the block's norm of its input where it is handed one (a batch's step too, without the norm, with
        # dispatch.GROUPED_MAX_ROWS raised).
        group = self.first_products()
        fused = None
        if input_norm is not None:
            norm = None if mask is not None or hooked(self.gk_proj) else row_norm_of(input_norm)
            fused = None if norm is None else one_launch(hidden_states, group, norm)
            if fused is None:
                hidden_states = input_norm(hidden_states)
        if mask is not None:
            # A padding token must neither write nor decay the state (nor enter a convolution window).
            hidden_states = hidden_states * mask
        if fused is None and not hooked(self.gk_proj):
            fused = one_launch(hidden_states, group)
        if fused is None:
            q, k, v = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
        else:
            q, k, v, gk_down, *fused_g = fused
        if self.use_short_conv:
            q = self._short_conv(0, "q", q, cache, cu_seqlens)
            k = self._short_conv(1, "k", k, cache, cu_seqlens)
            v = self._short_conv(2, "v", v, cache, cu_seqlens)
        gk = self.gk_proj(hidden_states) if fused is None else self.gk_proj[1](gk_down)

        q = q.view(batch, seqlen, self.num_heads, self.head_k_dim)
        k = k.view(batch, seqlen, self.num_kv_heads, self.head_k_dim)
        gk = gk.view(batch, seqlen, self.num_kv_heads, self.head_k_dim)
        v = v.view(batch, seqlen, self.num_kv_heads, self.head_v_dim)
        if self.num_kv_groups > 1:
            k, gk, v = (x.repeat_interleave(self.num_kv_groups, dim=2) for x in (k, gk, v))
        if self.feature_map is not None:
            q, k = self.feature_map(q), self.feature_map(k)
        # Without a mask gk stays the raw gate logits: dispatch.gla turns them into the log decay, inside the
        # decode kernel on CUDA (no elementwise kernels per step) or with gla_log_decay's torch ops elsewhere.
        gate_kwargs = {"gate_logit_normalizer": GATE_LOGIT_NORMALIZER, "gate_clamp_min": self.clamp_min}
        if mask is not None:
            k = k * mask[..., None]
            gk = gla_log_decay(gk, GATE_LOGIT_NORMALIZER, self.clamp_min) * mask[..., None]
            gate_kwargs = {}

        initial_state = recurrent_state(cache, self.layer_idx) if use_cache else None
        # A cached state is updated in place: a decode step reads and writes it once, at a fixed address.
        o, final_state = dispatch.gla(
            q,
            k,
            v,
            gk,
            initial_state=initial_state,
            output_final_state=use_cache,
            cu_seqlens=cu_seqlens,
            final_state=initial_state,
            **gate_kwargs,
        )
        if use_cache:
            store_recurrent_state(cache, self.layer_idx, final_state)

        if self.use_output_gate:
            g = self.g_proj(hidden_states) if fused is None else fused_g[0]
            g = g.view(batch, seqlen, self.num_heads, self.head_v_dim)
            if self.fuse_norm_and_gate:
                o = self.g_norm_swish_gate(o, g)
            else:
                o = self.g_norm(o) * self.gate_fn(g)
        else:
            o = self.g_norm(o)
        o = o.reshape(batch, seqlen, self.value_dim)
        if residual is None:
            return self.o_proj(o).view(shape)
        return plus_residual(self.o_proj, o, residual.view(batch, seqlen, -1)).view(shape)


class StateXGLABlock(GradientCheckpointingLayer):
    """Pre-norm residual block: token mixer (``attn``) then SwiGLU MLP, fla's names."""

    def __init__(self, config: StateXGLAConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = StateXGLARMSNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = StateXGLATokenMixer(config, layer_idx)
        self.mlp_norm = StateXGLARMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = StateXGLAMLP(config)

    def _sublayers(self) -> tuple[nn.Module, ...]:
        """The modules whose hooks keep this block's norms apart (the mixer's gate projection is called as a whole)."""
        return self.attn, self.mlp, self.attn.gk_proj

    def _end_products(self) -> list[nn.Module]:
        """The projections whose one-row launches take this block's norms (the first of each sublayer) and adds (the
        last)."""
        mlp = self.mlp
        return [*self.attn.first_products(), self.attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        cu_seqlens: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        if (
            type(self.attn) is StateXGLATokenMixer
            and type(self.mlp) is StateXGLAMLP
            and norms_go_into_products(hidden_states, hidden_states.dtype, self._sublayers(), self._end_products())
        ):
            # A one-row decode step: each sublayer normalizes its input in its first products' launch and adds its
            # output to the residual stream in its last (kernels/linear/row_norm.py): no norm or add of their own.
            hidden_states = self.attn(
                hidden_states, attention_mask, cache, cu_seqlens, input_norm=self.attn_norm, residual=hidden_states
            )
            return self.mlp(hidden_states, input_norm=self.mlp_norm, residual=hidden_states)
        # Each residual add is handed to the norm that reads the sum next (this block's mlp_norm, then the next
        # block's attn_norm or the model's final norm): on a decode step of more rows one kernel adds and normalizes.
        update = self.attn(self.attn_norm(hidden_states), attention_mask, cache, cu_seqlens)
        hidden_states = self.mlp_norm.residual_add(hidden_states, update)
        update = self.mlp(self.mlp_norm(hidden_states))
        next_norm = self.__dict__.get("next_norm")
        return hidden_states + update if next_norm is None else next_norm.residual_add(hidden_states, update)


class StateXGLAPreTrainedModel(PreTrainedModel):
    config_class = StateXGLAConfig
    config: StateXGLAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["StateXGLABlock"]
    _is_stateful = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """fla's GLA initialization (normal(0, initializer_range) weights, zero biases, unit norms), except
        for the short convolutions: PyTorch's own Conv1d init, as transformers' Mamba2 uses for its conv1d.

        fla draws the convolutions like the linear layers, normal(0, 0.02). Below a width of ~1k that shrinks
        q, k and v ~50x, the mixer output falls under the output norm's eps (RMS ~1e-6 vs 1e-3 at width
        256), so the norm cannot rescale it and a model trained from scratch (or a StateX layer re-initialized
        by ``--init reinit-init-weights``) starts with silent token mixers that never learn recall.
        """
        std = self.config.initializer_range
        if isinstance(module, nn.Conv1d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))  # nn.Conv1d.reset_parameters' weight init
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, StateXGLARMSNorm) and module.weight is not None:
            init.ones_(module.weight)


class StateXGLAModel(StateXGLAPreTrainedModel, StateXRecurrentModel):
    output_class = BaseModelOutputWithPast
    final_norm_name = "norm"
    hidden_states_are_layer_inputs = True  # fla's convention

    def __init__(self, config: StateXGLAConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([StateXGLABlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = StateXGLARMSNorm(config.hidden_size, eps=config.norm_eps)
        # The norm that reads each block's output (``StateXGLABlock.forward``; ``modeling/normed_sums.py``).
        link_next_norms(self.layers, [block.attn_norm for block in self.layers], self.norm)
        self.gradient_checkpointing = False
        self.post_init()

    def final_row_norm(self, product_dtype: torch.dtype) -> RowNorm | None:
        """The final norm as the block norms go into products (its output in the stream's dtype: products of any
        other dtype do not take it)."""
        return row_norm_of(self.norm)


class StateXGLAForCausalLM(StateXGLAPreTrainedModel, StateXRecurrentForCausalLM):
    output_class = CausalLMOutputWithPast
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: StateXGLAConfig) -> None:
        super().__init__(config)
        self.model = StateXGLAModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = DecodeLinear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


__all__ = ["StateXGLAForCausalLM", "StateXGLAModel", "StateXGLAPreTrainedModel"]
