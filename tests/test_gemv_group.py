"""The grouped GEMV and the GEMV with a SwiGLU epilogue (``kernels/linear/gemv_group.py``) under the Triton
interpreter: each output equals the separate GEMV's (``gemv.py``), and the SwiGLU the GEMVs' products through
the SwiGLU kernel, bit for bit, at the table's tiles and at small ones that mask rows and columns; what
``dispatch`` sends to them; and a GLA decode step that keeps a hook's or a wrapper's call."""

from __future__ import annotations

import pytest
import torch
from accelerate.hooks import ModelHook, add_hook_to_module
from launched_ops import LaunchedOps
from statex_hf.kernels import dispatch, launch
from statex_hf.kernels.activations.swiglu import swiglu
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.linear import configs
from statex_hf.kernels.linear.gemv import gemv
from statex_hf.kernels.linear.gemv_group import MAX_GROUP, gemv_group, gemv_swiglu
from tiny_models import VOCAB, build, returned_cache
from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SMALL = LaunchConfig.of(4, 1, BM=1, BN=4, BK=16, SPLIT_K=1)  # 40 columns: two full steps and a masked one


@pytest.fixture(params=["table", "small-tiles"])
def tiles(request, monkeypatch):
    """The same tiles for the separate GEMV and the fused kernels (so their sums run in one order)."""
    if request.param == "small-tiles":
        for name in ("linear.gemv", "linear.gemv_group", "linear.gemv_swiglu"):
            monkeypatch.setitem(launch.OVERRIDES, name, SMALL)


def weights(sizes, k=40, dtype=torch.bfloat16):
    return [(torch.randn(n, k) / k**0.5).to(dtype) for n in sizes]


@pytest.mark.usefixtures("tiles")
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("sizes", [(24,), (24, 7), (24, 7, 0, 33, 16), (5, 6, 7, 8, 9, 10)], ids=len)
@pytest.mark.parametrize("lead", [(), (1,), (1, 1)], ids=["x[K]", "x[1,K]", "x[1,1,K]"])
def test_each_output_of_a_group_is_the_separate_gemvs(dtype, sizes, lead):
    x = torch.randn(*lead, 40).to(dtype)
    ws = weights(sizes, dtype=dtype)
    ys = gemv_group(x, ws)
    assert len(ys) == len(ws)
    for y, w in zip(ys, ws):
        want = gemv(x, w)
        assert y.shape == want.shape == (*lead, w.shape[0]) and y.dtype == dtype
        assert torch.equal(y, want)


def test_where_the_gemv_splits_k_the_group_agrees_to_rounding_only():
    # The bit-for-bit claim holds where gemv does not split K (every group input of the 1.3B models, K = 2048); a
    # weight of few rows at a longer K splits there and not here: the same products summed in another order.
    k = 4100
    assert configs.pick(1, 4, 2048, torch.device("cpu")).SPLIT_K == 1
    assert configs.pick(1, 4, k, torch.device("cpu")).SPLIT_K > 1
    torch.manual_seed(0)
    x = torch.randn(1, k)
    ws = weights((4, 16), k=k, dtype=torch.float32)
    ys = gemv_group(x, ws)
    for y, w in zip(ys, ws):
        torch.testing.assert_close(y, gemv(x, w), rtol=1e-5, atol=1e-6)
    assert not all(torch.equal(y, gemv(x, w)) for y, w in zip(ys, ws))


@pytest.mark.usefixtures("tiles")
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("n", [30, 4, 1])
def test_the_swiglu_epilogue_is_the_gemvs_through_the_swiglu_kernel(dtype, n):
    x = torch.randn(1, 1, 40).to(dtype)
    gate, up = weights((n, n), dtype=dtype)
    got = gemv_swiglu(x, gate, up)
    assert got.shape == (1, 1, n) and torch.equal(got, swiglu(gemv(x, gate), gemv(x, up)))


def test_an_empty_k_gives_zeros():
    x = torch.randn(1, 0).to(torch.bfloat16)
    ws = weights((3, 5), k=0)
    assert all(torch.equal(y, torch.zeros(1, w.shape[0], dtype=torch.bfloat16)) for y, w in zip(gemv_group(x, ws), ws))
    assert torch.equal(gemv_swiglu(x, *ws[:1] * 2), torch.zeros(1, 3, dtype=torch.bfloat16))


@pytest.mark.parametrize(
    "case,error,match",
    [
        ("seven-weights", ValueError, r"7 weights; give 1 to 6"),
        ("two-rows", ValueError, r"must be one row"),
        ("k", ValueError, r"must be \[N, 40\]"),
        ("dtype", ValueError, r"\(x's dtype, or its norm's output's\)"),
        ("not-contiguous", ValueError, r"contiguous"),
        ("grad", RuntimeError, r"no backward"),
    ],
)
def test_bad_calls_are_one_clear_error(case, error, match):
    x = torch.randn(2 if case == "two-rows" else 1, 40).to(torch.bfloat16)
    ws = weights((4,) * (7 if case == "seven-weights" else 2))
    if case == "k":
        ws[1] = weights((4,), k=41)[0]
    if case == "dtype":
        ws[1] = ws[1].float()
    if case == "not-contiguous":
        ws[1] = torch.randn(40, 4).to(torch.bfloat16).T
    if case == "grad":
        ws[1].requires_grad_()
    with pytest.raises(error, match=match):
        gemv_group(x, ws)


@pytest.mark.parametrize(
    "case", ["applies", "two-rows", "fp32", "needs-grad", "not-contiguous", "too-many", "off-cuda"]
)
def test_dispatch_fuses_only_what_each_product_would_run_as_the_gemv(monkeypatch, on_cuda_dispatch, case):
    x = torch.randn(2 if case == "two-rows" else 1, 40).to(torch.float32 if case == "fp32" else torch.bfloat16)
    ws = weights((4,) * (MAX_GROUP + 1 if case == "too-many" else 3), dtype=x.dtype)
    if case == "needs-grad":
        ws[0].requires_grad_()
    if case == "not-contiguous":
        ws[2] = torch.randn(40, 4).to(torch.bfloat16).T
    if case == "off-cuda":
        monkeypatch.setattr(dispatch, "use_triton", lambda *tensors: False)
    fused, swiglu_fused = dispatch.one_launch_products(x, ws), dispatch.one_launch_swiglu(x, ws[0], ws[1])
    if case == "applies":
        assert all(torch.equal(y, gemv(x, w)) for y, w in zip(fused, ws))
        assert torch.equal(swiglu_fused, swiglu(gemv(x, ws[0]), gemv(x, ws[1])))
    else:
        assert fused is None
        # The pair is the first two weights: contiguous, and a pair is never too many.
        assert (swiglu_fused is None) == (case not in ("not-contiguous", "too-many"))


def test_products_of_other_tiles_run_apart_and_wide_ones_in_one_launch(monkeypatch, on_cuda_dispatch):
    # At 1.3B shapes the grids of Mamba2's in_proj and the heads alone are wide enough for the wide tiles
    # (configs.one_row_bucket); here a lower bar makes 64 rows wide (8 programs of 8 rows) and 8 rows narrow.
    monkeypatch.setattr(configs, "WIDE_MIN_WAVES", 8 / configs.H100_SMS)
    cpu = torch.device("cpu")
    assert configs.one_row_buckets([8], cpu) == {"m1"} and configs.one_row_buckets([64, 72], cpu) == {"m1_wide"}
    assert configs.one_row_config([64, 8], cpu) == configs.TABLES["default"]["m1"]
    x = torch.randn(1, 40).to(torch.bfloat16)
    narrow, wide, wider = weights((8, 64, 72))
    assert dispatch.one_launch_products(x, [narrow, wide]) is None  # the group would sum wide's rows otherwise
    ys = dispatch.one_launch_products(x, [wide, wider])
    assert all(torch.equal(y, gemv(x, w)) for y, w in zip(ys, [wide, wider], strict=True))
    assert torch.equal(dispatch.one_launch_swiglu(x, wide, wide), swiglu(gemv(x, wide), gemv(x, wide)))


class Scaled(nn.Module):
    """A wrapper as peft's LoRA layers are: the base projection plus something of its own."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.base(x)


class Recorded(ModelHook):
    """An accelerate hook (as ``device_map`` dispatch and offloading add): it replaces the module's ``forward``."""

    def __init__(self, calls: list, case: str) -> None:
        self.calls, self.case = calls, case

    def post_forward(self, module, output):
        self.calls.append(self.case)
        return output


@pytest.mark.parametrize(
    "case",
    ["hook-on-q", "hook-on-gate-sequential", "wrapped-k", "wrapped-up", "accelerate-hook-v", "accelerate-hook-up"],
)
def test_a_gla_decode_step_keeps_hooks_and_wrappers(monkeypatch, on_cuda_dispatch, narrow_row_tiles, case):
    model = build("gla").to(torch.bfloat16)
    ids = torch.randint(3, VOCAB, (1, 6))
    with torch.no_grad(), monkeypatch.context() as m:
        m.setattr(dispatch, "use_triton", lambda *tensors: False)
        cache = returned_cache(model(ids[:, :-1], use_cache=True))
    mixer, mlp = model.model.layers[0].attn, model.model.layers[0].mlp
    calls = []
    if case == "hook-on-q":
        mixer.q_proj.register_forward_hook(lambda module, args, out: calls.append(case))
    if case == "hook-on-gate-sequential":
        mixer.gk_proj.register_forward_hook(lambda module, args, out: calls.append(case))
    if case == "wrapped-k":
        mixer.k_proj = Scaled(mixer.k_proj)
    if case == "wrapped-up":
        mlp.up_proj = Scaled(mlp.up_proj)
    if case.startswith("accelerate"):
        add_hook_to_module(mixer.v_proj if case.endswith("-v") else mlp.up_proj, Recorded(calls, case))
    with torch.no_grad(), LaunchedOps(monkeypatch) as seen:
        model(ids[:, -1:], cache=cache, use_cache=True, logits_to_keep=1)
    layers = model.config.num_hidden_layers
    fused = "linear.gemv_swiglu" if case.endswith("-up") else "linear.gemv_group"
    assert seen.triton.count(fused) == layers - 1, seen.triton  # the other layers are still fused
    assert calls == ([] if case.startswith("wrapped") else [case])
