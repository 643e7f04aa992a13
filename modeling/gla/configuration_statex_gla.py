"""Configuration of StateX GLA: flash-linear-attention's ``GLAConfig`` plus the StateX layers."""

from __future__ import annotations

import math

from statex_hf.modeling.config_checks import check_chunked_loss_size, check_divides, check_statex_layers
from statex_hf.modeling.remote_code import SavesRemoteCode
from transformers import PretrainedConfig


class StateXGLAConfig(SavesRemoteCode, PretrainedConfig):
    r"""Configuration for [`StateXGLAModel`] and [`StateXGLAForCausalLM`].

    Every field of flash-linear-attention 0.6's ``GLAConfig`` keeps its name and default, so an fla
    GLA ``config.json`` loads with only ``model_type`` changed. The defaults describe GLA-1.3B.

    Args:
        vocab_size: vocabulary size.
        hidden_size: model width.
        expand_k, expand_v: key and value widths as multiples of ``hidden_size``
            (``key_dim = hidden_size * expand_k``, ``value_dim = hidden_size * expand_v``).
        hidden_ratio, intermediate_size: MLP width; ``intermediate_size`` defaults to the multiple of
            256 nearest above ``2/3 * hidden_size * hidden_ratio``.
        num_hidden_layers: number of blocks.
        num_heads: heads of the GLA token mixer in layers that are not expanded.
        num_kv_heads: key/value heads (grouped keys and values); ``None`` means ``num_heads``.
        feature_map: activation applied to queries and keys, or ``None``.
        attn_mode: fla's kernel choice; kept for compatibility, the kernels are chosen per call here.
        use_short_conv, conv_size: causal depthwise convolutions on q, k and v, and their width.
        use_output_gate: multiply the mixer output by a swish gate (``g_proj``).
        clamp_min: lower clamp of the log forget gate, or ``None``.
        hidden_act: activation of the MLP and of the output gate (``"swish"``, the same as ``"silu"``).
        max_position_embeddings: kept for compatibility (the model has no positional embedding).
        elementwise_affine: the output norm has a weight.
        norm_eps: epsilon of every RMSNorm.
        use_gk, use_gv: fla's gate switches (only ``use_gk=True, use_gv=False`` exists in fla's layer).
        attn: hybrid softmax-attention layers (not supported: must be ``None``).
        use_cache: return the recurrent cache.
        pad_token_id, bos_token_id, eos_token_id: special tokens.
        tie_word_embeddings: share the input embedding with the LM head.
        initializer_range: standard deviation of the normal init of linear and embedding weights.
        fuse_norm, fuse_swiglu, fuse_cross_entropy, fuse_linear_cross_entropy, use_l2warp: fla kernel
            switches, kept for compatibility; ``fuse_norm``, ``use_output_gate`` and ``hidden_act``
            decide whether the output norm is called ``g_norm_swish_gate`` or ``g_norm``, as in fla.
        attnres_block_size: fla's attention residuals (not supported: must be ``None``).
        statex_layers: indices of the layers whose state StateX enlarged (merged heads).
        statex_num_heads: heads of the token mixer in ``statex_layers`` (1: all heads merged into one); it
            divides ``num_heads`` (merged heads group whole heads) and is smaller (the state grows).
        chunked_loss_size: when set and ``labels`` are given, the loss is computed this many tokens at
            a time without materializing all logits (long-context training); logits are then not returned.
    """

    model_type = "statex_gla"
    # The cache is not a prediction: `cache` from transformers 5.24 on, `past_key_values` before.
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        hidden_size: int = 2048,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        hidden_ratio: int | None = 4,
        intermediate_size: int | None = None,
        num_hidden_layers: int = 24,
        num_heads: int = 4,
        num_kv_heads: int | None = None,
        feature_map: str | None = None,
        attn_mode: str = "chunk",
        use_short_conv: bool = False,
        conv_size: int = 4,
        use_output_gate: bool = True,
        clamp_min: float | None = None,
        hidden_act: str = "swish",
        max_position_embeddings: int = 2048,
        elementwise_affine: bool | None = True,
        norm_eps: float = 1e-6,
        use_gk: bool = True,
        use_gv: bool = False,
        attn: dict | None = None,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        tie_word_embeddings: bool = False,
        initializer_range: float = 0.02,
        fuse_norm: bool = True,
        fuse_swiglu: bool = True,
        fuse_cross_entropy: bool = True,
        fuse_linear_cross_entropy: bool = False,
        use_l2warp: bool = False,
        vocab_size: int = 32000,
        attnres_block_size: int | None = None,
        statex_layers: list[int] | None = None,
        statex_num_heads: int = 1,
        chunked_loss_size: int | None = None,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.expand_k = expand_k
        self.expand_v = expand_v
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.feature_map = feature_map
        self.attn_mode = attn_mode
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.use_output_gate = use_output_gate
        self.clamp_min = clamp_min
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.elementwise_affine = elementwise_affine
        self.norm_eps = norm_eps
        self.use_gk = use_gk
        self.use_gv = use_gv
        self.attn = attn
        self.use_cache = use_cache
        self.initializer_range = initializer_range
        self.fuse_norm = fuse_norm
        self.fuse_swiglu = fuse_swiglu
        self.fuse_cross_entropy = fuse_cross_entropy
        self.fuse_linear_cross_entropy = fuse_linear_cross_entropy
        self.use_l2warp = use_l2warp
        self.vocab_size = vocab_size
        self.attnres_block_size = attnres_block_size
        self.statex_layers = check_statex_layers(statex_layers, num_hidden_layers)
        self.statex_num_heads = statex_num_heads
        self.chunked_loss_size = chunked_loss_size
        self._validate_statex_gla()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def key_dim(self) -> int:
        return round(self.hidden_size * self.expand_k)

    @property
    def value_dim(self) -> int:
        return round(self.hidden_size * self.expand_v)

    @property
    def layer_types(self) -> list[str]:
        """Every layer is recurrent: transformers' caches give each a ``LinearAttentionLayer``."""
        return ["linear_attention"] * self.num_hidden_layers

    @property
    def number_of_conv_states(self) -> int:
        """Convolution windows per layer in the cache: q, k and v with short convolutions."""
        return 3 if self.use_short_conv else 1

    def layer_num_heads(self, layer_idx: int) -> int:
        """Heads of the token mixer of layer ``layer_idx`` (``statex_num_heads`` in a StateX layer)."""
        return self.statex_num_heads if layer_idx in self.statex_layers else self.num_heads

    def _validate_statex_gla(self) -> None:
        for name, expand in (("expand_k", self.expand_k), ("expand_v", self.expand_v)):
            width = self.hidden_size * expand
            if not math.isclose(width, round(width)):
                raise ValueError(f"{name}={expand} gives a non-integer width hidden_size * {name} = {width}")
        check_divides("num_heads", self.num_heads, "key_dim", self.key_dim)
        check_divides("num_heads", self.num_heads, "value_dim", self.value_dim)
        if self.statex_layers:
            if self.statex_num_heads >= self.num_heads:  # the state per layer is key_dim * value_dim / heads
                raise ValueError(
                    f"statex_num_heads={self.statex_num_heads} is not fewer than num_heads={self.num_heads}: the "
                    "expanded layers' state would not grow; use fewer heads there (e.g. statex_num_heads=1)"
                )
            # Merged heads group whole heads, so they divide key_dim and value_dim as num_heads does.
            check_divides("statex_num_heads", self.statex_num_heads, "num_heads", self.num_heads)
        if self.num_kv_heads is not None and self.num_kv_heads != self.num_heads:
            check_divides("num_kv_heads", self.num_kv_heads, "num_heads", self.num_heads)
            if self.statex_layers:
                raise ValueError(
                    f"num_kv_heads={self.num_kv_heads} (grouped keys/values) cannot be combined with statex_layers; "
                    "StateX head merging needs num_kv_heads=None"
                )
        if self.attn is not None:
            raise ValueError(
                "attn: hybrid softmax-attention layers are not supported by StateX GLA; set attn=None "
                "(use a pure GLA checkpoint)"
            )
        if self.attnres_block_size is not None:
            raise ValueError("attnres_block_size: attention residuals are not supported by StateX GLA; set it to None")
        if self.hidden_act not in ("swish", "silu"):
            raise ValueError(
                f"hidden_act={self.hidden_act!r} is not supported: StateX GLA's MLP and output gate use 'swish'"
            )
        if not self.use_gk or self.use_gv:
            raise ValueError("use_gk must be True and use_gv False: fla's GLA layer only has the key forget gate")
        check_chunked_loss_size(self.chunked_loss_size)


__all__ = ["StateXGLAConfig"]
