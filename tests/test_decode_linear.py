"""Issue 20: the models' projections are ``DecodeLinear``; ``dispatch.linear`` sends a one-row no-grad bf16 / fp16
product on CUDA to the Triton GEMV (ahead of cuBLAS there on the H100, ``benchmarks/README.md``) and every other
call to ``F.linear``. Under the Triton interpreter (the ``on_cuda_dispatch`` fixture): which path each call takes,
the kernel's values, and a whole decode step of both families running every projection and the head as the GEMV
with the torch path's results."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from launched_ops import LaunchedOps
from statex_hf.kernels import dependent_launch, dispatch
from statex_hf.kernels.linear import naive_linear
from statex_hf.modeling.decode_linear import DecodeLinear
from tiny_models import FAMILIES, VOCAB, build, returned_cache
from torch import nn
from torch.nn.utils import parametrizations, prune

K, N = 40, 24


def operands(rows, dtype=torch.bfloat16, bias=True):
    x = torch.randn(*rows, K).to(dtype)
    weight = (torch.randn(N, K) / K**0.5).to(dtype)
    return x, weight, (torch.randn(N).to(dtype) if bias else None)


def path_of(monkeypatch, x, weight, bias):
    with LaunchedOps(monkeypatch) as seen:
        y = dispatch.linear(x, weight, bias)
    return ("gemv" if seen.triton == ["linear.gemv"] else "torch" if not seen.triton else seen.triton), y


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("rows", [(), (1,), (1, 1)], ids=["x[K]", "x[1,K]", "x[1,1,K]"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_one_no_grad_row_runs_the_gemv_with_the_fp32_sum_rounded_once(monkeypatch, on_cuda_dispatch, dtype, rows, bias):
    x, weight, b = operands(rows, dtype, bias)
    path, y = path_of(monkeypatch, x, weight, b)
    assert path == "gemv"
    want = naive_linear(x, weight, b)
    assert y.shape == want.shape and y.dtype == dtype
    # The same fp32 products summed in another order, then one rounding: at most one step of the dtype apart.
    torch.testing.assert_close(y.float(), want.float(), rtol=2**-7, atol=1e-6)


@pytest.mark.parametrize(
    "case",
    ["two-rows", "fp32", "needs-grad", "weight-not-contiguous", "off-cuda"],
)
def test_every_other_call_is_f_linear_bit_for_bit(monkeypatch, on_cuda_dispatch, case):
    x, weight, bias = operands(
        (2,) if case == "two-rows" else (1,), torch.float32 if case == "fp32" else torch.bfloat16
    )
    if case == "needs-grad":
        weight.requires_grad_()
    if case == "weight-not-contiguous":
        weight = weight.T.contiguous().T
    if case == "off-cuda":
        monkeypatch.setattr(dispatch, "use_triton", lambda *tensors: False)
    path, y = path_of(monkeypatch, x, weight, bias)
    assert path == "torch"
    assert torch.equal(y, F.linear(x, weight, bias))


def test_decode_linear_is_an_nn_linear_with_its_state_dict():
    # peft's LoRA, quantizers and checkpoints find projections by isinstance(nn.Linear) and by their state dict.
    torch.manual_seed(0)
    plain = nn.Linear(K, N)
    torch.manual_seed(0)
    ours = DecodeLinear(K, N)
    assert isinstance(ours, nn.Linear)
    assert ours.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), plain.state_dict().values()))
    x = torch.randn(3, K, requires_grad=True)
    ours(x).sum().backward()
    assert ours.weight.grad is not None and x.grad is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_a_bf16_decode_step_runs_every_projection_and_the_head_as_the_gemv(
    monkeypatch, on_cuda_dispatch, norms_apart, family
):
    # GLA's MLP at 64 wide, not the default 256: the table's one-row tile takes two rows a program, and under the
    # interpreter the default's gate and up rows took most of a minute.
    narrow_mlp = {"intermediate_size": 64} if family == "gla" else {}
    model = build(family, statex_layers=[1], **narrow_mlp).to(torch.bfloat16)
    layers = model.config.num_hidden_layers
    ids = torch.randint(3, VOCAB, (1, 6))

    def step(m):
        with torch.no_grad():
            with m.context() as prefill:  # the prompt on torch (the interpreter's tl.dot misreads bf16)
                prefill.setattr(dispatch, "use_triton", lambda *tensors: False)
                cache = returned_cache(model(ids[:, :-1], use_cache=True))
            with LaunchedOps(m) as seen:
                logits = model(ids[:, -1:], cache=cache, use_cache=True, logits_to_keep=1).logits
        return seen, logits

    with monkeypatch.context() as m:  # every product its own launch
        m.setattr(dispatch, "one_launch_products", lambda x, weights, norm=None: None)
        m.setattr(dispatch, "one_launch_swiglu", lambda x, gate, up, norm=None: None)
        separate, separate_logits = step(m)
    projections = sum(isinstance(module, DecodeLinear) for module in model.modules())
    assert projections > 2 * layers
    assert separate.triton.count("linear.gemv") == projections, separate.triton
    assert not {"mm", "addmm", "linear"} & set(separate.ops), separate.ops

    # GLA: q, k, v, the gate's low-rank down and g in one launch, gate and up with their SwiGLU in another; the
    # same products (gemv_group's sums are the GEMV's), so the same logits bit for bit.
    seen, logits = step(monkeypatch)
    if family == "gla":
        group = 4 + int(model.config.use_output_gate)
        assert seen.triton.count("linear.gemv_group") == seen.triton.count("linear.gemv_swiglu") == layers
        assert seen.triton.count("linear.gemv") == projections - layers * (group + 2)
        assert "activations.swiglu" not in seen.triton and "activations.swiglu" in separate.triton
        assert len(seen.triton) == len(separate.triton) - layers * (group - 1 + 2)
    else:
        assert seen.triton == separate.triton
    assert torch.equal(logits, separate_logits)
    with monkeypatch.context() as m:
        m.setattr(dispatch, "use_triton", lambda *tensors: False)
        _, on_torch = step(m)
    torch.testing.assert_close(logits, on_torch, rtol=2e-2, atol=2e-2)


class Quantized(torch.Tensor):
    """A weight as torchao's quantized weights and DTensor are: a tensor subclass that computes ``F.linear``
    itself (here twice the plain product, so the test sees whose product it got)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, *rest = args
            return 2 * F.linear(x, weight.as_subclass(torch.Tensor), *rest, **kwargs)
        return super().__torch_function__(func, types, args, kwargs)


def test_a_tensor_subclass_weight_keeps_its_own_linear(monkeypatch, on_cuda_dispatch):
    # The GEMV reads raw memory: on a subclass weight it would bypass the subclass's own product (silently
    # wrong for a quantized or sharded weight), so such a call stays F.linear, fused groups included.
    x, weight, bias = operands((1,))
    module = DecodeLinear(K, N, bias=True).to(torch.bfloat16).requires_grad_(False)
    module.weight = nn.Parameter(weight.as_subclass(Quantized), requires_grad=False)
    module.bias = nn.Parameter(bias, requires_grad=False)
    with torch.no_grad(), LaunchedOps(monkeypatch) as seen:
        y = module(x)
    assert not seen.triton, seen.triton
    assert torch.equal(y, 2 * F.linear(x, weight, bias))
    with torch.no_grad():
        assert dispatch.one_launch_products(x, [weight, module.weight]) is None
        assert dispatch.one_launch_swiglu(x, module.weight, weight) is None


def test_an_empty_batch_is_f_linear_shaped_in_every_path(on_cuda_dispatch):
    # Zero rows of x are "at most one row": the fused launches, which take exactly one, must leave them.
    x, weight, _ = operands((0, 1))
    with torch.no_grad():
        assert dispatch.linear(x, weight).shape == (0, 1, N)
        assert dispatch.one_launch_products(x, [weight, weight]) is None
        assert dispatch.one_launch_swiglu(x, weight, weight) is None


def test_a_weight_made_in_the_call_is_read_by_a_gemv_launched_without_pdl(monkeypatch):
    # Under PDL the one-row GEMV reads its first weight tiles before it waits for the kernel before it
    # (kernels/dependent_launch.py): safe for a stored weight, which no kernel of a decode step writes, but a weight
    # that a parametrization or torch's pruning hook makes in the call is the very output of the kernel before.
    monkeypatch.setattr(dependent_launch, "supported", lambda device: True)  # as on a Hopper GPU
    launched_with_pdl = []

    def linear(x, weight, bias=None):
        launched_with_pdl.append(dependent_launch.pdl_kwargs()["USE_PDL"])
        return F.linear(x, weight, bias)

    monkeypatch.setattr(dispatch, "linear", linear)
    plain, pruned, normed = (DecodeLinear(K, N) for _ in range(3))
    prune.l1_unstructured(pruned, "weight", amount=0.5)
    parametrizations.weight_norm(normed)
    x = torch.randn(1, K)
    with torch.no_grad(), dependent_launch.dependent_launches(torch.device("cuda", 0)):
        for module in (plain, pruned, normed):
            torch.testing.assert_close(module(x), F.linear(x, module.weight, module.bias))
        assert dependent_launch.pdl_kwargs()["USE_PDL"]  # on again after each
    assert launched_with_pdl == [True, False, False]
