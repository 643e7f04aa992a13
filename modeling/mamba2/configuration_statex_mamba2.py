"""Configuration of StateX Mamba2: transformers' ``Mamba2Config`` plus the StateX layers."""

from __future__ import annotations

import math

from statex_hf.modeling.config_checks import check_chunked_loss_size, check_divides, check_statex_layers
from statex_hf.modeling.remote_code import SavesRemoteCode
from transformers import PretrainedConfig


class StateXMamba2Config(SavesRemoteCode, PretrainedConfig):
    r"""Configuration for [`StateXMamba2Model`] and [`StateXMamba2ForCausalLM`].

    Every field of transformers' ``Mamba2Config`` keeps its name and default.

    Args:
        num_heads: SSM heads; ``num_heads * head_dim`` must equal ``expand * hidden_size``.
        head_dim: channels per head (P).
        vocab_size: vocabulary size.
        hidden_size: model width.
        state_size: SSM state dimension N of the layers that are not expanded.
        num_hidden_layers: number of blocks.
        layer_norm_epsilon: epsilon of every RMSNorm.
        pad_token_id, bos_token_id, eos_token_id: special tokens.
        expand: ``d_inner = expand * hidden_size``.
        conv_kernel: width of the causal depthwise convolution over ``[x | B | C]``.
        n_groups: groups G sharing B and C; must divide ``num_heads``.
        use_bias: bias in ``in_proj`` and ``out_proj``.
        use_conv_bias: bias in ``conv1d``.
        hidden_act: activation after the convolution (``"silu"``; ``"swish"`` is the same).
        initializer_range: standard deviation of the normal init of linear and embedding weights.
        residual_in_fp32: keep the residual stream in fp32.
        time_step_rank: kept for compatibility (``"auto"`` = ``ceil(hidden_size / 16)``).
        time_step_min, time_step_max, time_step_floor: range of the initial step size (``dt_bias`` init).
        time_step_limit: clamp of the step size after softplus.
        rescale_prenorm_residual: scale ``out_proj`` at init by ``1 / sqrt(num_hidden_layers)``.
        use_cache: return the recurrent cache.
        chunk_size: chunk length of the chunked scan.
        tie_word_embeddings: share the input embedding with the LM head.
        statex_layers: indices of the layers whose SSM state StateX enlarged.
        statex_state_size: state dimension N' of ``statex_layers`` (``None``: ``4 * state_size``); larger
            than ``state_size``.
        chunked_loss_size: when set and ``labels`` are given, the loss is computed this many tokens at
            a time without materializing all logits (long-context training); logits are then not returned.
    """

    model_type = "statex_mamba2"
    # The cache is not a prediction: `cache` from transformers 5.24 on, `cache_params` before.
    keys_to_ignore_at_inference = ["cache", "cache_params"]

    def __init__(
        self,
        num_heads: int = 128,
        head_dim: int = 64,
        vocab_size: int = 32768,
        hidden_size: int = 4096,
        state_size: int = 128,
        num_hidden_layers: int = 64,
        layer_norm_epsilon: float = 1e-5,
        pad_token_id: int | None = 1,
        bos_token_id: int | None = 0,
        eos_token_id: int | list[int] | None = 2,
        expand: int = 2,
        conv_kernel: int = 4,
        n_groups: int = 8,
        use_bias: bool = False,
        use_conv_bias: bool = True,
        hidden_act: str = "silu",
        initializer_range: float = 0.1,
        residual_in_fp32: bool = True,
        time_step_rank: str | int = "auto",
        time_step_min: float = 0.001,
        time_step_max: float = 0.1,
        time_step_floor: float = 1e-4,
        time_step_limit: list[float] | tuple[float, float] = (0.0, float("inf")),
        rescale_prenorm_residual: bool = False,
        use_cache: bool = True,
        chunk_size: int = 256,
        tie_word_embeddings: bool = False,
        statex_layers: list[int] | None = None,
        statex_state_size: int | None = None,
        chunked_loss_size: int | None = None,
        **kwargs,
    ):
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.state_size = state_size
        self.num_hidden_layers = num_hidden_layers
        self.layer_norm_epsilon = layer_norm_epsilon
        self.expand = expand
        self.conv_kernel = conv_kernel
        self.n_groups = n_groups
        self.use_bias = use_bias
        self.use_conv_bias = use_conv_bias
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.residual_in_fp32 = residual_in_fp32
        self.time_step_rank = math.ceil(hidden_size / 16) if time_step_rank == "auto" else time_step_rank
        self.time_step_min = time_step_min
        self.time_step_max = time_step_max
        self.time_step_floor = time_step_floor
        self.time_step_limit = tuple(time_step_limit)
        self.rescale_prenorm_residual = rescale_prenorm_residual
        self.use_cache = use_cache
        self.chunk_size = chunk_size
        self.statex_layers = check_statex_layers(statex_layers, num_hidden_layers)
        self.statex_state_size = 4 * state_size if statex_state_size is None else statex_state_size
        self.chunked_loss_size = chunked_loss_size
        self._validate_statex_mamba2()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def layer_types(self) -> list[str]:
        """Every layer is recurrent: transformers' caches give each a ``LinearAttentionLayer``."""
        return ["linear_attention"] * self.num_hidden_layers

    @property
    def number_of_conv_states(self) -> int:
        """Convolution windows per layer in the cache: the one over ``[x | B | C]``."""
        return 1

    def layer_state_size(self, layer_idx: int) -> int:
        """SSM state dimension N of layer ``layer_idx`` (``statex_state_size`` in a StateX layer)."""
        return self.statex_state_size if layer_idx in self.statex_layers else self.state_size

    def _validate_statex_mamba2(self) -> None:
        if self.hidden_size * self.expand != self.num_heads * self.head_dim:
            raise ValueError(
                f"hidden_size * expand ({self.hidden_size * self.expand}) must equal num_heads * head_dim "
                f"({self.num_heads * self.head_dim}); adjust num_heads or head_dim"
            )
        check_divides("n_groups", self.n_groups, "num_heads", self.num_heads)
        if self.statex_layers and self.statex_state_size <= self.state_size:
            raise ValueError(
                f"statex_state_size={self.statex_state_size} is not larger than state_size={self.state_size}: "
                f"StateX enlarges the state (e.g. statex_state_size={4 * self.state_size})"
            )
        if self.hidden_act not in ("silu", "swish"):
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not supported: the StateX Mamba2 convolution kernels apply 'silu'"
            )
        check_chunked_loss_size(self.chunked_loss_size)


__all__ = ["StateXMamba2Config"]
