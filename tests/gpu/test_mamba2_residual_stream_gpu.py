"""A Mamba2 block's fp32 residual stream on the GPU (issue 20), at Mamba2-1.3B's hidden size (run with
STATEX_GPU_TESTS=1 on a CUDA machine): the residual-add kernel is torch's add bit for bit, the norm rounds the
fp32 stream to bf16 as torch's cast does (ties to even included), and a bf16 model's decode step computes what
the previous block (a cast for the norm, torch's mixed-dtype add) computed, bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from statex_hf.kernels import dispatch
from statex_hf.kernels.activations.residual_add import residual_add
from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm
from statex_hf.modeling.cache import conv_state, recurrent_state
from statex_hf.modeling.mamba2.modeling_statex_mamba2 import StateXMamba2Block

from statex_hf import StateXMamba2Config, StateXMamba2ForCausalLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICE = "cuda"
HIDDEN = 2048  # Mamba2-1.3B
SHAPES = [(1, 1, HIDDEN), (4, 1, HIDDEN), (2, 7, HIDDEN), (2, 1000, HIDDEN)]
SHAPE_IDS = ["decode-1", "decode-4", "2x7", "prefill-2x1000"]


def fp32_stream(shape, dtype):
    """Random fp32 values, the first ones exactly halfway between two ``dtype`` neighbours."""
    x = 4 * torch.randn(*shape, device=DEVICE)
    mantissa = 7 if dtype == torch.bfloat16 else 10
    k = torch.arange(64, device=DEVICE, dtype=torch.float32)
    x.view(-1)[:64] = (1.0 + k * 2.0**-mantissa + 2.0 ** -(mantissa + 1)) * (-1.0) ** k
    return x


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize(
    "residual_dtype, update_dtype, dtype",
    [
        (torch.float32, torch.bfloat16, None),
        (torch.float32, torch.float16, None),
        (torch.bfloat16, torch.bfloat16, torch.float32),
    ],
    ids=["fp32+bf16", "fp32+fp16", "bf16->fp32+bf16"],
)
@torch.no_grad()
def test_the_residual_add_kernel_is_torchs_add_bit_for_bit(shape, residual_dtype, update_dtype, dtype):
    residual = (100 * torch.randn(*shape, device=DEVICE)).to(residual_dtype)
    update = torch.randn(*shape, device=DEVICE).to(update_dtype)
    want = residual.to(dtype or residual_dtype) + update
    for got in (residual_add(residual, update, dtype), dispatch.residual_add(residual, update, dtype)):
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@torch.no_grad()
def test_the_norm_rounds_an_fp32_stream_as_torchs_cast(shape, dtype):
    x = fp32_stream(shape, dtype)
    weight = (1.0 + 0.1 * torch.randn(HIDDEN, device=DEVICE)).to(dtype)
    cast = x.to(dtype)
    want = gated_rmsnorm(cast, None, weight, 1e-5, HIDDEN)
    for got in (
        gated_rmsnorm(x, None, weight, 1e-5, HIDDEN, input_dtype=dtype),
        dispatch.gated_rmsnorm(x, None, weight, 1e-5, HIDDEN, input_dtype=dtype),
    ):
        assert got.dtype == want.dtype == dtype and torch.equal(got, want)


def previous_block_forward(self, hidden_states, attention_mask=None, cache=None, cu_seqlens=None):
    """``StateXMamba2Block.forward`` before issue 20's change: a cast for the norm, torch's add."""
    residual = hidden_states.float() if self.residual_in_fp32 else hidden_states
    normed = self.norm(hidden_states.to(self.norm.weight.dtype))
    return residual + self.mixer(normed, attention_mask, cache, cu_seqlens)


@pytest.mark.parametrize("batch", [1, 4])
def test_a_bf16_decode_step_is_the_previous_blocks_bit_for_bit(monkeypatch, batch):
    # Two layers of Mamba2-1.3B's shapes, the second expanded (N 512).
    config = StateXMamba2Config(
        hidden_size=HIDDEN, num_heads=64, head_dim=64, state_size=128, n_groups=1, num_hidden_layers=2,
        vocab_size=512, statex_layers=[1], statex_state_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = StateXMamba2ForCausalLM(config).to(DEVICE, torch.bfloat16).eval()
    ids = torch.randint(3, 512, (batch, 12), device=DEVICE)

    def step():
        with torch.no_grad():
            out = model(ids[:, :-1], use_cache=True)
            # `cache` from transformers 5.24 on, `cache_params` before.
            cache = out.cache if "cache" in out else out.cache_params
            logits = model(ids[:, -1:], cache=cache, use_cache=True, logits_to_keep=1).logits
        layers = range(config.num_hidden_layers)
        return [logits] + [recurrent_state(cache, i) for i in layers] + [conv_state(cache, i) for i in layers]

    got = step()
    monkeypatch.setattr(StateXMamba2Block, "forward", previous_block_forward)
    want = step()
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and torch.equal(g, w)
