"""StateX Mamba2: transformers' Mamba2 with a larger SSM state dimension N in some layers.

Parameter names and shapes equal transformers' ``Mamba2ForCausalLM``, except that a layer listed in
``config.statex_layers`` has ``statex_state_size`` B and C channels per group in ``in_proj`` and
``conv1d`` (and a ``[H, P, statex_state_size]`` state).
"""

from __future__ import annotations

import math

import torch
from statex_hf.kernels import dispatch
from statex_hf.kernels.linear.row_norm import RowNorm
from statex_hf.kernels.ssd.naive import discretize_dt
from statex_hf.modeling.cache import conv_state, recurrent_state, store_conv_state, store_recurrent_state
from statex_hf.modeling.decode_linear import DecodeLinear, hooked, normed_linear, norms_go_into_products, plus_residual
from statex_hf.modeling.mamba2.configuration_statex_mamba2 import StateXMamba2Config
from statex_hf.modeling.normed_sums import add_and_normalize, link_next_norms, take_normed_sum
from statex_hf.modeling.recurrent_model import StateXRecurrentForCausalLM, StateXRecurrentModel
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.mamba2.modeling_mamba2 import Mamba2CausalLMOutput, Mamba2Output

try:  # transformers >= 5: init functions that skip weights already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # pragma: no cover
    from torch.nn import init


class StateXMamba2RMSNorm(nn.Module):
    """RMSNorm in fp32; with ``group_size`` and a gate it is Mamba2's ``norm(y * silu(z))`` per group."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, group_size: int | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps
        self.group_size = hidden_size if group_size is None else group_size

    def forward(
        self, hidden_states: torch.Tensor, gate: torch.Tensor | None = None, input_dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """``input_dtype``: normalize ``hidden_states.to(input_dtype)`` (the kernel casts as it loads, where it can)."""
        normed = take_normed_sum(self, hidden_states, input_dtype) if gate is None else None
        if normed is not None:  # `residual_add` normalized this very sum, for a call with this input_dtype
            return normed
        return dispatch.gated_rmsnorm(
            hidden_states, gate, self.weight, self.variance_epsilon, self.group_size, input_dtype=input_dtype
        )

    def residual_add(
        self, residual: torch.Tensor, update: torch.Tensor, dtype: torch.dtype, input_dtype: torch.dtype | None
    ) -> torch.Tensor:
        """``residual.to(dtype) + update`` (``dispatch.residual_add``), a block's residual connection that this norm
        (one group, no gate: a block's norm or the final one) reads next, called with ``input_dtype``.

        Where one kernel can also normalize the sum (``dispatch.one_launch_add_rmsnorm``: CUDA, no gradient; this
        norm without hooks; outside ``torch.inference_mode``), it does, and this norm's next call with the returned
        tensor, unchanged, and that ``input_dtype`` returns that result (bit for bit the norm it would compute)
        instead of launching the norm (``modeling/normed_sums.py``). Everywhere else ``dispatch.residual_add``.
        """
        summed = None
        # The final norm's form (the fp32 stream normalized as it is, ``input_dtype`` None) matched the two kernels bit
        # for bit on an H100 at one row but not at 16 or more (a last-bit difference): it is fused at one row only.
        one_row = residual.numel() == residual.shape[-1]
        if self.group_size == residual.shape[-1] and (input_dtype is not None or one_row):
            summed = add_and_normalize(
                self,
                lambda: dispatch.one_launch_add_rmsnorm(
                    residual, update, self.weight, self.variance_epsilon, False, input_dtype, dtype
                ),
                input_dtype,
            )
        return dispatch.residual_add(residual, update, dtype) if summed is None else summed


def row_norm_of(norm: nn.Module, input_dtype: torch.dtype | None) -> RowNorm | None:
    """``norm``, called with ``input_dtype``, for the one-row products that read its output to compute as they load
    their input (``kernels/linear/row_norm.py``), where calling it runs just its kernel: a ``StateXMamba2RMSNorm``
    itself (not a subclass, nor a module put in its place by a wrapping tool, which has no such method), unhooked,
    one group (a block's norm); ``None`` otherwise (the caller calls it)."""
    if type(norm) is StateXMamba2RMSNorm and not hooked(norm) and norm.group_size == norm.weight.shape[0]:
        return RowNorm(norm.weight, norm.variance_epsilon, False, input_dtype)
    return None


class StateXMamba2Mixer(nn.Module):
    """Mamba2 token mixer (SSD) with state dimension ``config.layer_state_size(layer_idx)``.

    ``in_proj`` produces ``[z | x | B | C | dt]``; a causal depthwise conv runs over ``[x | B | C]``;
    per head ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, ``y_t = h_t C_t + D x_t``; then a gated
    RMSNorm with ``z`` and ``out_proj``.
    """

    def __init__(self, config: StateXMamba2Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.n_groups = config.n_groups
        self.ssm_state_size = config.layer_state_size(layer_idx)
        self.intermediate_size = int(config.expand * config.hidden_size)
        self.conv_dim = self.intermediate_size + 2 * self.n_groups * self.ssm_state_size
        self.activation = config.hidden_act
        self.chunk_size = config.chunk_size
        self.time_step_limit = tuple(config.time_step_limit)
        self.time_step_min, self.time_step_max = config.time_step_min, config.time_step_max
        self.time_step_floor = config.time_step_floor

        self.conv1d = nn.Conv1d(
            self.conv_dim,
            self.conv_dim,
            kernel_size=config.conv_kernel,
            groups=self.conv_dim,
            bias=config.use_conv_bias,
            padding=config.conv_kernel - 1,
        )
        self.in_proj = DecodeLinear(
            config.hidden_size, self.intermediate_size + self.conv_dim + self.num_heads, bias=config.use_bias
        )
        self.dt_bias = nn.Parameter(torch.ones(self.num_heads))
        self.A_log = nn.Parameter(torch.zeros(self.num_heads))
        self.norm = StateXMamba2RMSNorm(
            self.intermediate_size, eps=config.layer_norm_epsilon, group_size=self.intermediate_size // self.n_groups
        )
        self.D = nn.Parameter(torch.ones(self.num_heads))
        self.out_proj = DecodeLinear(self.intermediate_size, config.hidden_size, bias=config.use_bias)

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba2's initial ``A_log``, ``D`` and ``dt_bias`` (step sizes log-uniform in [min, max])."""
        heads = self.num_heads
        init.copy_(self.A_log, torch.log(torch.arange(1, heads + 1, dtype=torch.float32)))
        init.ones_(self.D)
        low, high = math.log(self.time_step_min), math.log(self.time_step_max)
        dt = torch.exp(torch.rand(heads) * (high - low) + low).clamp(min=self.time_step_floor)
        init.copy_(self.dt_bias, dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        cu_seqlens: torch.LongTensor | None = None,
        input_norm: StateXMamba2RMSNorm | None = None,
        residual: torch.Tensor | None = None,
        residual_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """The mixer's output; with ``input_norm`` / ``residual`` (a block's one-row decode step,
        ``norms_go_into_products``) ``residual.to(residual_dtype) + self(input_norm(hidden_states, input_dtype=its
        weight's dtype))``, the norm computed in ``in_proj``'s launch and the add in ``out_proj``'s where their
        one-row kernels apply."""
        shape = hidden_states.shape
        if cu_seqlens is not None:  # packed documents run as one row
            hidden_states = hidden_states.reshape(1, -1, shape[-1])
        batch, seqlen, _ = hidden_states.shape
        projected = None
        if input_norm is not None:
            input_dtype = input_norm.weight.dtype
            norm = None if attention_mask is not None else row_norm_of(input_norm, input_dtype)
            projected = None if norm is None else normed_linear(self.in_proj, hidden_states, norm)
            if projected is None:
                hidden_states = input_norm(hidden_states, input_dtype=input_dtype)
        dtype = hidden_states.dtype if projected is None else projected.dtype
        mask = None if attention_mask is None else attention_mask[:, -seqlen:, None].to(dtype)
        if mask is not None:
            hidden_states = hidden_states * mask
        if projected is None:
            projected = self.in_proj(hidden_states)
        z, xBC, dt = projected.split([self.intermediate_size, self.conv_dim, self.num_heads], dim=-1)
        if mask is not None:  # padding enters no convolution window
            xBC = xBC * mask
        normed = norm_left = None
        if mask is None and cu_seqlens is None:
            normed, norm_left = self._one_launch_step(xBC, dt, z, cache, leave_norm=residual is not None)
        if norm_left is not None:  # y, whose gated norm out_proj's one-row product computes as it loads it
            summed = normed_linear(self.out_proj, normed, norm_left, residual.view(*normed.shape[:-1], -1),
                                   residual_dtype)  # fmt: skip
            if summed is not None:
                return summed.view(*shape[:-1], -1)
            normed = self.norm(normed, z)
        if normed is None:
            y = self._conv_and_scan(xBC, dt, mask, cache, cu_seqlens)
            normed = self.norm(y.reshape(batch, seqlen, self.intermediate_size), z)
        if residual is not None:
            residual = residual.view(*normed.shape[:-1], -1)
            return plus_residual(self.out_proj, normed.to(dtype), residual, residual_dtype).view(*shape[:-1], -1)
        return self.out_proj(normed.to(dtype)).view(*shape[:-1], -1)

    def _one_launch_step(
        self, xBC: torch.Tensor, dt: torch.Tensor, z: torch.Tensor, cache: Cache | None, leave_norm: bool = False
    ) -> tuple[torch.Tensor | None, RowNorm | None]:
        """A one-token step that continues the cache in one launch (``dispatch.one_launch_conv_ssd``), its conv
        window and state updated: ``(self.norm(y, z), None)`` ``[b, 1, H * P]``, y normalized in the same launch
        where the norm is this class's own, unhooked, and normalizes each group of heads that shares B and C. With
        ``leave_norm`` (a block's one-row step, whose ``out_proj`` takes its residual add) and one group, ``(y,
        norm)`` instead: the norm for ``out_proj``'s product to compute as it loads y (``kernels/linear/row_norm.py``),
        its sum of squares left by the launch. ``(None, None)`` where that launch does not apply."""
        window = conv_state(cache, self.layer_idx) if cache is not None else None
        state = recurrent_state(cache, self.layer_idx) if cache is not None else None
        if window is None or state is None:
            return None, None
        norm = self.norm
        in_launch = (
            type(norm) is StateXMamba2RMSNorm
            and not hooked(norm)
            and norm.group_size * self.n_groups == self.intermediate_size  # its groups are those of B and C
        )
        to_out_proj = in_launch and leave_norm and self.n_groups == 1 and dispatch.GATED_NORM_IN_OUT_PROJ
        args = (xBC, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.activation, window, dt, self.A_log,
                self.n_groups, state, self.D, self.dt_bias, True, self.time_step_limit)  # fmt: skip
        if to_out_proj:
            y = dispatch.one_launch_conv_ssd(*args, z, None, norm.variance_epsilon, gate_squares=True)
        else:
            y = dispatch.one_launch_conv_ssd(*args, *((z, norm.weight, norm.variance_epsilon) if in_launch else ()))
        if y is None:
            return None, None
        store_conv_state(cache, self.layer_idx, window)  # both updated in place: this only marks them as the layer's
        store_recurrent_state(cache, self.layer_idx, state)
        if to_out_proj:
            y, squares = y
            return y, RowNorm(norm.weight, norm.variance_epsilon, False, gate=z, squares=squares)
        return (y if in_launch else norm(y.reshape(*z.shape), z)), None

    def _conv_and_scan(
        self,
        xBC: torch.Tensor,
        dt: torch.Tensor,
        mask: torch.Tensor | None,
        cache: Cache | None,
        cu_seqlens: torch.LongTensor | None,
    ) -> torch.Tensor:
        """y ``[b, T, H, P]``: the causal conv over ``[x | B | C]`` (continuing the cache's window), then the SSD scan
        (from the cache's state), each through its own ``dispatch`` call."""
        batch, seqlen, _ = xBC.shape
        window = conv_state(cache, self.layer_idx) if cache is not None else None
        xBC, window = dispatch.causal_conv1d(
            xBC,
            self.conv1d.weight.squeeze(1),
            self.conv1d.bias,
            self.activation,
            window,
            output_final_state=cache is not None,
            cu_seqlens=cu_seqlens,
        )
        if cache is not None:
            store_conv_state(cache, self.layer_idx, window)
        if mask is not None:
            xBC = xBC * mask
        x, B, C = xBC.split(
            [self.intermediate_size, self.n_groups * self.ssm_state_size, self.n_groups * self.ssm_state_size], dim=-1
        )

        dt_bias, dt_softplus, dt_limit = self.dt_bias, True, self.time_step_limit
        if mask is not None:
            # Step size 0 at a padding token: the state neither decays nor takes a write there.
            dt = discretize_dt(dt, self.dt_bias, True, self.time_step_limit) * mask
            dt_bias, dt_softplus, dt_limit = None, False, (0.0, float("inf"))
        x = x.reshape(batch, seqlen, self.num_heads, self.head_dim)
        B = B.reshape(batch, seqlen, self.n_groups, self.ssm_state_size)
        C = C.reshape(batch, seqlen, self.n_groups, self.ssm_state_size)
        initial_state = recurrent_state(cache, self.layer_idx) if cache is not None else None
        y, final_state = dispatch.ssd(
            x,
            dt,
            None,
            B,
            C,
            D=self.D,
            dt_bias=dt_bias,
            dt_softplus=dt_softplus,
            dt_limit=dt_limit,
            initial_state=initial_state,
            output_final_state=cache is not None,
            cu_seqlens=cu_seqlens,
            chunk_size=self.chunk_size,
            state_in_place=True,
            A_log=self.A_log,  # A = -exp(A_log): in the decode kernel on a CUDA step, else in dispatch.ssd
        )
        if cache is not None:
            store_recurrent_state(cache, self.layer_idx, final_state)
        return y


class StateXMamba2Block(GradientCheckpointingLayer):
    def __init__(self, config: StateXMamba2Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = StateXMamba2RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mixer = StateXMamba2Mixer(config, layer_idx)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        cu_seqlens: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        # `hidden_states.float() + mixer(norm(hidden_states.to(weight dtype)))`. The casts are handed to the norm and
        # the add, which on a CUDA step without gradients fold them into their kernels (dispatch.py); elsewhere
        # they run as these torch ops. The add is handed to the norm that reads the sum next (the next block's,
        # called with its weight's dtype, or the model's final norm, with none): on a decode step of more rows one
        # kernel adds and normalizes.
        residual_dtype = torch.float32 if self.residual_in_fp32 else hidden_states.dtype
        mixer = self.mixer
        if type(mixer) is StateXMamba2Mixer and norms_go_into_products(
            hidden_states, self.norm.weight.dtype, [mixer], [mixer.in_proj, mixer.out_proj]
        ):
            # A one-row decode step: the mixer normalizes its input in in_proj's launch and adds its output to the
            # residual stream in out_proj's (kernels/linear/row_norm.py): no norm or add of their own.
            return self.mixer(
                hidden_states, attention_mask, cache, cu_seqlens, self.norm, hidden_states, residual_dtype
            ).view(hidden_states.shape)
        normed = self.norm(hidden_states, input_dtype=self.norm.weight.dtype)
        update = self.mixer(normed, attention_mask, cache, cu_seqlens)
        next_norm = self.__dict__.get("next_norm")
        if next_norm is None:
            return dispatch.residual_add(hidden_states, update, residual_dtype)
        input_dtype = None if self.__dict__.get("next_norm_is_final") else next_norm.weight.dtype
        return next_norm.residual_add(hidden_states, update, residual_dtype, input_dtype)


class StateXMamba2PreTrainedModel(PreTrainedModel):
    config_class = StateXMamba2Config
    config: StateXMamba2Config
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True
    _no_split_modules = ["StateXMamba2Block"]
    _is_stateful = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """transformers' Mamba2 initialization, applied per module (children before parents)."""
        std = self.config.initializer_range
        if isinstance(module, StateXMamba2Mixer):
            module.reset_ssm_parameters()
            init.kaiming_uniform_(module.conv1d.weight, a=math.sqrt(5))
            if module.conv1d.bias is not None:
                init.zeros_(module.conv1d.bias)
            init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
            if self.config.rescale_prenorm_residual:
                module.out_proj.weight /= math.sqrt(self.config.num_hidden_layers)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, StateXMamba2RMSNorm):
            init.ones_(module.weight)


class StateXMamba2Model(StateXMamba2PreTrainedModel, StateXRecurrentModel):
    output_class = Mamba2Output  # transformers' Mamba2 output classes, so outputs match its Mamba2's
    final_norm_name = "norm_f"
    hidden_states_are_layer_inputs = False  # transformers' Mamba2 convention

    def __init__(self, config: StateXMamba2Config) -> None:
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([StateXMamba2Block(config, i) for i in range(config.num_hidden_layers)])
        self.norm_f = StateXMamba2RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        # The norm that reads each block's output (``StateXMamba2Block.forward``; ``modeling/normed_sums.py``).
        link_next_norms(self.layers, [block.norm for block in self.layers], self.norm_f)
        if len(self.layers):
            self.layers[-1].__dict__["next_norm_is_final"] = True  # norm_f reads the stream as it is (no cast)
        self.gradient_checkpointing = False
        # mamba_ssm checkpoints name the embedding "embedding"; transformers' Mamba2 renames it on load.
        self._register_load_state_dict_pre_hook(self._rename_mamba_ssm_embedding)
        self.post_init()

    def final_row_norm(self, product_dtype: torch.dtype) -> RowNorm | None:
        """``norm_f`` reads the stream as it is (fp32 with ``residual_in_fp32``), and its output, fp32 then, is cast to
        the products' dtype (the head's ``.to(lm_head.weight.dtype)``, as transformers' Mamba2 does)."""
        norm = row_norm_of(self.norm_f, None)
        return None if norm is None else norm._replace(output_dtype=product_dtype)

    @staticmethod
    def _rename_mamba_ssm_embedding(state_dict, prefix, *args) -> None:
        for key in list(state_dict):
            if key.startswith(f"{prefix}embedding."):
                state_dict[key.replace("embedding.", "embeddings.", 1)] = state_dict.pop(key)


class StateXMamba2ForCausalLM(StateXMamba2PreTrainedModel, StateXRecurrentForCausalLM):
    output_class = Mamba2CausalLMOutput
    _tied_weights_keys = {"lm_head.weight": "backbone.embeddings.weight"}

    def __init__(self, config: StateXMamba2Config) -> None:
        super().__init__(config)
        self.backbone = StateXMamba2Model(config)
        self.lm_head = DecodeLinear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


__all__ = ["StateXMamba2ForCausalLM", "StateXMamba2Model", "StateXMamba2PreTrainedModel"]
