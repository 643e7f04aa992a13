"""A GLA block's residual add fused into the norm that reads its sum (issue 20), under the Triton interpreter:
the add + norm kernel (``kernels/norm/add_rmsnorm.py``) is torch's add and the norm kernel on it, bit for bit;
``dispatch.one_launch_add_rmsnorm`` takes it only on the no-grad CUDA path; a decode step launches nine kernels per
layer where it launched eleven, and computes the same logits and cache bit for bit; and every other path
(training, CPU, hooks, a residual changed in place, inference mode, layers rearranged) computes what it did.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from launched_ops import LaunchedOps
from residual_norm_checks import (
    assert_all_equal,
    assert_close_to_torch,
    assert_trains_as_before,
    decode,
    decode_after_change,
)
from statex_hf.kernels import dispatch
from statex_hf.kernels.norm.add_rmsnorm import add_rmsnorm
from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm
from statex_hf.kernels.norm.naive import naive_gated_rmsnorm
from statex_hf.modeling.gla.modeling_statex_gla import StateXGLABlock
from tiny_models import VOCAB, build

# At one row a block's norms and adds go into its sublayers' products (test_norms_in_products.py); here they are
# apart, where the add + norm kernel and its hand-over to the next norm serve them.
pytestmark = pytest.mark.usefixtures("norms_apart")

EPS = 1e-6
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.usefixtures("norm_tiles")
@pytest.mark.parametrize("shape", [(1, 1, 32), (3, 5, 100)], ids=["decode-32", "3x5x100"])
@pytest.mark.parametrize(
    "residual_dtype, update_dtype",
    [("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"), ("fp32", "bf16")],
    ids=["fp32", "bf16", "fp16", "fp32+bf16"],
)
def test_the_kernel_is_torchs_add_and_the_norm_kernel_bit_for_bit(shape, residual_dtype, update_dtype):
    residual = (10 * torch.randn(*shape)).to(DTYPES[residual_dtype])  # magnitudes apart: the sum rounds
    update = torch.randn(*shape).to(DTYPES[update_dtype])
    weight = 1.0 + 0.1 * torch.randn(shape[-1])
    h, n = add_rmsnorm(residual, update, weight, EPS)
    want_h = residual + update
    want_n = gated_rmsnorm(want_h, None, weight, EPS, shape[-1], norm_before_gate=True)
    assert h.dtype == want_h.dtype and h.shape == shape and torch.equal(h, want_h)
    assert n.dtype == want_n.dtype and torch.equal(n, want_n)
    reference = naive_gated_rmsnorm(want_h, None, weight, EPS, shape[-1], norm_before_gate=True)
    torch.testing.assert_close(n, reference)


@pytest.mark.usefixtures("norm_tiles")
def test_the_kernel_in_mamba2s_form_normalizes_the_fp32_stream_rounded_to_bf16():
    # Gate first (the weight after the rounding) and the fp32 sum rounded to bf16 as the norm loads it: what a
    # Mamba2 block's add and the next norm would take.
    residual, update = 10 * torch.randn(2, 3, 40), torch.randn(2, 3, 40).to(torch.bfloat16)
    weight = (1.0 + 0.1 * torch.randn(40)).to(torch.bfloat16)
    h, n = add_rmsnorm(residual, update, weight, EPS, norm_before_gate=False, input_dtype=torch.bfloat16)
    assert torch.equal(h, residual + update)
    want = gated_rmsnorm(residual + update, None, weight, EPS, 40, input_dtype=torch.bfloat16)
    assert n.dtype == want.dtype == torch.bfloat16 and torch.equal(n, want)


@pytest.mark.parametrize(
    "case,error,match",
    [
        ("shapes", ValueError, r"add_rmsnorm: residual \(2, 8\) and update \(2, 7\) differ"),
        ("dtype", ValueError, r"must be bf16, fp16 or fp32"),
        ("weight", ValueError, r"weight \(7,\) must be \[8\]"),
        ("grad", RuntimeError, r"no backward"),
    ],
)
def test_bad_calls_are_one_clear_error(case, error, match):
    residual, update, weight = torch.randn(2, 8), torch.randn(2, 7 if case == "shapes" else 8), torch.ones(8)
    if case == "dtype":
        update = update.double()
    if case == "weight":
        weight = torch.ones(7)
    if case == "grad":
        weight.requires_grad_()
    with pytest.raises(error, match=match):
        add_rmsnorm(residual, update, weight, EPS)


@pytest.mark.parametrize(
    "case", ["applies", "needs-grad", "off-cuda", "not-contiguous", "shapes", "compiling", "float64"]
)
def test_dispatch_fuses_only_on_the_no_grad_cuda_path(monkeypatch, on_cuda_dispatch, case):
    residual, update, weight = torch.randn(1, 1, 24), torch.randn(1, 1, 24), torch.randn(24)
    if case == "needs-grad":
        update.requires_grad_()
    if case == "off-cuda":
        monkeypatch.setattr(dispatch, "use_triton", lambda *tensors: False)
    if case == "not-contiguous":
        residual = torch.randn(1, 24, 2)[..., 0].view(1, 1, 24)
    if case == "shapes":
        update = torch.randn(24)
    if case == "compiling":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    if case == "float64":
        residual, update = residual.double(), update.double()
    with LaunchedOps(monkeypatch) as seen:
        fused = dispatch.one_launch_add_rmsnorm(residual, update, weight, EPS)
    if case != "applies":
        assert fused is None and seen.kernels == [], seen.kernels
        return
    assert seen.kernels == ["norm.add_fwd"]
    assert torch.equal(fused[0], residual + update)
    assert torch.equal(fused[1], gated_rmsnorm(residual + update, None, weight, EPS, 24, norm_before_gate=True))


@pytest.mark.usefixtures("on_cuda_dispatch", "narrow_row_tiles")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("fields", [{}, {"statex_layers": [1], "use_short_conv": True}], ids=["plain", "expanded"])
def test_a_decode_step_computes_what_the_unfused_step_did_bit_for_bit(monkeypatch, dtype, batch, fields):
    model = build("gla", **fields).to(DTYPES[dtype])
    ids = torch.randint(3, VOCAB - 2, (batch, 6))
    seen, got = decode(model, ids, monkeypatch)
    unfused_seen, want = decode(model, ids, monkeypatch, unfused=True)
    layers = model.config.num_hidden_layers
    assert seen.triton.count("norm.add_fwd") == 2 * layers and "add" not in seen.ops, seen.kernels
    assert "norm.add_fwd" not in unfused_seen.triton and unfused_seen.ops.count("add") == 2 * layers
    assert_all_equal(got, want)
    assert_close_to_torch(model, ids, monkeypatch, got)


def test_a_bf16_decode_step_launches_nine_kernels_per_layer(monkeypatch, on_cuda_dispatch, narrow_row_tiles):
    # Issue 20: a GLA layer's one-row step launched 11 kernels: the attention norm, the grouped GEMV (q, k, v, the
    # gate's low-rank down, g), the gate's up GEMV, the recurrent step, the output gate's norm, o_proj, torch's
    # residual add, the MLP norm, the MLP's GEMV + SwiGLU, down_proj, torch's residual add; then the final norm,
    # the head and the logits' cast to fp32. Now each add is the prologue of the norm that reads its sum (the
    # next block's attention norm, the final norm): only the first layer's attention norm is left on its own.
    model = build("gla", num_hidden_layers=3, statex_layers=[1]).to(torch.bfloat16)
    ids = torch.randint(3, VOCAB - 2, (1, 6))
    seen, _ = decode(model, ids, monkeypatch)  # the last of two steps: the first computed the gate's constant
    per_layer = [
        "linear.gemv_group", "linear.gemv", "fused_recurrent_gla_step_kernel", "norm.fwd", "linear.gemv",
        "norm.add_fwd", "linear.gemv_swiglu", "linear.gemv", "norm.add_fwd",
    ]  # fmt: skip
    assert seen.kernels == ["embedding", "norm.fwd", *per_layer * 3, "linear.gemv", "_to_copy"], seen.kernels


def previous_block_forward(self, hidden_states, attention_mask=None, cache=None, cu_seqlens=None):
    """``StateXGLABlock.forward`` before issue 20's change: torch's adds, each norm on its own."""
    hidden_states = hidden_states + self.attn(self.attn_norm(hidden_states), attention_mask, cache, cu_seqlens)
    return hidden_states + self.mlp(self.mlp_norm(hidden_states))


@pytest.mark.parametrize("path", ["cpu", "as-on-cuda"])
def test_training_computes_what_the_previous_block_did(monkeypatch, request, path):
    if path == "as-on-cuda":
        request.getfixturevalue("on_cuda_dispatch")
    model = build("gla", statex_layers=[1]).train()
    assert_trains_as_before(model, StateXGLABlock, previous_block_forward, monkeypatch)


def test_a_cpu_decode_step_adds_with_torch(monkeypatch):
    model = build("gla").to(torch.bfloat16)
    ids = torch.randint(3, VOCAB - 2, (1, 6))
    seen, got = decode(model, ids, monkeypatch)
    assert seen.triton == [] and seen.ops.count("add") >= 2 * model.config.num_hidden_layers
    monkeypatch.setattr(StateXGLABlock, "forward", previous_block_forward)
    assert_all_equal(got, decode(model, ids, monkeypatch)[1])


@pytest.mark.usefixtures("on_cuda_dispatch", "narrow_row_tiles")
@pytest.mark.parametrize(
    "case", ["hook-on-mlp-norm", "in-place-on-block-output", "new-block-input", "inference-mode", "layers-reversed"]
)
def test_whatever_changes_the_sum_or_hooks_the_norm_gets_the_norm_of_what_it_is_called_with(monkeypatch, case):
    # A norm returns the norm its add computed only when called with that very sum, unchanged, and without hooks;
    # otherwise it normalizes its input itself: the results are those of the unfused step with the same change.
    model = build("gla", num_hidden_layers=3).to(torch.bfloat16)
    seen, got, want, calls = decode_after_change(model, model.model, case, monkeypatch, model.model.layers[1].mlp_norm)
    assert_all_equal(got, want)
    # Unchanged, a step of 3 layers runs its 6 adds as add + norm and 4 norms alone (the first attention norm and
    # the output gate's 3). Where a sum is changed, or handed to a norm that is not called with it, the norm that
    # is launches its own; the hooked norm's add is torch's; inference mode adds with torch.
    fused, alone = {
        "hook-on-mlp-norm": (5, 5),
        "in-place-on-block-output": (6, 5),
        "new-block-input": (6, 5),
        "inference-mode": (0, 10),
        "layers-reversed": (6, 7),  # each attention norm and the final one: called with another block's sum
    }[case]
    assert (seen.triton.count("norm.add_fwd"), seen.triton.count("norm.fwd")) == (fused, alone), seen.kernels
    assert len(calls) == (6 if case == "hook-on-mlp-norm" else 0)  # the prompt and two steps, fused and unfused


def test_a_norm_takes_what_its_add_computed_once_and_only_for_that_sum(monkeypatch, on_cuda_dispatch):
    norm = build("gla").model.norm
    residual, update = torch.randn(1, 1, 32), torch.randn(1, 1, 32)
    with torch.no_grad():
        summed = norm.residual_add(residual, update)
        want = gated_rmsnorm(summed, None, norm.weight, norm.eps, 32, norm_before_gate=True)
        with LaunchedOps(monkeypatch) as seen:
            of_other = norm(summed.clone())  # another tensor, the same values: normalized by the kernel
            normed = norm(summed)  # the sum itself: what its add computed, no launch
            again = norm(summed)  # taken once: the next call normalizes it
    assert seen.triton == ["norm.fwd", "norm.fwd"]
    assert all(torch.equal(got, want) for got in (of_other, normed, again))


def test_each_block_knows_the_norm_that_reads_its_output_without_holding_it_as_a_submodule():
    model = build("gla", num_hidden_layers=3)
    for copy_of in (lambda m: m, copy.deepcopy):
        decoder = copy_of(model).model
        readers = [block.next_norm for block in decoder.layers]
        assert readers[0] is decoder.layers[1].attn_norm and readers[1] is decoder.layers[2].attn_norm
        assert readers[2] is decoder.norm
    assert not any("next_norm" in name for name in model.state_dict())
    assert not any("next_norm" in name for name, _ in model.named_modules())


def test_a_norm_never_called_with_its_sum_keeps_nothing_alive(monkeypatch, on_cuda_dispatch):
    # Layers sliced after construction: the last block still hands its sum to the attention norm of a block no
    # longer run, which is never called with it. Once the forward's outputs are gone, nothing of what the add +
    # norm kernels computed may stay alive (a prefill's sum and norm are [B, T, D] each).
    model = build("gla", num_hidden_layers=3).to(torch.bfloat16)
    model.model.layers = model.model.layers[:2]
    computed = []
    fused = dispatch.one_launch_add_rmsnorm

    def recording(*args):
        result = fused(*args)
        computed.extend(weakref.ref(t) for t in result or ())
        return result

    monkeypatch.setattr(dispatch, "one_launch_add_rmsnorm", recording)
    with torch.no_grad():
        logits = model(torch.randint(3, VOCAB - 2, (1, 6))).logits
    assert len(computed) == 2 * 2 * 2 and torch.isfinite(logits).all()  # two adds a block, each (sum, norm)
    del logits
    gc.collect()
    assert all(ref() is None for ref in computed), "a pending add + norm result outlived the forward"
