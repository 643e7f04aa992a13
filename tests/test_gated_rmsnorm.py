"""Gated RMSNorm: the Triton kernel == the PyTorch reference (forward, dx, dgate, dweight) in both orders
(Mamba2's gate first, GLA's norm first), and the models' ``StateXMamba2RMSNorm`` / ``StateXGLARMSNorm`` ==
the reference.

The kernel runs under the Triton interpreter (set in conftest), fp32, tiny shapes: one group and several,
groups that are not a power of two wide (masked lanes), rows that are not a multiple of the row block, with
and without a gate or a weight, multi-head ``[b, t, h, d]`` inputs, and groups wider than a block (the
chunked path, forced by shrinking the block).
"""

from __future__ import annotations

import pytest
import torch
from launched_ops import LaunchedOps
from statex_hf.kernels import launch
from statex_hf.kernels.norm import configs
from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm as gated_rmsnorm_triton
from statex_hf.kernels.norm.naive import naive_gated_rmsnorm as gated_rmsnorm
from statex_hf.modeling.gla.modeling_statex_gla import StateXGLARMSNorm
from statex_hf.modeling.mamba2.modeling_statex_mamba2 import StateXMamba2RMSNorm

EPS = 1e-5


def make_inputs(shape, dtype=torch.float32, weight_dtype=torch.float32):
    return {
        "x": torch.randn(*shape).to(dtype),
        "gate": torch.randn(*shape).to(dtype),
        "weight": (1.0 + 0.5 * torch.randn(shape[-1])).to(weight_dtype),
    }


def run_with_grads(fn, inputs, gated, group_size, **kwargs):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if gated or k != "gate"}
    out = fn(leaves["x"], leaves.get("gate"), leaves.get("weight"), EPS, group_size, **kwargs)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    out.backward(dout)
    return {"out": out, **{f"d{k}": v.grad for k, v in leaves.items()}}, dout


def assert_close(got, want, rtol=1e-5):
    """Max error relative to the largest magnitude (fp32 rounding, not a per-element ratio near zero)."""
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        err = (got[k].double() - want[k].double()).abs().max().item()
        scale = want[k].double().abs().max().item()
        assert err <= rtol * scale, f"{k}: max error {err:.2e} > {rtol:.0e} x {scale:.2e}"


@pytest.mark.parametrize("gated", [True, False], ids=["gate", "no-gate"])
@pytest.mark.parametrize("group_size", [48, 16, 12], ids=["1-group-48", "3-groups-16", "4-groups-12"])
def test_triton_matches_reference_forward_and_all_grads_fp32(group_size, gated):
    inputs = make_inputs((2, 7, 48))
    want, _ = run_with_grads(gated_rmsnorm, inputs, gated, group_size)
    got, _ = run_with_grads(gated_rmsnorm_triton, inputs, gated, group_size)
    assert_close(got, want)


def limit_block(monkeypatch, max_block):
    """Groups wider than ``max_block`` channels are walked in chunks of it."""
    table = {kernel: config.with_(BS=max_block) for kernel, config in configs.TABLES["default"].items()}
    monkeypatch.setitem(configs.TABLES, "default", table)


@pytest.mark.parametrize("group_size", [48, 40], ids=["3-chunks", "3-chunks-last-partial"])
def test_groups_wider_than_a_block_are_walked_in_chunks(monkeypatch, group_size):
    limit_block(monkeypatch, 16)
    config = configs.norm_config("fwd", 14, group_size, torch.device("cpu"))
    assert -(-group_size // config.BS) == 3  # the chunked path is the one under test
    inputs = make_inputs((2, 7, 2 * group_size))
    want, _ = run_with_grads(gated_rmsnorm, inputs, True, group_size)
    got, _ = run_with_grads(gated_rmsnorm_triton, inputs, True, group_size)
    assert_close(got, want)


@pytest.mark.parametrize("max_block", [8192, 8], ids=["one-block", "chunked"])
def test_weight_grad_is_the_sum_over_rows_of_dout_times_normalized_input(monkeypatch, max_block):
    # 150 rows: several row blocks per program and several programs, so dw is partials summed.
    limit_block(monkeypatch, max_block)
    inputs = make_inputs((3, 50, 48))
    config = configs.norm_config("bwd", 150, 16, torch.device("cpu"))
    assert -(-16 // config.BS) == (1 if max_block > 16 else 2)
    programs, rows_per_program = configs.row_programs(150, config.BM, 3, torch.device("cpu"))
    assert programs > 1 and rows_per_program > config.BM
    got, dout = run_with_grads(gated_rmsnorm_triton, inputs, True, 16)
    normalized = gated_rmsnorm(inputs["x"], inputs["gate"], torch.ones(48), EPS, 16)
    by_hand = (dout * normalized).reshape(-1, 48).sum(0)
    assert_close({"dweight": got["dweight"]}, {"dweight": by_hand})
    want, _ = run_with_grads(gated_rmsnorm, inputs, True, 16)
    assert_close({"dweight": got["dweight"]}, {"dweight": want["dweight"]})


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16], ids=["fp32-weight", "bf16-weight"])
def test_bf16_output_dtype_follows_promotion_and_values_match_reference(weight_dtype):
    inputs = make_inputs((2, 7, 48), torch.bfloat16, weight_dtype)
    want, _ = run_with_grads(gated_rmsnorm, inputs, True, 16)
    got, _ = run_with_grads(gated_rmsnorm_triton, inputs, True, 16)
    assert got["out"].dtype == torch.promote_types(torch.bfloat16, weight_dtype)
    # bf16 tolerance: the kernel keeps dn in fp32 where autograd rounds it to bf16, and the interpreter
    # truncates fp32 -> bf16 casts (the GPU rounds to nearest, as torch), so the rounding order of the
    # forward is checked bit for bit only on the GPU (tests/gpu/test_ssd_kernels_gpu.py).
    assert_close(got, want, rtol=2e-2)


@pytest.mark.parametrize("gated", [True, False], ids=["gate", "no-gate"])
def test_model_mamba2_rmsnorm_equals_gated_rmsnorm(gated):
    norm = StateXMamba2RMSNorm(48, eps=EPS, group_size=16)
    with torch.no_grad():
        norm.weight.copy_(1.0 + 0.5 * torch.randn(48))
    inputs = make_inputs((2, 7, 48), torch.bfloat16)
    gate = inputs["gate"] if gated else None
    assert torch.equal(norm(inputs["x"], gate), gated_rmsnorm(inputs["x"], gate, norm.weight, EPS, 16))


def test_the_norm_kernels_fall_back_to_small_tiles_on_a_gpu_they_do_not_fit(monkeypatch):
    # Only 16-wide tiles in one stage fit: both kernels fall back to one row and 16-channel chunks.
    from launch_fakes import on_small_gpu
    from statex_hf.kernels.norm import gated_rmsnorm as norm_module

    monkeypatch.setattr(launch, "_REPLACED", {})
    monkeypatch.setattr(configs, "SAFE", configs.SAFE.with_(BS=16))
    fakes = on_small_gpu(monkeypatch, norm_module, "_norm_fwd_kernel", "_norm_bwd_kernel", max_tile=16)
    inputs = make_inputs((2, 7, 96))
    want, _ = run_with_grads(gated_rmsnorm, inputs, True, 48)
    with pytest.warns(UserWarning, match="does not fit"):
        got, _ = run_with_grads(gated_rmsnorm_triton, inputs, True, 48)
    assert_close(got, want)
    assert all(fake.launches and fake.launches[0]["BS"] == 16 for fake in fakes.values())


# GLA's order, norm first: round(norm(x) * weight * silu(gate)), one group per row (per head for the mixer's
# output norm, whose input is [b, t, heads, head_v_dim]).


def gla_inputs(shape, dtype=torch.float32, weighted=True, weight_dtype=torch.float32):
    inputs = make_inputs(shape, dtype, weight_dtype)
    if not weighted:
        del inputs["weight"]
    return inputs


@pytest.mark.parametrize("weighted", [True, False], ids=["weight", "no-weight"])
@pytest.mark.parametrize("gated", [True, False], ids=["gate", "no-gate"])
@pytest.mark.parametrize(
    "shape",
    [(2, 7, 48), (2, 5, 3, 20), (1, 37, 3, 32)],
    ids=["hidden-48-14-rows", "4-heads-20-wide-30-rows", "3-heads-111-rows"],
)
def test_gla_triton_matches_reference_forward_and_all_grads_fp32(shape, gated, weighted):
    inputs = gla_inputs(shape, weighted=weighted)
    want, _ = run_with_grads(gated_rmsnorm, inputs, gated, shape[-1], norm_before_gate=True)
    got, _ = run_with_grads(gated_rmsnorm_triton, inputs, gated, shape[-1], norm_before_gate=True)
    assert set(got) == {"out", "dx"} | ({"dgate"} if gated else set()) | ({"dweight"} if weighted else set())
    assert_close(got, want)


def test_gla_order_is_not_mamba2_order():
    # The two orders differ (a swapped switch would pass a test that compares a variant with itself).
    inputs = make_inputs((2, 7, 48))
    gla = gated_rmsnorm_triton(**inputs, eps=EPS, group_size=48, norm_before_gate=True)
    mamba2 = gated_rmsnorm_triton(**inputs, eps=EPS, group_size=48, norm_before_gate=False)
    assert (gla - mamba2).abs().max() > 0.1


def test_gla_rows_are_rescaled_by_rms_then_gated():
    # By hand: a row of 3s normalizes to 1s, times the weight, times silu(gate).
    x = torch.full((1, 1, 4), 3.0)
    gate = torch.tensor([[[0.0, 1.0, -1.0, 2.0]]])
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = gated_rmsnorm_triton(x, gate, weight, 0.0, 4, norm_before_gate=True)
    torch.testing.assert_close(out, weight * gate * torch.sigmoid(gate))


@pytest.mark.parametrize("weighted", [True, False], ids=["weight", "no-weight"])
@pytest.mark.parametrize("group_size", [48, 40], ids=["3-chunks", "3-chunks-last-partial"])
def test_gla_rows_wider_than_a_block_are_walked_in_chunks(monkeypatch, group_size, weighted):
    limit_block(monkeypatch, 16)
    config = configs.norm_config("bwd", 14, group_size, torch.device("cpu"))
    assert -(-group_size // config.BS) == 3  # the chunked path is the one under test
    inputs = gla_inputs((2, 7, 2, group_size), weighted=weighted)
    want, _ = run_with_grads(gated_rmsnorm, inputs, True, group_size, norm_before_gate=True)
    got, _ = run_with_grads(gated_rmsnorm_triton, inputs, True, group_size, norm_before_gate=True)
    assert_close(got, want)


@pytest.mark.parametrize("max_block", [8192, 8], ids=["one-block", "chunked"])
def test_gla_weight_grad_is_the_sum_over_rows_of_dout_times_normalized_gated_input(monkeypatch, max_block):
    # 150 rows of 4 heads: several row blocks per program and several programs, so dw is partials summed.
    limit_block(monkeypatch, max_block)
    inputs = make_inputs((3, 50, 4, 16))
    config = configs.norm_config("bwd", 600, 16, torch.device("cpu"))
    programs, rows_per_program = configs.row_programs(600, config.BM, 1, torch.device("cpu"))
    assert programs > 1 and rows_per_program > config.BM
    got, dout = run_with_grads(gated_rmsnorm_triton, inputs, True, 16, norm_before_gate=True)
    normalized_gated = gated_rmsnorm(inputs["x"], inputs["gate"], None, EPS, 16, norm_before_gate=True)
    by_hand = (dout * normalized_gated).reshape(-1, 16).sum(0)
    assert_close({"dweight": got["dweight"]}, {"dweight": by_hand})


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16], ids=["fp32-weight", "bf16-weight"])
def test_gla_bf16_output_is_in_x_dtype_and_values_match_reference(weight_dtype):
    inputs = gla_inputs((2, 7, 4, 12), torch.bfloat16, weight_dtype=weight_dtype)
    want, _ = run_with_grads(gated_rmsnorm, inputs, True, 12, norm_before_gate=True)
    got, _ = run_with_grads(gated_rmsnorm_triton, inputs, True, 12, norm_before_gate=True)
    assert got["out"].dtype == torch.bfloat16  # rounded once to x's dtype, whatever the weight's
    assert got["dweight"].dtype == weight_dtype
    assert_close(got, want, rtol=2e-2)  # bf16: see the Mamba2 bf16 test on the interpreter's casts


def test_mamba2_order_without_a_weight_matches_reference():
    inputs = gla_inputs((2, 7, 48), weighted=False)
    want, _ = run_with_grads(gated_rmsnorm, inputs, True, 16)
    got, _ = run_with_grads(gated_rmsnorm_triton, inputs, True, 16)
    assert_close(got, want)


def previous_gla_rmsnorm(x, gate, weight, eps):
    """StateXGLARMSNorm.forward before it called dispatch (fla's math): the CPU result must not move."""
    weight = None if weight is None else weight.float()
    out = torch.nn.functional.rms_norm(x.float(), x.shape[-1:], weight, eps)
    if gate is not None:
        out = out * torch.nn.functional.silu(gate.float())
    return out.to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("weighted", [True, False], ids=["weight", "no-weight"])
@pytest.mark.parametrize("gated", [True, False], ids=["gate", "no-gate"])
def test_model_gla_rmsnorm_on_cpu_is_bit_for_bit_the_previous_torch_math(gated, weighted, dtype):
    norm = StateXGLARMSNorm(64, eps=1e-6, elementwise_affine=weighted).to(dtype)
    if weighted:
        with torch.no_grad():
            norm.weight.copy_(1.0 + 0.5 * torch.randn(64))
    inputs = make_inputs((2, 7, 3, 64), dtype)
    gate = inputs["gate"] if gated else None
    want = previous_gla_rmsnorm(inputs["x"], gate, norm.weight, norm.eps)
    assert torch.equal(norm(inputs["x"], gate), want)
    assert torch.equal(gated_rmsnorm(inputs["x"], gate, norm.weight, 1e-6, 64, norm_before_gate=True), want)


def strided_rows(shape, extra=5):
    """x and gate ``[..., D]`` as slices of one wider ``[..., 2 D + extra]`` tensor (as Mamba2's z is a slice
    of in_proj's output): rows strided, channels unit-stride."""
    D = shape[-1]
    x, gate, _ = torch.randn(*shape[:-1], 2 * D + extra).split([D, D, extra], dim=-1)
    return x, gate


@pytest.mark.parametrize("max_block", [8192, 16], ids=["one-block", "chunked"])
@pytest.mark.parametrize("norm_before_gate", [False, True], ids=["mamba2", "gla"])
@pytest.mark.parametrize("shape", [(3, 1, 48), (2, 7, 48)], ids=["decode-3-rows", "14-rows"])
def test_forward_reads_strided_rows_without_copies(monkeypatch, shape, norm_before_gate, max_block):
    limit_block(monkeypatch, max_block)
    group_size = 48 if norm_before_gate else 16
    x, gate = strided_rows(shape)
    assert not x.is_contiguous() and not gate.is_contiguous()
    weight = 1.0 + 0.5 * torch.randn(48)
    with torch.no_grad(), LaunchedOps(monkeypatch) as seen:
        out = gated_rmsnorm_triton(x, gate, weight, EPS, group_size, norm_before_gate)
    assert seen.copies == []
    assert out.is_contiguous() and out.shape == x.shape
    with torch.no_grad():
        on_copies = gated_rmsnorm_triton(x.contiguous(), gate.contiguous(), weight, EPS, group_size, norm_before_gate)
        want = gated_rmsnorm(x, gate, weight, EPS, group_size, norm_before_gate)
    assert torch.equal(out, on_copies)
    assert_close({"out": out}, {"out": want})


@pytest.mark.parametrize("norm_before_gate", [False, True], ids=["mamba2", "gla"])
def test_strided_rows_with_gradients_match_reference(norm_before_gate):
    # With a gradient to keep, the forward saves contiguous copies (the backward as before).
    x, gate = strided_rows((2, 7, 48))
    weight = 1.0 + 0.5 * torch.randn(48)
    grads = []
    for fn in (gated_rmsnorm, gated_rmsnorm_triton):
        base = torch.cat([x, gate], dim=-1).detach().requires_grad_()  # one leaf, x and gate its slices
        w = weight.clone().requires_grad_()
        out = fn(base[..., :48], base[..., 48:], w, EPS, 16, norm_before_gate)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
        grads.append({"out": out, "dbase": base.grad, "dweight": w.grad})
    assert_close(grads[1], grads[0])


def fp32_stream(shape, dtype):
    """An fp32 tensor whose first values lie exactly halfway between two ``dtype`` neighbours (round to
    nearest even, not up, not truncated), the rest random."""
    x = torch.randn(*shape)
    mantissa = 7 if dtype == torch.bfloat16 else 10
    k = torch.arange(min(8, x.numel()), dtype=torch.float32)
    x.view(-1)[: k.numel()] = (1.0 + k * 2.0**-mantissa + 2.0 ** -(mantissa + 1)) * (-1.0) ** k
    return x


@pytest.mark.parametrize("max_block", [8192, 16], ids=["one-block", "chunked"])
@pytest.mark.parametrize("gated", [False, True], ids=["no-gate", "gate"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", [(1, 1, 40), (4, 1, 40), (2, 7, 40)], ids=["1x1", "4x1", "2x7"])
def test_an_input_dtype_rounds_x_as_it_loads_it_bit_for_bit_as_a_cast(monkeypatch, shape, dtype, gated, max_block):
    # Issue 20: a Mamba2 block cast its fp32 residual stream to bf16 (one copy kernel per layer) before the norm.
    # The norm of x with input_dtype is the norm of x.to(input_dtype), bit for bit, in that dtype's output
    # dtype, and launches no copy. D = 40: not a power of two (masked lanes), and 3 chunks of 16.
    limit_block(monkeypatch, max_block)
    x = fp32_stream(shape, dtype)
    gate = torch.randn(*shape).to(dtype) if gated else None
    weight = (1.0 + 0.5 * torch.randn(shape[-1])).to(dtype)
    with torch.no_grad(), LaunchedOps(monkeypatch) as seen:
        got = gated_rmsnorm_triton(x, gate, weight, EPS, 40 if not gated else 20, input_dtype=dtype)
    assert seen.ops == [] and seen.triton == ["norm.fwd"], (seen.ops, seen.triton)
    with torch.no_grad():
        want = gated_rmsnorm_triton(x.to(dtype), gate, weight, EPS, 40 if not gated else 20)
    assert got.dtype == want.dtype == dtype
    assert torch.equal(got, want)


def test_an_input_dtype_with_a_gradient_casts_first_on_the_autograd_path():
    x = fp32_stream((2, 7, 48), torch.bfloat16)
    weight = 1.0 + 0.5 * torch.randn(48)
    results = []
    for cast_here in (True, False):
        leaf, w = x.clone().requires_grad_(), weight.to(torch.bfloat16).requires_grad_()
        if cast_here:
            out = gated_rmsnorm_triton(leaf.to(torch.bfloat16), None, w, EPS, 16)
        else:
            out = gated_rmsnorm_triton(leaf, None, w, EPS, 16, input_dtype=torch.bfloat16)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype))
        results.append((out, leaf.grad, w.grad))
    for got, want in zip(results[1], results[0]):
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_the_model_norm_with_an_input_dtype_on_cpu_is_the_cast_then_the_torch_math(dtype):
    norm = StateXMamba2RMSNorm(48, eps=EPS).to(dtype)
    x = fp32_stream((2, 7, 48), dtype)
    assert torch.equal(norm(x, input_dtype=dtype), gated_rmsnorm(x.to(dtype), None, norm.weight, EPS, 48))
