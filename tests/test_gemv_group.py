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
from statex_hf.kernels.linear.row_norm import RowNorm
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
        ("two-rows-with-a-norm", ValueError, r"a norm takes one row of x \(a decode step at batch 1\), not 2"),
        ("k", ValueError, r"must be \[N, 40\]"),
        ("dtype", ValueError, r"\(x's dtype, or its norm's output's\)"),
        ("not-contiguous", ValueError, r"contiguous"),
        ("grad", RuntimeError, r"no backward"),
    ],
)
def test_bad_calls_are_one_clear_error(case, error, match):
    x = torch.randn(2 if case.startswith("two-rows") else 1, 40).to(torch.bfloat16)
    ws = weights((4,) * (7 if case == "seven-weights" else 2))
    norm = RowNorm(torch.ones(40, dtype=torch.bfloat16), 1e-6) if case == "two-rows-with-a-norm" else None
    if case == "k":
        ws[1] = weights((4,), k=41)[0]
    if case == "dtype":
        ws[1] = ws[1].float()
    if case == "not-contiguous":
        ws[1] = torch.randn(40, 4).to(torch.bfloat16).T
    if case == "grad":
        ws[1].requires_grad_()
    with pytest.raises(error, match=match):
        gemv_group(x, ws, norm)


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


ROWS = [2, 3, 5, 17]  # the CUDA cores (2 to 4 rows: tiles of 2 and 4) and the tensor cores (from 5: tiles of 16, 64)


# bf16 reaches tl.dot only on the GPU (this interpreter's tl.dot misreads bf16 operands: test_gemv_kernel.py), so from
# 5 rows fp16 stands in for it here; tests/gpu/test_gemv_group_gpu.py runs bf16 there.
ROW_CASES = [(dtype, m) for m in ROWS for name, dtype in DTYPES.items() if not (name == "bf16" and m >= 5)]


@pytest.mark.parametrize("dtype,m", ROW_CASES, ids=lambda case: str(case).replace("torch.", ""))
def test_at_a_batchs_rows_each_output_is_the_product_to_rounding(dtype, m):
    # At more rows the products are cuBLAS's elsewhere: the same sums in another order, so equal to rounding.
    torch.manual_seed(m)
    x = torch.randn(m, 1, 40).to(dtype)
    ws = weights((24, 7, 0, 33, 16), dtype=dtype)
    ys = gemv_group(x, ws)
    gate, up = weights((30, 30), dtype=dtype)
    got = gemv_swiglu(x, gate, up)
    # bf16 / fp16: a product one rounding step off moves silu(gate) * up by that step again.
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for y, w in zip(ys, ws, strict=True):
        assert y.shape == (m, 1, w.shape[0]) and y.dtype == dtype
        torch.testing.assert_close(y, (x.float() @ w.float().T).to(dtype), **tolerance)
    assert got.shape == (m, 1, 30) and got.dtype == dtype
    products = [(x.float() @ w.float().T).to(dtype) for w in (gate, up)]
    torch.testing.assert_close(got, swiglu(*products), **tolerance)


@pytest.mark.parametrize("m", [3, 17])
def test_at_a_batchs_rows_tiles_of_one_row_take_a_program_per_row(monkeypatch, m):
    # A config of one-row tiles (the SAFE fallback, an override) still serves every row: one program per row of x.
    for name in ("linear.gemv", "linear.gemv_group", "linear.gemv_swiglu"):
        monkeypatch.setitem(launch.OVERRIDES, name, SMALL)
    x = torch.randn(m, 40)
    ws = weights((24, 7), dtype=torch.float32)
    for y, w in zip(gemv_group(x, ws), ws, strict=True):
        assert torch.equal(y, torch.cat([gemv(row, w) for row in x.split(1)]))
    gate, up = ws[0], weights((24,), dtype=torch.float32)[0]
    assert torch.equal(gemv_swiglu(x, gate, up), swiglu(torch.cat([gemv(r, gate) for r in x.split(1)]),
                                                        torch.cat([gemv(r, up) for r in x.split(1)])))  # fmt: skip


@pytest.mark.parametrize("rows", [1, 2, 4, 5])
def test_dispatch_takes_a_batchs_rows_in_one_launch_up_to_the_switchs_rows(monkeypatch, on_cuda_dispatch, rows):
    # dispatch.GROUPED_MAX_ROWS = 4: 2 to 4 rows in one launch; 5 rows run apart (None); one row is the one-row path.
    monkeypatch.setattr(dispatch, "GROUPED_MAX_ROWS", 4)
    x = torch.randn(rows, 40).to(torch.bfloat16)
    ws = weights((4, 8, 4))
    fused, swiglu_fused = dispatch.one_launch_products(x, ws), dispatch.one_launch_swiglu(x, ws[0], ws[2])
    if rows == 5:
        assert fused is None and swiglu_fused is None
        return
    products = [(x.float() @ w.float().T).to(torch.bfloat16) for w in ws]
    for y, want in zip(fused, products, strict=True):
        torch.testing.assert_close(y, want)
    torch.testing.assert_close(swiglu_fused, swiglu(products[0], products[2]), rtol=2e-2, atol=2e-2)
    norm = RowNorm(torch.ones(40, dtype=torch.bfloat16), 1e-6)
    # A norm is the one-row prologue's alone: at more rows the caller normalizes and runs its modules.
    assert (dispatch.one_launch_products(x, ws, norm) is None) == (rows > 1)
    monkeypatch.setattr(dispatch, "GEMV_MAX_ROWS", 0)  # the GEMV off (every product cuBLAS's): these too
    assert (dispatch.one_launch_products(x, ws) is None) and dispatch.one_launch_swiglu(x, ws[0], ws[2]) is None
    monkeypatch.setattr(dispatch, "GEMV_MAX_ROWS", 1)
    monkeypatch.setattr(dispatch, "GROUPED_MAX_ROWS", 1)
    assert (dispatch.one_launch_products(x, ws) is None) == (rows > 1)
    monkeypatch.setattr(dispatch, "use_triton", lambda *tensors: False)
    assert dispatch.one_launch_products(x, ws) is None and dispatch.one_launch_swiglu(x, ws[0], ws[2]) is None


def test_with_the_switch_raised_a_compiled_forward_guards_on_no_rows(monkeypatch):
    # The switch, compiling and gradients are read before x's shape: a compiled forward of any batch is one graph
    # (a guard on the rows would compile it again past GROUPED_MAX_ROWS).
    from torch._dynamo.utils import counters

    monkeypatch.setattr(dispatch, "GROUPED_MAX_ROWS", 64)
    ws = weights((8, 8))

    def products(x):
        fused = dispatch.one_launch_products(x, ws), dispatch.one_launch_swiglu(x, *ws)
        return x.sum() + sum(y is None for y in fused)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(products, dynamic=True, backend="eager")
    for rows in (2, 3, 5, 70):
        assert compiled(torch.randn(rows, 40).to(torch.bfloat16)).isfinite()
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_an_empty_batch_gives_empty_products():
    x = torch.randn(0, 1, 40).to(torch.float16)
    ws = weights((8, 3), dtype=torch.float16)
    assert [tuple(y.shape) for y in gemv_group(x, ws)] == [(0, 1, 8), (0, 1, 3)]
    assert gemv_swiglu(x, ws[0], ws[0]).shape == (0, 1, 8)


def test_a_norm_with_tiles_of_more_rows_is_refused_not_dropped(monkeypatch):
    # The norm prologue is one row's: tiles of 16 rows (an override) with a norm would skip it; the kernel refuses.
    for name in ("linear.gemv_group", "linear.gemv_swiglu"):
        monkeypatch.setitem(launch.OVERRIDES, name, configs.TABLES["default"]["m16"])
    x = torch.randn(1, 40).to(torch.float16)
    ws = weights((8, 8), dtype=torch.float16)
    norm = RowNorm(torch.ones(40, dtype=torch.float16), 1e-6)
    with pytest.raises(Exception, match="the norm prologue is one row's"):
        gemv_group(x, ws, norm)
    with pytest.raises(Exception, match="the norm prologue is one row's"):
        gemv_swiglu(x, *ws, norm)


def test_a_gla_decode_step_of_a_batch_takes_its_grouped_launches_with_the_switch_on(monkeypatch, on_cuda_dispatch):
    # At 3 rows with dispatch.GROUPED_MAX_ROWS raised, each layer's mixer takes its five projections in one launch and
    # its MLP its gate, up and SwiGLU in another, where with the switch off they are library products (and a SwiGLU
    # kernel): the same logits to bf16 rounding, the same next tokens.
    model = build("gla").to(torch.bfloat16)
    ids = torch.randint(3, VOCAB, (3, 6))

    def step(grouped_rows: int):
        monkeypatch.setattr(dispatch, "GROUPED_MAX_ROWS", grouped_rows)
        with torch.no_grad(), monkeypatch.context() as m:
            m.setattr(dispatch, "use_triton", lambda *tensors: False)
            cache = returned_cache(model(ids[:, :-1], use_cache=True))
        with torch.no_grad(), monkeypatch.context() as m, LaunchedOps(m) as seen:
            logits = model(ids[:, -1:], cache=cache, use_cache=True, logits_to_keep=1).logits
        return logits, seen

    apart, separate = step(1)
    grouped, seen = step(64)
    layers = model.config.num_hidden_layers
    assert seen.triton.count("linear.gemv_group") == seen.triton.count("linear.gemv_swiglu") == layers, seen.triton
    assert "linear.gemv_group" not in separate.triton and "activations.swiglu" in separate.triton
    assert separate.ops.count("mm") + separate.ops.count("addmm") - (seen.ops.count("mm") + seen.ops.count("addmm")) \
        == 7 * layers  # fmt: skip
    torch.testing.assert_close(grouped, apart, rtol=2e-2, atol=2e-2)
    assert torch.equal(grouped.argmax(-1), apart.argmax(-1))


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
