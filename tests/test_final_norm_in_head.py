"""A causal LM's final norm in its head's one-row GEMV, and the fp32 logits stored by that launch
(``dispatch.FINAL_NORM_IN_HEAD``; issue 20: a B = 1 step ended with the final norm, Mamba2's cast of its fp32 output to
bf16, the head's GEMV and the logits' ``.float()``, three or four launches where one does). The kernel against the
norm and product run apart, and a model's decode step against the same step with the switch off, under the
interpreter."""

from __future__ import annotations

import pytest
import torch
from residual_norm_checks import decode
from statex_hf.kernels import dispatch, launch
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.linear.gemv import gemv
from statex_hf.kernels.linear.row_norm import RowNorm
from statex_hf.kernels.norm.gated_rmsnorm import gated_rmsnorm
from tiny_models import VOCAB, build

BF16, F32 = torch.bfloat16, torch.float32
EPS = 1e-5


@pytest.fixture(params=["one-step", "split"])
def gemv_tiles(request, monkeypatch):
    """The table's tiles (a row of 48 in one step), or 16-column steps with K split in two, where the second pass
    (``_split_k_sum_kernel``) stores the products."""
    if request.param == "split":
        monkeypatch.setitem(launch.OVERRIDES, "linear.gemv", LaunchConfig.of(1, 1, BM=1, BN=2, BK=16, SPLIT_K=2))


def operands(rows=1, x_dtype=BF16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(rows, 1, 48, generator=g)).to(x_dtype)
    w = (torch.randn(40, 48, generator=g) / 7).to(BF16)
    norm_weight = (1 + 0.3 * torch.randn(48, generator=g)).to(BF16)
    return x, w, norm_weight, torch.randn(40, generator=g).to(BF16)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fp32_logits_are_the_products_float_bit_for_bit(gemv_tiles, rows, with_bias):
    x, w, _, bias = operands(rows)
    bias = bias if with_bias else None
    with torch.no_grad():
        got = gemv(x, w, bias, out_dtype=F32)
        assert got.dtype == F32 and torch.equal(got, gemv(x, w, bias).float())


def test_fp32_logits_of_a_normed_row_are_its_products_float_bit_for_bit(gemv_tiles):
    x, w, norm_weight, _ = operands()
    norm = RowNorm(norm_weight, EPS)  # GLA's final norm
    with torch.no_grad():
        assert torch.equal(gemv(x, w, norm=norm, out_dtype=F32), gemv(x, w, norm=norm).float())


def test_an_out_dtype_the_kernel_does_not_store_is_one_clear_error():
    x, w, _, _ = operands()
    with torch.no_grad():
        with pytest.raises(ValueError, match="out_dtype torch.float16 is the weight's dtype or fp32"):
            gemv(x, w, out_dtype=torch.float16)
        with pytest.raises(ValueError, match="without a residual"):
            gemv(x, w, residual=torch.zeros(1, 1, 40), out_dtype=F32)


def test_mamba2s_final_norm_cast_to_the_heads_dtype_is_the_norm_then_the_cast_then_the_product(gemv_tiles):
    # norm_f reads the fp32 stream as it is and gives fp32 (its weight times the fp32 normalized row); the head casts
    # that to bf16. The prologue multiplies the unrounded normalized values (kernels/linear/row_norm.py), so the two
    # agree to that rounding, carried through a sum.
    x, w, norm_weight, _ = operands(x_dtype=F32)
    norm = RowNorm(norm_weight, EPS, norm_before_gate=False, output_dtype=BF16)
    assert norm.normed_dtype(F32) == BF16 and norm.applies(x)
    with torch.no_grad():
        normed = gated_rmsnorm(x, None, norm_weight, EPS, 48, norm_before_gate=False)
        assert normed.dtype == F32
        got = gemv(x, w, norm=norm, out_dtype=F32)
        assert got.dtype == F32
        torch.testing.assert_close(got, gemv(normed.to(BF16), w).float(), rtol=2e-2, atol=3e-2)
        exact = normed.double() @ w.double().T  # and the norm and product in fp64, to bf16's rounding
        torch.testing.assert_close(got.double(), exact, rtol=2e-2, atol=3e-2)


def test_the_dispatch_takes_mamba2s_final_norm_only_cast_to_the_weights_dtype(monkeypatch):
    x, w, norm_weight, _ = operands(x_dtype=F32)
    monkeypatch.setattr(dispatch, "use_triton", lambda *tensors: True)
    fp32_output = RowNorm(norm_weight, EPS, norm_before_gate=False)
    with torch.no_grad():
        assert dispatch.one_launch_linear(x, w, norm=fp32_output, out_dtype=F32) is None  # fp32 times bf16 weights
        cast = fp32_output._replace(output_dtype=BF16)
        assert dispatch.one_launch_linear(x, w, norm=cast, out_dtype=F32).dtype == F32


# Layer 1 expanded (the head reads the last layer's stream, whatever its state); Mamba2 with a bf16 stream too.
VARIANTS = [
    ("gla", {"statex_layers": [1]}),
    ("mamba2", {"statex_layers": [1]}),
    ("mamba2", {"residual_in_fp32": False}),
]
IDS = ["gla", "mamba2", "mamba2-bf16-stream"]


def decoded(model, ids, monkeypatch, in_head):
    with monkeypatch.context() as m:
        m.setattr(dispatch, "FINAL_NORM_IN_HEAD", in_head)
        return decode(model, ids, m)


@pytest.mark.parametrize("family,fields", VARIANTS, ids=IDS)
def test_a_decode_step_ends_in_the_heads_launch_and_decodes_as_with_its_final_norm_apart(
    monkeypatch, on_cuda_dispatch, narrow_row_tiles, family, fields
):
    model = build(family, **fields).to(BF16)
    ids = torch.randint(3, VOCAB - 2, (1, 6))
    seen_apart, want = decoded(model, ids, monkeypatch, in_head=False)
    seen, got = decoded(model, ids, monkeypatch, in_head=True)
    # apart: the final norm; with Mamba2's fp32 stream its fp32 output's cast to the head's bf16; the head; the
    # logits' cast to fp32. In the head: its launch alone.
    fp32_stream = getattr(model.config, "residual_in_fp32", False)
    head_apart = ["norm.fwd", *["_to_copy"] * fp32_stream, "linear.gemv", "_to_copy"]
    assert seen_apart.kernels[-len(head_apart) :] == head_apart, seen_apart.kernels
    assert seen.kernels == [*seen_apart.kernels[: -len(head_apart)], "linear.gemv"], seen.kernels
    for g, w in zip(got[:2], want[:2], strict=True):  # the two steps' logits: the norm's rounding apart
        assert g.dtype == w.dtype == F32
        torch.testing.assert_close(g, w, rtol=3e-2, atol=3e-2)
        assert torch.equal(g.argmax(-1), w.argmax(-1))
    for g, w in zip(got[2:], want[2:], strict=True):  # the caches: the layers ran the same kernels
        assert torch.equal(g, w)


def logits_of_step(model, ids, monkeypatch, in_head, **kwargs):
    with torch.no_grad(), monkeypatch.context() as m:
        m.setattr(dispatch, "FINAL_NORM_IN_HEAD", in_head)
        out = model(ids, **kwargs)
    return out


def steps_a_hook_sees(model, ids, monkeypatch, register):
    """The step with the switch off and on (``False``, ``True``), each with a forward hook (``register(hook)`` returns
    its handle) collecting ``(module, output)``: the calls and the logits of each."""
    runs = {}
    for in_head in (False, True):
        calls = []
        handle = register(lambda module, args, output, calls=calls: calls.append((module, output)))
        try:
            runs[in_head] = calls, logits_of_step(model, ids, monkeypatch, in_head=in_head).logits
        finally:
            handle.remove()
    return runs


def assert_the_same_calls(runs):
    """The hook saw the same modules called, each giving the same output (the decoder's last hidden state, the causal
    LM's logits), and the step's logits are the same, with the switch on as off."""
    (calls_off, logits_off), (calls_on, logits_on) = runs[False], runs[True]
    assert [module for module, _ in calls_on] == [module for module, _ in calls_off]
    for (module, got), (_, want) in zip(calls_on, calls_off):
        for field in ("last_hidden_state", "logits"):
            got, want = getattr(got, field, got), getattr(want, field, want)
        assert torch.equal(got, want), type(module).__name__
    assert torch.equal(logits_on, logits_off)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_hooked_decoder_final_norm_or_head_sees_its_usual_calls_and_the_step_is_as_with_the_switch_off(
    monkeypatch, on_cuda_dispatch, narrow_row_tiles, family
):
    model = build(family).to(BF16)
    ids = torch.randint(3, VOCAB - 2, (1, 1))
    decoder = model.get_decoder()
    for module in (decoder, getattr(decoder, decoder.final_norm_name), model.lm_head):
        runs = steps_a_hook_sees(model, ids, monkeypatch, module.register_forward_hook)
        assert len(runs[True][0]) == 1, type(module).__name__
        assert_the_same_calls(runs)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_step_that_returns_hidden_states_or_takes_labels_keeps_the_final_norm_in_the_decoder(
    monkeypatch, on_cuda_dispatch, narrow_row_tiles, family
):
    model = build(family).to(BF16)
    ids = torch.randint(3, VOCAB - 2, (1, 1))
    want = logits_of_step(model, ids, monkeypatch, in_head=False, output_hidden_states=True)
    got = logits_of_step(model, ids, monkeypatch, in_head=True, output_hidden_states=True)
    assert torch.equal(got.logits, want.logits)
    assert torch.equal(got.hidden_states[-1], want.hidden_states[-1])  # the final norm's output, as ever
    labels = torch.randint(3, VOCAB - 2, (1, 1))
    want = logits_of_step(model, ids, monkeypatch, in_head=False, labels=labels)
    got = logits_of_step(model, ids, monkeypatch, in_head=True, labels=labels)
    assert torch.equal(got.logits, want.logits)  # (one token: the shifted loss has no targets, NaN either way)
    torch.testing.assert_close(got.loss, want.loss, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_head_launch_that_does_not_take_the_norm_after_all_runs_the_decoders_norm_then_the_head(
    monkeypatch, on_cuda_dispatch, narrow_row_tiles, family
):
    # The step is told before it runs; the launch decides on the tensors. Where it declines, the head runs the norm
    # as the decoder would have and then its product: the same logits as with the switch off, bit for bit.
    model = build(family).to(BF16)
    ids = torch.randint(3, VOCAB - 2, (1, 1))
    real = dispatch.one_launch_linear
    declined = []

    def no_normed_logits(x, weight, norm=None, residual=None, residual_dtype=None, out_dtype=None):
        if out_dtype is not None:
            declined.append(norm)
            return None
        return real(x, weight, norm, residual, residual_dtype)

    monkeypatch.setattr(dispatch, "one_launch_linear", no_normed_logits)
    want = logits_of_step(model, ids, monkeypatch, in_head=False).logits
    assert not declined
    got = logits_of_step(model, ids, monkeypatch, in_head=True).logits
    assert len(declined) == 1 and torch.equal(got, want)


def test_a_step_with_gradients_on_is_as_with_the_switch_off(monkeypatch, on_cuda_dispatch):
    model = build("gla").to(BF16)
    ids = torch.randint(3, VOCAB - 2, (1, 1))
    grads = []
    for in_head in (False, True):
        monkeypatch.setattr(dispatch, "FINAL_NORM_IN_HEAD", in_head)
        model.zero_grad()
        model(ids).logits.float().sum().backward()
        grads.append(model.get_decoder().norm.weight.grad.clone())
    assert grads[0].abs().sum() > 0 and torch.equal(grads[1], grads[0])


def test_the_decoder_leaves_its_norm_to_the_head_only_for_one_row_of_logits_without_gradients(
    monkeypatch, on_cuda_dispatch
):
    # The decision itself (a fallback that normalizes the same way would hide a wrong one from the results).
    model = build("gla").to(BF16)
    monkeypatch.setattr(dispatch, "FINAL_NORM_IN_HEAD", True)
    one = torch.ones(1, 1, dtype=torch.long)
    step = dict(input_ids=one, inputs_embeds=None, labels=None, output_hidden_states=None, logits_to_keep=0)

    def left_to_head(**changes) -> bool:
        return model._final_norm_for_head(**(step | changes)) is not None

    with torch.no_grad():
        assert left_to_head() and left_to_head(logits_to_keep=1)
        assert left_to_head(input_ids=None, inputs_embeds=torch.zeros(1, 1, model.config.hidden_size, dtype=BF16))
        assert not left_to_head(input_ids=torch.ones(1, 2, dtype=torch.long))  # a prompt
        assert not left_to_head(input_ids=torch.ones(2, 1, dtype=torch.long))  # two sequences
        assert not left_to_head(labels=one)
        assert not left_to_head(output_hidden_states=True)
        assert not left_to_head(logits_to_keep=torch.tensor([0]))
        monkeypatch.setattr(model.config, "output_hidden_states", True)
        assert not left_to_head()
        monkeypatch.setattr(model.config, "output_hidden_states", False)
        monkeypatch.setattr(dispatch, "FINAL_NORM_IN_HEAD", False)
        assert not left_to_head()
        monkeypatch.setattr(dispatch, "FINAL_NORM_IN_HEAD", True)
    assert not left_to_head()  # gradients on


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_a_hook_on_every_module_sees_every_norm_called_and_the_step_is_as_with_the_switch_off(
    monkeypatch, on_cuda_dispatch, narrow_row_tiles, family
):
    # torch's hooks on every module (register_module_forward_hook: its module tracker, a debugger) see each call, as
    # a module's own hooks do: no norm goes into a product's launch, the final norm into the head's neither.
    model = build(family).to(BF16)
    ids = torch.randint(3, VOCAB - 2, (1, 1))
    runs = steps_a_hook_sees(model, ids, monkeypatch, torch.nn.modules.module.register_module_forward_hook)
    decoder = model.get_decoder()
    norms = [m for m in model.modules() if type(m) is type(getattr(decoder, decoder.final_norm_name))]
    assert all(any(module is norm for module, _ in runs[True][0]) for norm in norms)
    assert_the_same_calls(runs)
