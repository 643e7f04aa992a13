"""A Mamba2 block's residual add fused into the norm that reads its sum (issue 20), under the Triton interpreter: the
add + norm kernel (``kernels/norm/add_rmsnorm.py``) in Mamba2's numerics (the fp32 residual stream, the first block's
bf16 embeddings cast to fp32, the next block's norm of the sum rounded to the weight's dtype, gate first; the model's
final norm of the fp32 sum) is ``dispatch.residual_add`` and the norm kernel on its sum, bit for bit; a decode step
launches five kernels per layer where it launched six, with the logits and caches of the unfused step bit for bit;
and every other path (training, CPU, hooks, a sum changed in place, inference mode, layers rearranged) computes what
it did. The hand-off itself (``modeling/normed_sums.py``) is GLA's too: ``test_gla_residual_norm.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from launched_ops import LaunchedOps
from residual_norm_checks import (
    assert_all_equal,
    assert_close_to_torch,
    assert_trains_as_before,
    decode,
    decode_after_change,
    previous_mamba2_block_forward,
)
from statex_hf.kernels import dispatch
from statex_hf.kernels.activations.residual_add import residual_add
from statex_hf.kernels.norm.add_rmsnorm import add_rmsnorm
from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm
from statex_hf.kernels.norm.naive import naive_gated_rmsnorm
from statex_hf.modeling.mamba2.modeling_statex_mamba2 import StateXMamba2Block
from tiny_models import VOCAB, build

# At one row a block's norms and adds go into its sublayers' products (test_norms_in_products.py); here they are
# apart, where the add + norm kernel and its hand-over to the next norm serve them.
pytestmark = pytest.mark.usefixtures("norms_apart")

EPS = 1e-5
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


# (residual, update, the add's dtype, the norm's input_dtype, the weight's dtype): what a Mamba2 model hands over.
FORMS = {
    "stream->next-norm": (F32, BF16, F32, BF16, BF16),  # a block past the first, into the next block's norm
    "embeddings->next-norm": (BF16, BF16, F32, BF16, BF16),  # the first block: bf16 embeddings cast to fp32
    "stream->final-norm": (F32, BF16, F32, None, BF16),  # the last block, into norm_f (the fp32 sum as it is)
    "fp16-stream": (F32, F16, F32, F16, F16),
    "bf16-stream": (BF16, BF16, BF16, BF16, BF16),  # residual_in_fp32=False: one dtype throughout
    "fp32-model": (F32, F32, F32, F32, F32),
}


@pytest.mark.usefixtures("norm_tiles")
@pytest.mark.parametrize("shape", [(1, 1, 32), (3, 5, 100)], ids=["decode-32", "3x5x100"])
@pytest.mark.parametrize("form", list(FORMS))
def test_the_kernel_is_the_residual_add_and_the_norm_kernel_bit_for_bit(shape, form):
    residual_dtype, update_dtype, dtype, input_dtype, weight_dtype = FORMS[form]
    residual = (10 * torch.randn(*shape)).to(residual_dtype)  # magnitudes apart: the sum rounds
    update = torch.randn(*shape).to(update_dtype)
    weight = (1.0 + 0.1 * torch.randn(shape[-1])).to(weight_dtype)
    h, n = add_rmsnorm(residual, update, weight, EPS, norm_before_gate=False, input_dtype=input_dtype, dtype=dtype)
    want_h = residual.to(dtype) + update
    want_n = gated_rmsnorm(want_h, None, weight, EPS, shape[-1], input_dtype=input_dtype)
    assert h.dtype == want_h.dtype and h.shape == shape and torch.equal(h, want_h)
    if residual_dtype != update_dtype:  # the residual-add kernel a Mamba2 block launched
        assert torch.equal(h, residual_add(residual, update, dtype))
    assert n.dtype == want_n.dtype and torch.equal(n, want_n)
    reference = naive_gated_rmsnorm(want_h.to(input_dtype or want_h.dtype), None, weight, EPS, shape[-1])
    torch.testing.assert_close(n, reference, **({"rtol": 2e-2, "atol": 4e-2} if weight_dtype != F32 else {}))


def test_a_dtype_that_does_not_hold_the_residual_is_one_clear_error():
    with pytest.raises(ValueError, match=r"add_rmsnorm: dtype torch.bfloat16 does not hold the residual's"):
        add_rmsnorm(torch.randn(2, 8), torch.randn(2, 8).to(BF16), None, EPS, dtype=BF16)


@pytest.mark.parametrize("case", ["applies", "needs-grad", "off-cuda", "narrowing-dtype", "float64-input-dtype"])
def test_dispatch_fuses_mamba2s_form_only_on_the_no_grad_cuda_path(monkeypatch, on_cuda_dispatch, case):
    residual, update, weight = torch.randn(1, 1, 24).to(BF16), torch.randn(1, 1, 24).to(BF16), torch.randn(24)
    dtype, input_dtype = F32, BF16
    if case == "needs-grad":
        weight.requires_grad_()
    if case == "off-cuda":
        monkeypatch.setattr(dispatch, "use_triton", lambda *tensors: False)
    if case == "narrowing-dtype":
        residual = residual.float()
        dtype = BF16
    if case == "float64-input-dtype":
        input_dtype = torch.float64
    with LaunchedOps(monkeypatch) as seen:
        fused = dispatch.one_launch_add_rmsnorm(residual, update, weight, EPS, False, input_dtype, dtype)
    if case != "applies":
        assert fused is None and seen.kernels == [], seen.kernels
        return
    assert seen.kernels == ["norm.add_fwd"]
    summed = residual.float() + update
    assert torch.equal(fused[0], summed)
    assert torch.equal(fused[1], gated_rmsnorm(summed, None, weight, EPS, 24, input_dtype=BF16))


@pytest.mark.usefixtures("on_cuda_dispatch", "narrow_row_tiles")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize(
    "fields",
    [{}, {"statex_layers": [1]}, {"residual_in_fp32": False}],
    ids=["plain", "expanded", "bf16-stream"],
)
def test_a_decode_step_computes_what_the_unfused_step_did_bit_for_bit(monkeypatch, dtype, batch, fields):
    model = build("mamba2", **fields).to(F32 if dtype == "fp32" else BF16)
    ids = torch.randint(3, VOCAB - 2, (batch, 6))
    seen, got = decode(model, ids, monkeypatch)
    unfused_seen, want = decode(model, ids, monkeypatch, unfused=True)
    layers = model.config.num_hidden_layers
    last = 1 if batch > 1 else 0  # the last add and the final norm apart at more than one row (the test below)
    gated = layers if batch > dispatch.ONE_LAUNCH_CONV_SSD_MAX_ROWS else 0  # else in the mixer's one launch
    fused_adds, norms = seen.triton.count("norm.add_fwd"), seen.triton.count("norm.fwd")
    assert (fused_adds, norms) == (layers - last, 1 + gated + last), seen.kernels
    # The add left apart: the residual-add kernel where the dtypes differ, else torch's (dispatch.residual_add).
    assert seen.triton.count("activations.residual_add") + seen.ops.count("add") == last, seen.kernels
    assert "norm.add_fwd" not in unfused_seen.triton
    assert_all_equal(got, want)
    assert_close_to_torch(model, ids, monkeypatch, got)


def test_a_bf16_decode_step_launches_four_kernels_per_layer(monkeypatch, on_cuda_dispatch, narrow_row_tiles):
    # Issue 20: a Mamba2 layer's one-row step launched 6 kernels: the block's norm, in_proj's GEMV, the conv and
    # state update (one launch), the gated norm, out_proj's GEMV and the residual add; then the final norm, its fp32
    # output's cast to the head's bf16, the head and the logits' cast to fp32. Now each add is the prologue of the
    # norm that reads its sum (the next block's norm, the final norm): only the first layer's norm is left alone;
    # and the gated norm is taken by the conv and state update's launch.
    model = build("mamba2", num_hidden_layers=3, statex_layers=[1]).to(BF16)
    seen, _ = decode(model, torch.randint(3, VOCAB - 2, (1, 6)), monkeypatch)
    per_layer = ["linear.gemv", "ssd.conv_state_update", "linear.gemv", "norm.add_fwd"]
    head = ["_to_copy", "linear.gemv", "_to_copy"]
    assert seen.kernels == ["embedding", "norm.fwd", *per_layer * 3, *head], seen.kernels


def test_at_two_sequences_the_last_add_and_the_final_norm_stay_two_kernels(monkeypatch, on_cuda_dispatch):
    # The final norm's form (the fp32 stream normalized without a cast) was the two kernels bit for bit on an H100
    # at one row only (tests/gpu/test_mamba2_residual_norm_gpu.py): at more rows the last block's add is the
    # residual-add kernel and the final norm its own launch; every other add is still fused.
    model = build("mamba2", num_hidden_layers=3, statex_layers=[1]).to(BF16)
    seen, _ = decode(model, torch.randint(3, VOCAB - 2, (2, 6)), monkeypatch)
    assert seen.triton.count("norm.add_fwd") == 2, seen.triton
    assert seen.triton[-2:] == ["activations.residual_add", "norm.fwd"], seen.triton


@pytest.mark.parametrize("path", ["cpu", "as-on-cuda"])
def test_training_computes_what_the_previous_block_did(monkeypatch, request, path):
    if path == "as-on-cuda":
        request.getfixturevalue("on_cuda_dispatch")
    model = build("mamba2", statex_layers=[1]).train()
    assert_trains_as_before(model, StateXMamba2Block, previous_mamba2_block_forward, monkeypatch)


def test_a_cpu_decode_step_adds_with_torch(monkeypatch):
    model = build("mamba2").to(BF16)
    ids = torch.randint(3, VOCAB - 2, (1, 6))
    seen, got = decode(model, ids, monkeypatch)
    assert seen.triton == [] and seen.ops.count("add") >= model.config.num_hidden_layers
    monkeypatch.setattr(StateXMamba2Block, "forward", previous_mamba2_block_forward)
    assert_all_equal(got, decode(model, ids, monkeypatch)[1])


@pytest.mark.usefixtures("on_cuda_dispatch", "narrow_row_tiles")
@pytest.mark.parametrize(
    "case", ["hook-on-final-norm", "in-place-on-block-output", "new-block-input", "inference-mode", "layers-reversed"]
)
def test_whatever_changes_the_sum_or_hooks_the_norm_gets_the_norm_of_what_it_is_called_with(monkeypatch, case):
    # A norm returns the norm its add computed only when called with that very sum, unchanged, as the add expected
    # (the input dtype) and without hooks; otherwise it normalizes its input itself: the results are those of the
    # unfused step with the same change.
    model = build("mamba2", num_hidden_layers=3).to(BF16)
    seen, got, want, calls = decode_after_change(model, model.backbone, case, monkeypatch, model.backbone.norm_f)
    assert_all_equal(got, want)
    # Unchanged, a step of 3 layers runs its 3 adds as add + norm and 1 norm alone (the first block's norm; the
    # mixers' gated norms are in their one launch). Where a sum is changed, or handed to a norm that is not called
    # with it (or not as the add expected: reversed, the first block hands the final norm's form to a block's norm),
    # the norm that is launches its own; the hooked norm's add is the residual-add kernel; inference mode adds with
    # that kernel.
    fused, alone, adds = {
        "hook-on-final-norm": (2, 2, 1),
        "in-place-on-block-output": (3, 2, 0),
        "new-block-input": (3, 2, 0),
        "inference-mode": (0, 4, 3),
        "layers-reversed": (3, 4, 0),
    }[case]
    counts = [seen.triton.count(name) for name in ("norm.add_fwd", "norm.fwd", "activations.residual_add")]
    assert counts == [fused, alone, adds], seen.kernels
    assert len(calls) == (6 if case == "hook-on-final-norm" else 0)  # the prompt and two steps, fused and unfused


def test_each_block_knows_the_norm_that_reads_its_output_and_how_it_reads_it():
    model = build("mamba2", num_hidden_layers=3)
    for copy_of in (lambda m: m, copy.deepcopy):
        decoder = copy_of(model).backbone
        readers = [block.next_norm for block in decoder.layers]
        assert all(r is w for r, w in zip(readers, [*(b.norm for b in decoder.layers[1:]), decoder.norm_f]))
        assert [block.__dict__.get("next_norm_is_final", False) for block in decoder.layers] == [False, False, True]
    assert not any("next_norm" in name for name in model.state_dict())
    assert not any("next_norm" in name for name, _ in model.named_modules())
