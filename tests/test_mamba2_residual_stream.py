"""A Mamba2 block's fp32 residual stream (issue 20): its residual add, ``residual.to(dtype) + update``, as the
Triton kernel == torch's ops bit for bit (under the Triton interpreter), chosen by ``dispatch.residual_add`` only
on the no-grad CUDA path; a decode step that launches neither a cast for the norm nor torch's add; and the block
(its norm rounding the fp32 stream as it loads it, this add) computing what it did before, on every path, with
and without gradients. The norm's own input-dtype tests are in ``test_gated_rmsnorm.py``.
"""

from __future__ import annotations

import pytest
import torch
from launched_ops import LaunchedOps
from residual_norm_checks import previous_mamba2_block_forward, train_step
from statex_hf.kernels import dispatch, launch
from statex_hf.kernels.activations.residual_add import residual_add
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.modeling.cache import conv_state, recurrent_state
from statex_hf.modeling.mamba2.modeling_statex_mamba2 import StateXMamba2Block

# The residual stream's kernels as they run with a block's norms and adds apart (at one row they go into its
# mixer's products: test_norms_in_products.py).
pytestmark = pytest.mark.usefixtures("norms_apart")

SHAPES = [(1, 1, 1000), (4, 1, 1000), (2, 7, 1000)]  # 1000: not a multiple of the block (the last one masked)
SHAPE_IDS = ["1x1", "4x1", "2x7"]


@pytest.fixture(params=[1024, 128], ids=["block-1024", "block-128"])
def block(request, monkeypatch):
    monkeypatch.setitem(launch.OVERRIDES, "activations.residual_add", LaunchConfig.of(4, 1, BLOCK=request.param))


@pytest.mark.usefixtures("block")
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize(
    "residual_dtype, update_dtype, dtype",
    [
        (torch.float32, torch.bfloat16, None),  # a block past the first: fp32 stream + bf16 mixer output
        (torch.float32, torch.float16, None),
        (torch.bfloat16, torch.bfloat16, torch.float32),  # the first block: bf16 embeddings cast to fp32
        (torch.float16, torch.float16, torch.float32),
    ],
    ids=["fp32+bf16", "fp32+fp16", "bf16->fp32+bf16", "fp16->fp32+fp16"],
)
def test_the_kernel_is_torchs_add_bit_for_bit(shape, residual_dtype, update_dtype, dtype):
    residual = (100 * torch.randn(*shape)).to(residual_dtype)  # magnitudes apart: the sum rounds
    update = torch.randn(*shape).to(update_dtype)
    want = residual.to(dtype or residual_dtype) + update
    got = residual_add(residual, update, dtype)
    assert got.dtype == want.dtype == torch.float32
    assert torch.equal(got, want)


def test_the_kernel_refuses_what_it_cannot_compute_in_one_line():
    r, u = torch.randn(2, 3), torch.randn(2, 3).to(torch.bfloat16)
    with pytest.raises(ValueError, match="differ"):
        residual_add(r, u[:, :2])
    with pytest.raises(ValueError, match="does not hold"):
        residual_add(r, u, torch.bfloat16)
    with pytest.raises(RuntimeError, match="no backward"):
        residual_add(r.requires_grad_(), u)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_dispatch_takes_the_kernel_only_for_a_no_grad_mixed_dtype_add(monkeypatch, on_cuda_dispatch, shape):
    residual, update = torch.randn(*shape), torch.randn(*shape).to(torch.bfloat16)
    with torch.no_grad(), LaunchedOps(monkeypatch) as seen:
        got = dispatch.residual_add(residual, update)
    assert seen.triton == ["activations.residual_add"] and seen.ops == [], (seen.triton, seen.ops)
    assert torch.equal(got, residual + update)
    # One dtype (torch's add is vectorized there): torch's add.
    update32 = update.float()
    with torch.no_grad(), LaunchedOps(monkeypatch) as seen:
        got = dispatch.residual_add(residual, update32)
    assert seen.triton == [] and seen.ops == ["add"]
    # A gradient to keep: torch's ops, and their gradients.
    leaf, up = residual.clone().requires_grad_(), update.clone().requires_grad_()
    with LaunchedOps(monkeypatch) as seen:
        out = dispatch.residual_add(leaf, up)
    assert seen.triton == []
    out.backward(torch.ones_like(out))
    assert torch.equal(out, residual + update) and torch.equal(leaf.grad, torch.ones_like(residual))
    assert up.grad.dtype == torch.bfloat16 and torch.equal(up.grad, torch.ones_like(update))


@pytest.mark.parametrize("residual_in_fp32", [True, False], ids=["fp32-stream", "bf16-stream"])
@pytest.mark.parametrize("path", ["cpu", "as-on-cuda"])
def test_training_computes_what_the_previous_block_did(monkeypatch, request, path, residual_in_fp32):
    from tiny_models import VOCAB, build

    if path == "as-on-cuda":
        request.getfixturevalue("on_cuda_dispatch")
    model = build("mamba2", statex_layers=[1], residual_in_fp32=residual_in_fp32).to(torch.bfloat16).train()
    ids = torch.randint(3, VOCAB, (2, 6))
    got = train_step(model, ids)
    monkeypatch.setattr(StateXMamba2Block, "forward", previous_mamba2_block_forward)
    want = train_step(model, ids)
    for g, w in zip(got, want):
        assert g is not None and g.dtype == w.dtype and torch.equal(g, w)


@pytest.mark.parametrize("batch", [1, 3])
def test_a_decode_step_casts_nothing_for_its_norms_and_adds_each_residual_in_one_kernel(
    monkeypatch, on_cuda_dispatch, narrow_row_tiles, batch
):
    # Issue 20: per layer, a bf16 model's step cast the fp32 residual stream to bf16 for the block's norm (a copy
    # kernel) and added the bf16 mixer output to the stream with torch's mixed-dtype add (not vectorized); the
    # first layer also cast the bf16 embeddings to fp32. Now a layer launches its two projections and four
    # kernels at one sequence (the conv and the state update in one: kernels/ssd/conv_state_update.py), five at
    # three, and the step's logits and cache are the previous block's on the same kernels, bit for bit. (With the
    # add handed to the next norm, one kernel adds and normalizes: test_mamba2_residual_norm.py; off here, to see
    # the residual-add kernel.)
    from tiny_models import VOCAB, build, returned_cache

    monkeypatch.setattr(dispatch, "one_launch_add_rmsnorm", lambda *args: None)

    model = build("mamba2", statex_layers=[1]).to(torch.bfloat16)
    layers = model.config.num_hidden_layers
    ids = torch.randint(3, VOCAB, (batch, 6))

    def step(m):
        with torch.no_grad():
            with monkeypatch.context() as prefill:  # on torch for every path (the interpreter's tl.dot misreads bf16)
                prefill.setattr(dispatch, "use_triton", lambda *tensors: False)
                cache = returned_cache(model(ids[:, :-1], use_cache=True))
            with LaunchedOps(m) as seen:
                logits = model(ids[:, -1:], cache=cache, use_cache=True, logits_to_keep=1).logits
        states = [recurrent_state(cache, i) for i in range(layers)] + [conv_state(cache, i) for i in range(layers)]
        return seen, [logits] + states

    seen, got = step(monkeypatch)
    # The projections: cuBLAS (mm) for several rows, the GEMV kernel for one (dispatch.GEMV_MAX_ROWS). After the
    # layers: the final norm and the head (outside the blocks).
    gemv = batch <= dispatch.GEMV_MAX_ROWS
    projection = [] if gemv else ["mm"]
    assert seen.ops[: 1 + 2 * len(projection) * layers] == ["embedding"] + projection * 2 * layers, seen.ops
    assert "add" not in seen.ops, seen.ops
    product = ["linear.gemv"] if gemv else []  # in_proj, out_proj and the head
    one_launch = batch <= dispatch.ONE_LAUNCH_CONV_SSD_MAX_ROWS  # else the conv and the state update, two launches
    # The one launch takes the mixer's gated norm too; the two kernels leave it to its own.
    mixer = ["ssd.conv_state_update"] if one_launch else ["conv.update", "ssd.state_update", "norm.fwd"]
    per_layer = ["norm.fwd", *product, *mixer, *product]
    per_layer += ["activations.residual_add"]
    assert seen.triton == per_layer * layers + ["norm.fwd", *product], seen.triton
    with monkeypatch.context() as m:
        m.setattr(StateXMamba2Block, "forward", previous_mamba2_block_forward)
        _, previous = step(m)
    with monkeypatch.context() as m:
        m.setattr(dispatch, "use_triton", lambda *tensors: False)
        _, on_torch = step(m)
    for g, p, t in zip(got, previous, on_torch):
        assert g.dtype == p.dtype and torch.equal(g, p)
        torch.testing.assert_close(g, t, rtol=2e-2, atol=2e-2)
