"""A block's norms in the prologue of the one-row products that read them and its residual adds in the epilogue of
the products that end its sublayers (``kernels/linear/row_norm.py``; issue 20: a B = 1 step launched a norm kernel
before each sublayer). The kernels against the norm kernel and the plain GEMV run one after the other, and a
model's decode step against the same step with the norms and adds apart (``norms_apart``), under the interpreter."""

from __future__ import annotations

import pytest
import torch
from launched_ops import LaunchedOps
from residual_norm_checks import decode
from statex_hf.kernels import dispatch, launch
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.linear.gemv import gemv
from statex_hf.kernels.linear.gemv_group import gemv_group, gemv_swiglu
from statex_hf.kernels.linear.naive import naive_linear
from statex_hf.kernels.linear.row_norm import RowNorm
from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm
from statex_hf.kernels.norm.naive import naive_gated_rmsnorm
from statex_hf.modeling.gla import modeling_statex_gla
from statex_hf.modeling.mamba2 import modeling_statex_mamba2
from tiny_models import VOCAB, build

BF16, F32 = torch.bfloat16, torch.float32
EPS = 1e-5
# GLA's block norm (norm first, x in the model's dtype); Mamba2's (gate first, the fp32 stream read as bf16), and
# Mamba2's with a bf16 stream (residual_in_fp32=False).
FORMS = {"gla": (BF16, True, None), "mamba2": (F32, False, BF16), "mamba2-bf16-stream": (BF16, False, BF16)}


def norm_inputs(form, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_dtype, norm_before_gate, input_dtype = FORMS[form]
    x = (3 * torch.randn(1, 1, k, generator=g)).to(x_dtype)
    weight = (1 + 0.3 * torch.randn(k, generator=g)).to(BF16)
    return x, RowNorm(weight, EPS, norm_before_gate, input_dtype)


def normed_apart(x, norm):
    """The norm kernel's output, what the products multiply when the norm runs on its own."""
    return gated_rmsnorm(x, None, norm.weight, norm.eps, x.shape[-1], norm.norm_before_gate, norm.input_dtype)


def assert_as_apart(got, want):
    """The norm apart rounds its output to bf16 before the products; in the prologue it is not rounded (the products
    take ``u * w`` and the sums are scaled by ``rstd``), so the two differ by that rounding carried through a sum."""
    torch.testing.assert_close(got, want, rtol=2e-2, atol=3e-2)


def assert_the_exact_norm_and_product(got, x, norm, weight):
    """Within one bf16 step of the norm and product computed in fp64 (the interpreter truncates the final cast) plus
    what fp32 sums in another order can move: nothing rounded in between."""
    u = x.to(norm.input_dtype or x.dtype).double()
    normed = u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()
    exact = normed @ weight.double().T
    bound = exact.abs() * 2**-7 + (normed.abs() @ weight.double().abs().T) * x.shape[-1] * 2**-22
    assert ((got.double() - exact).abs() <= bound).all(), ((got.double() - exact).abs() - bound).max()


@pytest.fixture(params=["one-step", "walked"])
def tiles(request, monkeypatch):
    """The one-row table's tiles (``m1``, or ``m1_wide`` with a gated norm; a row of 48 in one step), or 16-column
    steps: the prologue walks the row in three steps for rstd and the products in three more (the GEMV's split of K
    in two, too)."""
    if request.param == "walked":
        small = LaunchConfig.of(1, 1, BM=1, BN=2, BK=16, SPLIT_K=1)
        for name in ("linear.gemv_group", "linear.gemv_swiglu"):
            monkeypatch.setitem(launch.OVERRIDES, name, small)
        monkeypatch.setitem(launch.OVERRIDES, "linear.gemv", small.with_(SPLIT_K=2))
    return request.param


@pytest.mark.parametrize("form", FORMS)
def test_a_norm_in_the_prologue_is_the_norm_kernel_then_the_products(tiles, form):
    x, norm = norm_inputs(form, 48)
    g = torch.Generator().manual_seed(1)
    w = [(torch.randn(n, 48, generator=g) / 7).to(BF16) for n in (24, 6, 40)]
    with torch.no_grad():
        normed = normed_apart(x, norm)
        assert normed.dtype == norm.normed_dtype(x.dtype) == BF16
        assert_as_apart(gemv(x, w[0], norm=norm), gemv(normed, w[0]))
        if tiles == "one-step":  # the GEMV's walked tiles split K: that program normalizes as the norm kernel does
            assert_the_exact_norm_and_product(gemv(x, w[0], norm=norm), x, norm, w[0])
        for got, weight in zip(gemv_group(x, w, norm), w):
            assert_the_exact_norm_and_product(got, x, norm, weight)
        for got, want in zip(gemv_group(x, w, norm), gemv_group(normed, w), strict=True):
            assert_as_apart(got, want)
        assert_as_apart(gemv_swiglu(x, w[0], 2 * w[0], norm), gemv_swiglu(normed, w[0], 2 * w[0]))
        # and the plain PyTorch norm and product, to bf16's rounding
        reference = naive_linear(
            naive_gated_rmsnorm(x.to(norm.input_dtype or x.dtype), None, norm.weight, EPS, 48, norm.norm_before_gate),
            w[0],
        )
        torch.testing.assert_close(gemv(x, w[0], norm=norm), reference, rtol=2e-2, atol=3e-2)


@pytest.mark.parametrize("dtypes", [(BF16, None), (F32, None), (BF16, F32), (torch.float16, F32)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_the_residual_add_in_the_epilogue_is_the_product_then_torchs_add(tiles, dtypes, with_bias):
    residual_dtype, cast_to = dtypes
    product_dtype = torch.float16 if residual_dtype == torch.float16 else BF16
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 1, 48, generator=g).to(product_dtype)
    w = (torch.randn(40, 48, generator=g) / 7).to(product_dtype)
    bias = torch.randn(40, generator=g).to(product_dtype) if with_bias else None
    residual = (10 * torch.randn(1, 1, 40, generator=g)).to(residual_dtype)
    with torch.no_grad():
        got = gemv(x, w, bias, residual=residual, residual_dtype=cast_to)
        want = residual.to(cast_to or residual_dtype) + gemv(x, w, bias)
    assert got.dtype == want.dtype and torch.equal(got, want)


def test_a_norm_and_a_residual_in_one_launch(tiles):
    x, norm = norm_inputs("mamba2", 48)
    w = (torch.randn(40, 48) / 7).to(BF16)
    residual = torch.randn(1, 1, 40)
    with torch.no_grad():
        got = gemv(x, w, norm=norm, residual=residual)
        assert torch.equal(got, residual + gemv(x, w, norm=norm))


def mamba2_mixer_norm(k, seed=3):
    """Mamba2's y and z (bf16), its mixer norm's weight, and the partial sums of ``(y * silu(z))^2`` over blocks of
    the row, as the one-launch step stores them (``conv_state_update(..., gate_squares=True)``)."""
    g = torch.Generator().manual_seed(seed)
    y, z = (2 * torch.randn(2, 1, 1, k, generator=g)).to(BF16)
    weight = (1 + 0.3 * torch.randn(k, generator=g)).to(BF16)
    u = y.float() * torch.nn.functional.silu(z.float())
    partials = u.pow(2).reshape(-1, 8).sum(-1).reshape(1, 1, -1)
    return y, RowNorm(weight, EPS, False, gate=z, squares=partials)


def test_mamba2s_gated_norm_in_out_projs_prologue_is_the_norm_kernel_then_the_product(tiles):
    # Issue 20: a Mamba2 layer's mixer norm, taken by the one-launch step's last program, is now out_proj's: the
    # product normalizes y as the norm kernel rounds it, from the sum of squares the step left in partial sums (added
    # in another order than the norm kernel's: a value one bf16 step away at most), and adds the residual.
    y, norm = mamba2_mixer_norm(48)
    g = torch.Generator().manual_seed(4)
    w = (torch.randn(40, 48, generator=g) / 7).to(BF16)
    residual = 10 * torch.randn(1, 1, 40, generator=g)
    with torch.no_grad():
        normed = gated_rmsnorm(y, norm.gate, norm.weight, EPS, 48, False)
        got = gemv(y, w, norm=norm, residual=residual)
        want = residual + gemv(normed, w)
        assert got.dtype == want.dtype == F32
        torch.testing.assert_close(got, want, rtol=1e-2, atol=2e-2)
        assert torch.equal(gemv(y, w, norm=norm, residual=residual), got)  # the same bits on every call
        # The norm's rstd is the partial sums': scaled, the product's values scale with it.
        fourfold = norm._replace(squares=norm.squares * 4)
        torch.testing.assert_close(gemv(y, w, norm=fourfold), gemv(normed.float().mul(0.5).to(BF16), w), rtol=2e-2,
                                   atol=3e-2)  # fmt: skip
        reference = naive_linear(naive_gated_rmsnorm(y, norm.gate, norm.weight, EPS, 48, False), w)
        torch.testing.assert_close(gemv(y, w, norm=norm), reference, rtol=2e-2, atol=3e-2)


def test_a_gated_norm_is_the_plain_gemvs_alone(monkeypatch):
    y, norm = mamba2_mixer_norm(48)
    w = torch.randn(40, 48).to(BF16)
    monkeypatch.setattr(dispatch, "use_triton", lambda *tensors: True)
    with torch.no_grad():
        assert dispatch.one_launch_linear(y, w, norm=norm) is not None
        assert dispatch.one_launch_products(y, [w, w], norm) is None
        assert dispatch.one_launch_swiglu(y, w, w, norm) is None
        assert dispatch.one_launch_linear(y, w, norm=norm._replace(squares=None)) is None  # a gate without its sums
        assert dispatch.one_launch_linear(y, w, norm=norm._replace(norm_before_gate=True)) is None  # GLA's order
        with pytest.raises(ValueError, match="a gated norm is gemv's alone"):
            gemv_group(y, [w], norm)


@pytest.mark.parametrize(
    "case,match",
    [
        ("two-rows", r"one row of x, not 2"),
        ("norm-width", r"norm's weight \(40,\) must be \[K\] = \[48\]"),
        ("residual-shape", r"residual \(1, 1, 39\) must be \[..., N\]"),
        ("residual-dtype", r"residual_dtype torch.bfloat16 does not hold the residual's torch.float32"),
        ("weight-dtype", r"need one dtype"),
    ],
)
def test_bad_calls_are_one_clear_error(case, match):
    x, norm = norm_inputs("mamba2", 48)
    w = torch.randn(40, 48).to(BF16)
    kwargs = {"norm": norm}
    if case == "two-rows":
        x = x.expand(2, 1, 48)
    elif case == "norm-width":
        kwargs["norm"] = norm._replace(weight=norm.weight[:40])
    elif case == "residual-shape":
        kwargs["residual"] = torch.randn(1, 1, 39)
    elif case == "residual-dtype":
        kwargs.update(norm=None, residual=torch.randn(1, 1, 40), residual_dtype=BF16)
        x = x.to(BF16)
    else:
        w = w.float()  # the norm's output is bf16
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        gemv(x, w, **kwargs)


def test_dispatch_takes_the_fused_products_only_on_the_one_row_no_grad_cuda_path(monkeypatch):
    x, norm = norm_inputs("gla", 48)
    w = torch.randn(40, 48).to(BF16)
    residual = torch.randn(1, 1, 40).to(BF16)
    with torch.no_grad():  # CPU
        assert dispatch.one_launch_linear(x, w, norm=norm, residual=residual) is None
    monkeypatch.setattr(dispatch, "use_triton", lambda *tensors: True)
    with torch.no_grad():
        assert dispatch.one_launch_linear(x, w, norm=norm, residual=residual) is not None
        assert dispatch.one_launch_linear(x.expand(2, 1, 48), w, norm=norm) is None  # two rows
        fp32_out = norm._replace(weight=norm.weight.float(), norm_before_gate=False, input_dtype=BF16)
        assert dispatch.one_launch_linear(x, w, norm=fp32_out) is None  # Mamba2's form promotes to the weight's fp32
        assert dispatch.one_launch_linear(x, w, residual=residual[..., :39]) is None
        assert dispatch.one_launch_products(x, [w, w], norm) is not None
    assert dispatch.one_launch_linear(x, w.requires_grad_(), norm=norm) is None  # a gradient to record


def decoded(model, ids, monkeypatch, apart=False):
    with monkeypatch.context() as m:
        if apart:
            for module in (modeling_statex_gla, modeling_statex_mamba2):
                m.setattr(module, "norms_go_into_products", lambda *args: False)
        return decode(model, ids, m)


# What a layer launches at one row. GLA before: nine kernels, two of them the add + norm kernels
# (test_gla_residual_norm.py); now its norms are in the grouped GEMV's and the SwiGLU GEMV's launches, its adds in
# o_proj's and down_proj's. Mamba2 before: four, one the add + norm kernel (test_mamba2_residual_norm.py); now its norm
# is in in_proj's launch, its add in out_proj's, and the mixer's gated norm in its one-launch step (or, switched on,
# in out_proj's launch: the last test here).
PER_LAYER = {
    "gla": ["linear.gemv_group", "linear.gemv", "fused_recurrent_gla_step_kernel", "norm.fwd", "linear.gemv"]
    + ["linear.gemv_swiglu", "linear.gemv"],
    "mamba2": ["linear.gemv", "ssd.conv_state_update", "linear.gemv"],
}


@pytest.mark.parametrize(
    "family,fields",
    [
        ("gla", {}),
        ("gla", {"statex_layers": [1], "expand_v": 2.0}),  # the values (o_proj's input) wider than the stream
        ("mamba2", {}),
        ("mamba2", {"statex_layers": [1]}),
        ("mamba2", {"residual_in_fp32": False}),
    ],
    ids=["gla", "gla-expanded-values-wider", "mamba2", "mamba2-expanded", "mamba2-bf16-stream"],
)
def test_a_decode_step_launches_no_norm_or_add_of_its_blocks_and_decodes_as_with_them_apart(
    monkeypatch, on_cuda_dispatch, narrow_row_tiles, family, fields
):
    model = build(family, **fields).to(BF16)
    ids = torch.randint(3, VOCAB - 2, (1, 6))
    seen, got = decoded(model, ids, monkeypatch)
    _, want = decoded(model, ids, monkeypatch, apart=True)
    # the final norm; with Mamba2's fp32 stream its fp32 output's cast to the head's bf16; the head; the logits' cast
    head = ["norm.fwd", *["_to_copy"] * getattr(model.config, "residual_in_fp32", False), "linear.gemv", "_to_copy"]
    layers = model.config.num_hidden_layers
    assert seen.kernels == ["embedding", *PER_LAYER[family] * layers, *head], seen.kernels
    assert_decodes_as(got, want)


def assert_decodes_as(got, want):
    """Logits and caches close to the step with its norms apart (a normalized value one bf16 step away moves them a
    little), and the same greedy tokens."""
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g.float(), w.float(), rtol=3e-2, atol=3e-2)
    for g, w in zip(got[:2], want[:2]):  # the two steps' logits
        assert torch.equal(g.argmax(-1), w.argmax(-1))


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_hooked_norm_is_called_and_a_hooked_sublayer_gets_its_usual_input(
    monkeypatch, on_cuda_dispatch, narrow_row_tiles, family
):
    # A hook on a norm sees every call: that norm runs as a module (its products take no prologue); a hook on a
    # sublayer sees the normalized input it always did: the block keeps its norms and adds apart.
    model = build(family).to(BF16)
    ids = torch.randint(3, VOCAB - 2, (1, 6))
    block = model.get_decoder().layers[0]
    norm, sublayer = (block.mlp_norm, block.mlp) if family == "gla" else (block.norm, block.mixer)
    _, want = decoded(model, ids, monkeypatch, apart=True)
    normed_inputs, sublayer_inputs = [], []
    norm.register_forward_hook(lambda module, args, output: normed_inputs.append(output))
    with monkeypatch.context() as m:
        _, got = decode(model, ids, m)
    assert len(normed_inputs) == 3  # the prompt and two steps
    assert_decodes_as(got, want)
    sublayer.register_forward_pre_hook(lambda module, args: sublayer_inputs.append(args[0]))
    with monkeypatch.context() as m:
        seen, got = decode(model, ids, m)
    assert [x.dtype for x in sublayer_inputs] == [BF16] * 3 and torch.equal(sublayer_inputs[-1], normed_inputs[-1])
    assert "norm.add_fwd" in seen.triton  # the hooked block hands its last add to the next block's norm, as before


def test_a_step_with_gradients_on_keeps_the_norms_apart(monkeypatch, on_cuda_dispatch):
    model = build("gla").to(BF16)
    ids = torch.randint(3, VOCAB - 2, (1, 1))
    with LaunchedOps(monkeypatch) as seen:
        model(ids).logits.float().sum().backward()
    assert "linear.gemv" not in seen.triton and "linear.gemv_group" not in seen.triton


class WrappedNorm(torch.nn.Module):
    """A norm put in a block's place by a tool that wraps modules (peft's ``modules_to_save``, a kernel library's
    swap): not a subclass of the family's norm, so it has none of that class's methods."""

    def __init__(self, norm):
        super().__init__()
        self.inner = norm
        self.weight = norm.weight

    def forward(self, hidden_states, **kwargs):
        return self.inner(hidden_states, **kwargs)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_norm_put_in_a_blocks_place_by_a_wrapper_is_called_as_a_module(
    monkeypatch, on_cuda_dispatch, narrow_row_tiles, family
):
    model = build(family).to(BF16)
    ids = torch.randint(3, VOCAB - 2, (1, 1))
    with torch.no_grad():
        want = model(ids).logits
        block = model.get_decoder().layers[0]
        for name in ("attn_norm", "mlp_norm") if family == "gla" else ("norm",):
            setattr(block, name, WrappedNorm(getattr(block, name)))
        got = model(ids).logits  # one row: the block hands the wrapper to its sublayers, which call it
    assert_decodes_as([got], [want])


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_sublayer_handed_its_norm_and_residual_returns_the_residual_plus_its_usual_output(family):
    # Packed documents given as [T, D] (cu_seqlens): the sum has the input's shape, as the sublayer's own output does.
    model = build(family)
    block = model.get_decoder().layers[0]
    h = torch.randn(5, model.config.hidden_size)
    cu_seqlens = torch.tensor([0, 2, 5])
    with torch.no_grad():
        if family == "gla":
            want = h + block.attn(block.attn_norm(h), None, None, cu_seqlens)
            got = block.attn(h, None, None, cu_seqlens, input_norm=block.attn_norm, residual=h)
        else:
            want = h + block.mixer(block.norm(h, input_dtype=block.norm.weight.dtype), None, None, cu_seqlens)
            got = block.mixer(h, None, None, cu_seqlens, block.norm, h, F32)
    assert got.shape == want.shape == h.shape and torch.equal(got, want)


class WrappedLinear(torch.nn.Module):
    """A projection wrapped by a tool (peft's LoRA layer, a quantizer's module): its call is not its weight's product,
    so no one-row kernel takes its norm or its add."""

    def __init__(self, linear):
        super().__init__()
        self.base_layer = linear

    def forward(self, x):
        return self.base_layer(x)


@pytest.mark.parametrize("family,product", [("gla", "q_proj"), ("mamba2", "in_proj")])
def test_a_block_whose_products_cannot_take_its_norm_launches_what_it_did_with_its_norms_apart(
    monkeypatch, on_cuda_dispatch, narrow_row_tiles, family, product
):
    # Its sublayers would normalize and add by themselves: each norm and each add a kernel of its own, where the
    # block with its norms apart adds and normalizes in one (the add + norm kernel).
    model = build(family).to(BF16)
    for block in model.get_decoder().layers:
        sublayer = block.attn if family == "gla" else block.mixer
        setattr(sublayer, product, WrappedLinear(getattr(sublayer, product)))
    ids = torch.randint(3, VOCAB - 2, (1, 6))
    seen, got = decoded(model, ids, monkeypatch)
    seen_apart, want = decoded(model, ids, monkeypatch, apart=True)
    assert seen.kernels == seen_apart.kernels
    assert_decodes_as(got, want)


@pytest.mark.parametrize("fields", [{}, {"statex_layers": [1]}, {"residual_in_fp32": False}])
def test_a_mamba2_step_leaves_its_mixer_norm_to_out_proj_and_decodes_as_with_the_norm_in_its_step(
    monkeypatch, on_cuda_dispatch, narrow_row_tiles, fields
):
    # Issue 20: the one-launch step's last program normalized the group's y after every other program's ticket, a
    # tail on the step's critical path; now out_proj's product normalizes y as it loads it (one group of B and C).
    model = build("mamba2", **fields).to(BF16)
    ids = torch.randint(3, VOCAB - 2, (1, 6))
    asked = []
    one_launch = dispatch.one_launch_conv_ssd

    def recorded(*args, gate_squares=False):
        asked.append(gate_squares)
        return one_launch(*args, gate_squares=gate_squares)

    monkeypatch.setattr(dispatch, "one_launch_conv_ssd", recorded)
    monkeypatch.setattr(dispatch, "GATED_NORM_IN_OUT_PROJ", True)
    seen, got = decoded(model, ids, monkeypatch)
    assert asked[-model.config.num_hidden_layers :] == [True] * model.config.num_hidden_layers
    monkeypatch.setattr(dispatch, "GATED_NORM_IN_OUT_PROJ", False)
    seen_in_step, want = decoded(model, ids, monkeypatch)
    assert not any(asked[-model.config.num_hidden_layers :])
    assert seen.kernels == seen_in_step.kernels and seen.triton.count("norm.fwd") == 1  # the final norm's alone
    assert_decodes_as(got, want)
