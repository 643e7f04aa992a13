"""The GEMV kernel (``kernels/linear/gemv.py``) == ``F.linear`` in fp32 (``kernels/linear/naive.py``).

Under the Triton interpreter (set in conftest), fp32, shapes whose N and K are multiples of no tile: every
bucket of the launch table, split-K with several splits, 3-D and strided inputs, the safe fallback, the
launches a call costs, and the errors. tests/gpu/test_gemv_gpu.py checks bf16 at the 1.3B models' shapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from statex_hf.kernels import launch
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.linear import configs
from statex_hf.kernels.linear import gemv as gemv_module
from statex_hf.kernels.linear.gemv import gemv
from statex_hf.kernels.linear.naive import naive_linear

N, K = 70, 300  # not multiples of any BN (8..64) or BK (32..512)


def inputs(m, n=N, k=K, with_bias=True):
    return torch.randn(m, k), torch.randn(n, k), torch.randn(n) if with_bias else None


def assert_linear(x, weight, bias):
    y = gemv(x, weight, bias)
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], weight.shape[0]) and y.is_contiguous()
    torch.testing.assert_close(y, F.linear(x, weight, bias), rtol=1e-5, atol=1e-4)
    return y


@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_the_tables_pick_equals_f_linear(m, with_bias):
    assert_linear(*inputs(m, with_bias=with_bias))


# The one-row buckets (BM = 1) launch a program per few rows of output for every row of input: under the
# interpreter that is slow, and 3 rows already run their grid axis over rows, so they are not run at 20.
BUCKET_ROWS = [(b, m) for b in configs.TABLES["default"] for m in ([1, 3] if b.startswith("m1") else [1, 5, 20])]


@pytest.mark.parametrize(("bucket", "m"), BUCKET_ROWS, ids=[f"{b}-M{m}" for b, m in BUCKET_ROWS])
@pytest.mark.parametrize("splits", [1, 2, 3, 4])
def test_every_bucket_at_every_split_equals_f_linear(monkeypatch, bucket, splits, m):
    # A config whose BM is below M runs a grid axis over blocks of rows; one above M masks the rest. The
    # elementwise path (BM <= 4) and tl.dot (BM >= 16) both appear; 3 splits do not divide K's steps evenly.
    config = configs.TABLES["default"][bucket].with_(SPLIT_K=splits)
    monkeypatch.setitem(launch.OVERRIDES, "linear.gemv", config)
    assert_linear(*inputs(m))


@pytest.mark.parametrize(
    ("n", "k", "bucket"),
    [
        (8512, 2048, "m1_wide"),  # Mamba2-1.3B's in_proj
        (9280, 2048, "m1_wide"),  # the same at state size 512
        (50288, 2048, "m1_wide"),  # its head
        (8 * 8 * 132, 2048, "m1_wide"),  # 1056 programs of 8 rows: 8 waves of an H100's 132 SMs
        (8 * 8 * 132 - 8, 2048, "m1"),  # a program fewer
        (2048, 4096, "m1"),  # a product of Mamba2's out_proj's shape without its gated norm
        (5632, 2048, "m1"),  # GLA-1.3B's MLP gate and up
        (2048, 5632, "m1"),  # and its down projection
    ],
)
def test_a_one_row_product_takes_the_wide_tiles_where_they_fill_the_gpu_eight_times_over(n, k, bucket):
    cpu = torch.device("cpu")  # picks as for an H100's SMs
    assert configs.pick(1, n, k, cpu) == configs.TABLES["default"][bucket]
    assert configs.one_row_config([n], cpu) == configs.TABLES["default"][bucket]
    assert configs.pick(2, n, k, cpu).BM == 2  # more rows of x: the row buckets as before
    # A gated norm's prologue is paid once a program: such a product (Mamba2's out_proj) takes the wide tiles at any
    # grid, unsplit (its 256 programs at 8 rows a program would otherwise split K in two: ``configs.split_k``).
    assert configs.pick(1, n, k, cpu, gated_norm=True) == configs.TABLES["default"]["m1_wide"]


def test_a_split_longer_than_k_leaves_empty_programs_that_add_zero(monkeypatch):
    monkeypatch.setitem(launch.OVERRIDES, "linear.gemv", LaunchConfig.of(4, 2, BM=1, BN=8, BK=32, SPLIT_K=16))
    assert_linear(*inputs(2, k=40))  # two steps of K, sixteen splits: fourteen of them add nothing


def test_a_3d_input_flattens_its_leading_dimensions():
    x, weight, bias = inputs(6)
    y = assert_linear(x.reshape(2, 3, K), weight, bias)
    assert y.shape == (2, 3, N)


def test_a_row_strided_input_is_read_in_place_and_a_column_strided_one_copied():
    weight, bias = torch.randn(N, K), torch.randn(N)
    wide = torch.randn(3, K + 41)
    assert_linear(wide[:, 7 : 7 + K], weight, bias)  # rows K + 41 apart, as a slice of a projection
    assert_linear(torch.randn(3, 2 * K)[:, ::2], weight, bias)  # every other column: a copy, the same result
    assert_linear(torch.randn(K, 3).t(), weight, bias)


def test_a_weight_not_contiguous_along_k_is_copied_and_still_right():
    x, _, bias = inputs(2)
    assert_linear(x, torch.randn(K, N).t(), bias)


def test_empty_and_degenerate_shapes():
    weight, bias = torch.randn(N, K), torch.randn(N)
    assert gemv(torch.randn(0, K), weight, bias).shape == (0, N)
    assert_linear(torch.randn(3, 0), torch.randn(N, 0), bias)  # K = 0: the bias alone
    assert_linear(torch.randn(3, 0), torch.randn(N, 0), None)


def test_bf16_within_one_step_of_the_fp32_sum():
    # Under the interpreter, bf16 casts truncate (the GPU rounds to nearest): within one bf16 step of the
    # fp32 reference rounded, not bit for bit; the GPU test checks rounding.
    x, weight, bias = (t.to(torch.bfloat16) for t in inputs(3))
    y = gemv(x, weight, bias)
    want = F.linear(x.float(), weight.float(), bias.float())
    assert y.dtype == torch.bfloat16
    assert ((y.float() - want).abs() <= want.abs() * 2**-7 + 1e-3).all()


@pytest.mark.parametrize("m", [3, 16], ids=["elementwise", "dot"])
def test_fp16_on_both_paths_within_one_step_of_the_fp32_sum(m):
    # bf16 reaches tl.dot only on the GPU: this interpreter's tl.dot misreads bf16 operands (a kernel of
    # one tl.dot on bf16 tiles returns garbage on CPU), so fp16 stands in for the half-precision dot here.
    x, weight, bias = (t.half() for t in inputs(m))
    y = gemv(x, weight, bias)
    want = F.linear(x.float(), weight.float(), bias.float())
    assert y.dtype == torch.float16
    assert ((y.float() - want).abs() <= want.abs() * 2**-10 + 1e-3).all()


def test_split_k_gives_the_same_bits_on_every_call(monkeypatch):
    # The partial sums are added in a fixed order (no atomics): a CUDA-graph decode repeats eager's bits.
    monkeypatch.setitem(launch.OVERRIDES, "linear.gemv", configs.TABLES["default"]["m1"].with_(BK=32, SPLIT_K=4))
    x, weight, bias = inputs(1)
    first = gemv(x, weight, bias)
    assert all(torch.equal(gemv(x, weight, bias), first) for _ in range(3))
    torch.testing.assert_close(first, naive_linear(x, weight, bias), rtol=1e-5, atol=1e-4)


class CountedLaunches:
    """Wraps a Triton kernel and counts its launches."""

    def __init__(self, kernel):
        self.kernel, self.count = kernel, 0

    def __getitem__(self, grid):
        self.count += 1
        return self.kernel[grid]


@pytest.mark.parametrize("splits,launches", [(1, 1), (4, 2)])
def test_a_call_is_one_launch_and_a_split_one_more(monkeypatch, splits, launches):
    counted = {name: CountedLaunches(getattr(gemv_module, name)) for name in ("_gemv_kernel", "_split_k_sum_kernel")}
    for name, fake in counted.items():
        monkeypatch.setattr(gemv_module, name, fake)
    monkeypatch.setitem(launch.OVERRIDES, "linear.gemv", configs.TABLES["default"]["m1"].with_(BK=32, SPLIT_K=splits))
    assert_linear(*inputs(1))
    assert sum(fake.count for fake in counted.values()) == launches


def test_the_safe_config_on_a_gpu_the_tuned_one_does_not_fit(monkeypatch):
    from launch_fakes import on_small_gpu

    monkeypatch.setattr(launch, "_REPLACED", {})
    fakes = on_small_gpu(monkeypatch, gemv_module, "_gemv_kernel")
    with pytest.warns(UserWarning, match="linear.gemv.*does not fit"):
        assert_linear(*inputs(3))
    assert {k: fakes["_gemv_kernel"].launches[-1][k] for k in ("BM", "BN", "BK", "SPLIT_K", "num_stages")} == dict(
        BM=1, BN=16, BK=32, SPLIT_K=1, num_stages=1
    )


def test_split_k_only_where_the_weight_is_too_short_to_fill_the_gpu():
    cpu = torch.device("cpu")  # off CUDA the rule assumes an H100's 132 SMs
    # GLA's q / k projection at B = 1: 256 blocks of 4 rows are under two waves, but K = 2048 is two steps of
    # 1024: too short to split (and unsplit was faster on the H100).
    q = configs.pick(1, 1024, 2048, cpu)
    assert q.BM == 1 and q.SPLIT_K == 1
    # A short weight over a long K: 64 blocks, split until the splits would have one step each.
    assert configs.pick(1, 256, 8192, cpu).SPLIT_K == 4
    # The lm_head: 4000 blocks, many waves: one launch, no split.
    assert configs.pick(1, 32000, 2048, cpu).SPLIT_K == 1
    # A 16-column K (the gate's low-rank up projection) has one step: nothing to split.
    assert configs.pick(1, 1024, 16, cpu).SPLIT_K == 1
    # Rows of x choose the path: elementwise up to 4, tl.dot from 5 on.
    assert [configs.pick(m, 2048, 2048, cpu).BM for m in (1, 2, 3, 4, 5, 16, 17, 64)] == [1, 2, 4, 4, 16, 16, 64, 64]


def test_a_call_that_needs_a_gradient_is_an_error_and_no_grad_is_fine():
    x, weight, bias = inputs(2)
    weight.requires_grad_()
    with pytest.raises(RuntimeError, match="no backward.*torch.no_grad"):
        gemv(x, weight, bias)
    with torch.no_grad():
        assert_linear(x, weight, bias)


@pytest.mark.parametrize(
    "case,match",
    [
        ("k", r"do not multiply"),
        ("bias", r"bias \(71,\) must be \[N\]"),
        ("dtype", r"one dtype"),
        ("int", r"one dtype"),
    ],
)
def test_bad_inputs_get_one_clear_line(case, match):
    x, weight, bias = inputs(2)
    if case == "k":
        x = torch.randn(2, K + 1)
    elif case == "bias":
        bias = torch.randn(N + 1)
    elif case == "dtype":
        weight = weight.double()
    else:
        x, weight, bias = x.long(), weight.long(), None
    with pytest.raises(ValueError, match=match):
        gemv(x, weight, bias)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("tiles", [(2, 16), (4, 32), (8, 64)], ids=lambda t: f"BN{t[0]}_BK{t[1]}")
def test_one_row_over_several_steps_with_the_look_ahead_masked_at_k(monkeypatch, tiles, splits):
    # The one-row loop loads each step's tiles a step ahead: K = 300 is 3 to 19 steps here, its last one partly
    # masked and the look-ahead past it masked whole; N = 70 leaves a part block; 3 splits each start mid-K.
    bn, bk = tiles
    config = configs.TABLES["default"]["m1"].with_(BN=bn, BK=bk, SPLIT_K=splits)
    monkeypatch.setitem(launch.OVERRIDES, "linear.gemv", config)
    assert_linear(*inputs(1))
    assert_linear(*inputs(1, k=bk))  # exactly one step: the look-ahead is all of it masked
    assert_linear(*inputs(2, with_bias=False))  # a grid axis over the rows: each program still one row


SM90_PREAMBLE = """
import json, re, sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from statex_hf.kernels import launch
from statex_hf.kernels.linear import configs, gemv, gemv_group

def compiled(fn, signature, constexprs, config):
    # Pointers and the sizes a real call passes (multiples of 16) carry the divisibility Triton's JIT gives them.
    names = list(signature)
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if signature[n] != "constexpr"
             and (signature[n].startswith("*") or n in ("N", "K", "stride_xm", "stride_wn"))}
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    ptx = kernel.asm["ptx"]
    loads = [line for line in ptx.splitlines() if "ld.global" in line]
    ttgir = kernel.asm["ttgir"]
    layouts = dict(re.findall(r"^(#\\w+) = (.*)$", ttgir, re.M))
    summed = sorted({layouts[name] for name in re.findall(r"\\}\\) : \\(tensor<[^,]+, (#\\w+)>\\) ->", ttgir)})
    # Under PDL: the loads before the wait, as whether each is a weight's (weights alone are read evict_first).
    before, waits, _ = ptx.partition("griddepcontrol.wait")
    early = [("evict_first" in line) for line in before.splitlines() if "ld.global" in line] if waits else None
    early_copies = before.count("cp.async") if waits else None  # the tensor-core loop's loads are async copies
    stored = sorted(set(re.findall(r"st\\.global(?:\\.\\w+)*?\\.b(\\d+)", ptx)))  # the widths each value is stored in
    return dict(loads=len(loads), wide=sum(".v4." in line for line in loads), shared=kernel.metadata.shared,
                summed=summed, early=early, stores_early=("st.global" in before) if waits else None, stored=stored,
                to_bf16=ptx.count("cvt.rn.bf16.f32"), tensor_cores=bool(re.search(r"\\b(wgmma|mma)\\.", ptx)),
                early_copies=early_copies, copies=ptx.count("cp.async"))

m1, m1w = configs.TABLES["default"]["m1"], configs.TABLES["default"]["m1_wide"]
c = dict(BM=1, BN=m1.BN, BK=m1.BK, PRECISION="ieee", USE_PDL=False)
w = dict(BM=1, BN=m1w.BN, BK=m1w.BK, PRECISION="ieee", USE_PDL=False)
no_norm = gemv.norm_constants(None, None)
gla_norm = dict(no_norm, NORM=True, X_DTYPE=triton.language.bfloat16, N_DTYPE=triton.language.bfloat16)
norm_args = {"norm_w": "*bf16", "eps": "fp32"}
plain = {n: "*bf16" for n in ("x", "w", "bias", "out")} | {n: "i32" for n in ("M", "N", "K", "stride_xm", "stride_wn")}
plain |= norm_args | {"residual": "*bf16", "gate": "*bf16", "squares": "*fp32", "Q": "i32"}
plain |= {n: "constexpr" for n in ("BM", "BN", "BK", "SPLIT_K", "HAS_BIAS", "PRECISION", "USE_PDL", *no_norm)}
plain |= {"HAS_RESIDUAL": "constexpr", "Y_DTYPE": "constexpr", "GATED": "constexpr", "NQ": "constexpr"}
swiglu = {n: "*bf16" for n in ("x", "wg", "wu", "out")} | {"M": "i32", "N": "i32", "K": "i32"} | norm_args
swiglu |= dict.fromkeys(["BM", "BN", "BK", "PRECISION", "USE_PDL", *no_norm], "constexpr")
group = {"x": "*bf16", "M": "i32", "K": "i32"} | {f"w{i}": "*bf16" for i in range(6)}
group |= {f"y{i}": "*bf16" for i in range(6)} | {f"N{i}": "i32" for i in range(6)}
group |= {f"S{i}": "i32" for i in range(1, 6)} | norm_args
group |= {n: "constexpr" for n in ("G", "BM", "BN", "BK", "PRECISION", "USE_PDL", *no_norm)}
residual_pdl = dict(USE_PDL=True, HAS_RESIDUAL=True)
one_row = dict(BM=1, SPLIT_K=1, HAS_BIAS=False, PRECISION="ieee", HAS_RESIDUAL=False, Y_DTYPE=triton.language.bfloat16,
               GATED=False, NQ=1)
# Mamba2's out_proj: its mixer's gated norm (gate first) in the prologue, the residual add in the epilogue.
mamba2_norm = dict(no_norm, NORM=True, NORM_BEFORE_GATE=False, X_DTYPE=triton.language.bfloat16,
                   N_DTYPE=triton.language.bfloat16, GATED=True, NQ=256)
"""
SM90_COMPILE = (
    SM90_PREAMBLE
    + """
print(json.dumps({
    "gemv": compiled(gemv._gemv_kernel, plain, c | one_row | no_norm, m1),
    "group": compiled(gemv_group._gemv_group_kernel, group, c | dict(G=5) | no_norm, m1),
    "swiglu": compiled(gemv_group._gemv_swiglu_kernel, swiglu, c | no_norm, m1),
    "pdl gemv": compiled(gemv._gemv_kernel, plain, c | one_row | no_norm | dict(USE_PDL=True), m1),
    "pdl group": compiled(gemv_group._gemv_group_kernel, group, c | dict(G=5, USE_PDL=True) | no_norm, m1),
    "pdl swiglu": compiled(gemv_group._gemv_swiglu_kernel, swiglu, c | dict(USE_PDL=True) | no_norm, m1),
    "pdl normed gemv": compiled(gemv._gemv_kernel, plain, c | one_row | gla_norm | dict(USE_PDL=True), m1),
    "pdl normed group": compiled(gemv_group._gemv_group_kernel, group, c | dict(G=5, USE_PDL=True) | gla_norm, m1),
    "pdl normed swiglu": compiled(gemv_group._gemv_swiglu_kernel, swiglu, c | dict(USE_PDL=True) | gla_norm, m1),
    "pdl residual gemv": compiled(gemv._gemv_kernel, plain, c | one_row | no_norm | residual_pdl, m1),
    "pdl gated normed residual gemv": compiled(gemv._gemv_kernel, plain, c | one_row | mamba2_norm | residual_pdl, m1),
    # The wide tiles: Mamba2's in_proj and out_proj, the heads, and groups of wide products.
    "wide pdl gemv": compiled(gemv._gemv_kernel, plain, w | one_row | no_norm | dict(USE_PDL=True), m1w),
    "wide pdl normed gemv": compiled(gemv._gemv_kernel, plain, w | one_row | gla_norm | dict(USE_PDL=True), m1w),
    "wide pdl group": compiled(gemv_group._gemv_group_kernel, group, w | dict(G=5, USE_PDL=True) | no_norm, m1w),
    "wide pdl swiglu": compiled(gemv_group._gemv_swiglu_kernel, swiglu, w | dict(USE_PDL=True) | no_norm, m1w),
    "wide pdl gated normed residual gemv": compiled(gemv._gemv_kernel, plain,
                                                    w | one_row | mamba2_norm | residual_pdl, m1w),
}))
"""
)


def compiled_for_sm90(script: str) -> dict:
    """Kernels compiled for an H100 on this CPU machine by ``script`` (``SM90_PREAMBLE``'s ``compiled``), in a process
    without the interpreter (which replaces triton.jit): each kernel's statistics, as the script prints them."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def sm90_kernels() -> dict:
    """The one-row kernels compiled for an H100 (``SM90_COMPILE``)."""
    return compiled_for_sm90(SM90_COMPILE)


# The heads' one launch with the final norm and fp32 logits (dispatch.FINAL_NORM_IN_HEAD; kernels/linear/row_norm.py):
# GLA's final norm on its bf16 stream, Mamba2's on its fp32 stream cast to bf16; and the split of K's second pass.
SM90_HEADS_COMPILE = (
    SM90_PREAMBLE
    + """
head = plain | {"out": "*fp32"}
mamba2_final_norm = dict(no_norm, NORM=True, NORM_BEFORE_GATE=False, X_DTYPE=triton.language.float32,
                         N_DTYPE=triton.language.bfloat16)
split_sum = {"partials": "*fp32", "bias": "*bf16", "y": "*bf16", "MN": "i32", "N": "i32", "residual": "*bf16"}
split_sum |= dict.fromkeys(["SPLIT_K", "HAS_BIAS", "BLOCK", "USE_PDL", "HAS_RESIDUAL", "Y_DTYPE"], "constexpr")
sums = dict(SPLIT_K=2, HAS_BIAS=False, BLOCK=gemv.SUM_BLOCK, USE_PDL=True, HAS_RESIDUAL=False,
            Y_DTYPE=triton.language.bfloat16)
print(json.dumps({
    "gla head": compiled(gemv._gemv_kernel, head, w | one_row | gla_norm | dict(USE_PDL=True), m1w),
    "mamba2 head": compiled(gemv._gemv_kernel, head | {"x": "*fp32"}, w | one_row | mamba2_final_norm
                            | dict(USE_PDL=True), m1w),
    "wide pdl gemv": compiled(gemv._gemv_kernel, plain, w | one_row | no_norm | dict(USE_PDL=True), m1w),
    "split sum": compiled(gemv._split_k_sum_kernel, split_sum, sums, m1),
    "split sum fp32": compiled(gemv._split_k_sum_kernel, split_sum | {"y": "*fp32"}, sums, m1),
}))
"""
)


def test_the_heads_one_launch_compiles_for_sm90_and_stores_fp32_logits():
    # Built without a GPU (twenty-sixth session): the head's launch with the final norm in its prologue and the fp32
    # logits stored by it, as an H100 or H200 would compile it. Under PDL it asks for its first weight tiles before
    # the wait as the head without the norm does, and reads the stream, the norm's weight and stores only after.
    kernels = compiled_for_sm90(SM90_HEADS_COMPILE)
    # The fp32 logits are the bf16 products' .float(): each rounded to bf16 (to nearest) before its 32-bit store, as
    # the bf16 head rounds before its 16-bit one.
    bf16_head = kernels["wide pdl gemv"]
    for name in ("gla head", "mamba2 head"):
        assert kernels[name]["early"] == bf16_head["early"] and all(kernels[name]["early"]), name
        assert not kernels[name]["stores_early"] and kernels[name]["stored"] == ["32"], (name, kernels[name])
        assert kernels[name]["to_bf16"] == bf16_head["to_bf16"] > 0, (name, kernels[name])
    assert bf16_head["stored"] == ["16"]
    assert kernels["split sum"]["stored"] == ["16"] and kernels["split sum fp32"]["stored"] == ["32"]
    assert kernels["split sum fp32"]["to_bf16"] == kernels["split sum"]["to_bf16"] > 0


# The grouped and SwiGLU launches at a decode step's rows (dispatch.GROUPED_MAX_ROWS): the table's tiles at 16 and 64
# rows, under PDL, as the plain GEMV's many-row kernel at the same tiles.
SM90_ROWS_COMPILE = (
    SM90_PREAMBLE
    + """
table = configs.TABLES["default"]
rows = {}
for m in (16, 64):
    t = table[f"m{m}"]
    tiles = dict(BM=t.BM, BN=t.BN, BK=t.BK, PRECISION="tf32", USE_PDL=True) | no_norm
    rows[f"group {m}"] = compiled(gemv_group._gemv_group_kernel, group, tiles | dict(G=5), t)
    rows[f"swiglu {m}"] = compiled(gemv_group._gemv_swiglu_kernel, swiglu, tiles, t)
    rows[f"gemv {m}"] = compiled(gemv._gemv_kernel, plain, tiles | one_row | dict(BM=t.BM, PRECISION="tf32"), t)
print(json.dumps(rows))
"""
)


def test_the_grouped_launches_at_a_batchs_rows_compile_for_sm90_on_the_tensor_cores():
    # Built without a GPU (twenty-seventh session): at 16 and 64 rows the grouped and SwiGLU kernels multiply on the
    # tensor cores as the plain GEMV does at those rows, their loads pipelined through shared memory as its are (async
    # copies, no plain global load; the same stages), and under PDL they wait before any load or store (the many-row
    # path reads no weight before it waits).
    kernels = compiled_for_sm90(SM90_ROWS_COMPILE)
    for m in (16, 64):
        gemv_stats = kernels[f"gemv {m}"]
        assert gemv_stats["tensor_cores"] and gemv_stats["loads"] == 0, gemv_stats
        for name in (f"group {m}", f"swiglu {m}"):
            stats = kernels[name]
            assert stats["tensor_cores"] and stats["loads"] == 0, (name, stats)
            assert stats["shared"] == gemv_stats["shared"], (name, stats, gemv_stats)
            assert stats["early"] == [] and stats["early_copies"] == 0 < stats["copies"], (name, stats)
            assert not stats["stores_early"], (name, stats)


def test_the_one_row_kernels_compile_for_sm90_to_wide_loads_and_no_shuffle_through_shared_memory(sm90_kernels):
    # Compiled for an H100 on this CPU machine (in a process without the interpreter, which replaces triton.jit):
    # every global load is 16 bytes a thread, and shared memory holds no more than the cross-warp sum of each row
    # (4 bytes per row and warp). The one-row loop of before converted every step's weight tile through shared
    # memory into its accumulator's layout (m1's 4 x 1024 tiles: 4 KB).
    kernels = sm90_kernels
    for name, stats in kernels.items():
        if name.startswith("wide"):
            # 8 warps over an 8 x 1024 tile lie 2 along the rows and 4 along K. The weight tiles still load 16 bytes a
            # thread (two steps in flight, two weights for the SwiGLU), but x, loaded over all 8 warps, loads 8 bytes
            # a thread and goes through shared memory into the tile's layout at every step (1024 fp32: 4 KB). The
            # replayed decode step was faster so all the same (benchmarks/README.md, twentieth session).
            wide = configs.TABLES["default"]["m1_wide"]
            per_step = wide.BN * wide.BK * 2 // (16 * 32 * wide.num_warps)
            assert stats["wide"] == 2 * per_step * (2 if "swiglu" in name else 1), (name, stats)
            assert stats["shared"] <= 4 * wide.BK, (name, stats)
            continue
        tiles = configs.TABLES["default"]["m1"]
        narrow = 1 if "residual" in name else 0  # the residual its epilogue adds: BN values, too few for a wide load
        if "gated" in name:  # and the 256 partial sums of squares, masked at a count Q of no known alignment
            narrow += 256 // (32 * tiles.num_warps)
        assert stats["loads"] > 0 and stats["wide"] == stats["loads"] - narrow, (name, stats)
        assert stats["shared"] <= 4 * tiles.BN * tiles.num_warps, (name, stats)
    # The grouped and SwiGLU kernels' bit-for-bit claim (tests/gpu/test_gemv_group_gpu.py): at each entry's tiles,
    # every sum over K, in the three kernels, reduces a tile of one and the same layout, so in one order; with a norm
    # in their prologue too (which adds the row's sum of squares, another layout).
    for wide in (False, True):
        of_tiles = {name: stats for name, stats in kernels.items() if name.startswith("wide") == wide}
        products = {layout for name, stats in of_tiles.items() if "normed" not in name for layout in stats["summed"]}
        assert len(products) == 1 and all(products <= set(stats["summed"]) for stats in of_tiles.values()), of_tiles


def test_under_pdl_the_one_row_kernels_ask_for_their_first_weight_tiles_before_they_wait(sm90_kernels):
    # kernels/dependent_launch.py's one exception, in the code an H100 runs: before griddepcontrol.wait each one-row
    # kernel loads its first weight tiles (two weights for the SwiGLU: twice the loads) and nothing else (x, written
    # by the kernel before, only after the wait), and stores nothing. Before, every load followed the wait.
    kernels = sm90_kernels
    for name in ("gemv", "group", "swiglu"):
        assert kernels[name]["early"] is None  # no PDL: no wait compiled in
        for pdl_name in (f"pdl {name}", f"pdl normed {name}"):  # a norm's prologue reads x and its weight after
            early = kernels[pdl_name]["early"]
            assert early and all(early), (pdl_name, early)
            assert not kernels[pdl_name]["stores_early"], pdl_name
    assert len(kernels["pdl swiglu"]["early"]) == 2 * len(kernels["pdl gemv"]["early"])
    assert kernels["pdl residual gemv"]["early"] == kernels["pdl gemv"]["early"]  # the residual after the wait
    # Mamba2's out_proj: y, z, the norm's weight and the partial sums of squares are all read after the wait.
    assert kernels["pdl gated normed residual gemv"]["early"] == kernels["pdl gemv"]["early"]
    for name in ("gemv", "normed gemv", "group", "swiglu", "gated normed residual gemv"):  # the same at wide tiles
        early = kernels[f"wide pdl {name}"]["early"]
        assert early == kernels["wide pdl gemv"]["early"] * (2 if name == "swiglu" else 1) and all(early), name
        assert not kernels[f"wide pdl {name}"]["stores_early"], name
