"""The decode conv kernel (``kernels/conv/causal_conv1d_update.py``) == the PyTorch path with a conv state.

Under the Triton interpreter (set in conftest), tiny shapes: the output and the final window equal
``naive_causal_conv1d(..., conv_state, output_final_state=True)``, the window is updated in place,
consecutive steps chain, and ``dispatch.causal_conv1d`` routes decode steps (and only those) to it.
"""

from __future__ import annotations

import pytest
import torch
from statex_hf.kernels import dispatch, launch
from statex_hf.kernels.conv import causal_conv1d_update as update_module
from statex_hf.kernels.conv.causal_conv1d_update import causal_conv1d_update
from statex_hf.kernels.conv.naive import naive_causal_conv1d

D = 200  # not a multiple of the channel tile (BD = 128 by default, 32 in the small-tile tests)


def make_inputs(b, T, K, dtype=torch.float32, state_dtype=None, with_bias=True):
    x = torch.randn(b, T, D).to(dtype)
    weight = torch.randn(D, K).to(dtype)
    bias = torch.randn(D).to(dtype) if with_bias else None
    state = torch.randn(b, D, K - 1).to(state_dtype or dtype)
    return x, weight, bias, state


# The Triton interpreter casts fp32 to bf16 by truncation where the GPU rounds to nearest (as torch
# does): on CPU a bf16 result may sit one bf16 step off the torch path's (of the inputs' scale, once an
# input was truncated). tests/gpu/test_conv_update_gpu.py checks bf16 on the GPU.
BF16_STEP = 2**-7 * 8  # one bf16 step at the largest |y| these inputs reach


def assert_step_matches_naive(x, weight, bias, state, activation, atol=1e-5, window_atol=0.0):
    y_ref, window_ref = naive_causal_conv1d(x, weight, bias, activation, state.clone(), True)
    address = state.data_ptr()
    y = causal_conv1d_update(x, weight, state, bias, activation)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert state.data_ptr() == address
    torch.testing.assert_close(y, y_ref, rtol=atol, atol=atol)
    # The window is the naive path's, stored in the state's own dtype (as store_conv_state copies it).
    torch.testing.assert_close(state, window_ref.to(state.dtype), rtol=window_atol, atol=window_atol)


@pytest.mark.parametrize("K", [2, 4])
@pytest.mark.parametrize("T", [1, 2, 5], ids=lambda T: f"T{T}")
@pytest.mark.parametrize("activation", ["silu", None], ids=["silu", "no_act"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_a_step_equals_the_torch_path_and_updates_the_state_in_place(K, T, activation, with_bias):
    # T = 1 is a decode step; T < K - 1 keeps part of the old window, T >= K - 1 replaces it. The sum
    # is the torch path's operation for operation: without an activation the output is bit for bit.
    x, weight, bias, state = make_inputs(3, T, K, with_bias=with_bias)
    assert_step_matches_naive(x, weight, bias, state, activation, atol=1e-5 if activation else 0.0)


def test_two_steps_equal_the_torch_path_over_both_tokens():
    x, weight, bias, state = make_inputs(2, 2, 4)
    y_ref, window_ref = naive_causal_conv1d(x, weight, bias, "silu", state.clone(), True)
    y0 = causal_conv1d_update(x[:, :1], weight, state, bias, "silu")
    y1 = causal_conv1d_update(x[:, 1:], weight, state, bias, "silu")
    torch.testing.assert_close(torch.cat([y0, y1], dim=1), y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, window_ref, rtol=0, atol=0)


def test_a_strided_input_and_a_strided_state():
    # Mamba2's xBC is a slice of the in_proj output (a row stride wider than D); a cache may hold its
    # window transposed. Neither is copied, and the state keeps its own strides.
    wide = torch.randn(2, 1, D + 37)
    x = wide[..., 5 : 5 + D]
    weight, bias = torch.randn(D, 4), torch.randn(D)
    state = torch.randn(2, 3, D).transpose(1, 2)
    assert_step_matches_naive(x, weight, bias, state, "silu")


@pytest.mark.parametrize("T", [1, 2])
def test_bf16_input_and_state(T):
    # Same dtypes: the window is moved, never cast, so it is exact even here.
    x, weight, bias, state = make_inputs(2, T, 4, dtype=torch.bfloat16)
    assert_step_matches_naive(x, weight, bias, state, "silu", atol=BF16_STEP)


def test_an_fp32_state_under_bf16_inputs_is_read_in_bf16_as_the_torch_path_reads_it():
    # The torch path reads the window in x's dtype: the kept inputs come back rounded to bf16.
    x, weight, bias, _ = make_inputs(2, 1, 4, dtype=torch.bfloat16)
    state = torch.randn(2, D, 3)
    kept = state[:, :, 1:].clone()
    assert_step_matches_naive(x, weight, bias, state, "silu", atol=BF16_STEP, window_atol=2**-7)
    assert not torch.equal(state[:, :, :2], kept), "the kept inputs were not rounded to bf16"


def test_a_state_of_the_wrong_shape_is_one_clear_error():
    x, weight, bias, state = make_inputs(2, 1, 4)
    with pytest.raises(ValueError, match=r"conv_state of shape \(2, 200, 3\)"):
        causal_conv1d_update(x, weight, state[:, :, :2], bias)


def test_small_tiles_on_a_gpu_the_tuned_config_does_not_fit(monkeypatch):
    from launch_fakes import on_small_gpu

    monkeypatch.setattr(launch, "_REPLACED", {})
    fakes = on_small_gpu(monkeypatch, update_module, "_conv_update_kernel")
    x, weight, bias, state = make_inputs(2, 1, 4)
    with pytest.warns(UserWarning, match="conv.update.*does not fit"):
        assert_step_matches_naive(x, weight, bias, state, "silu")
    assert fakes["_conv_update_kernel"].launches[-1]["BD"] == 32


def test_dispatch_sends_a_decode_step_to_the_kernel_and_returns_the_cached_state_itself(on_cuda_dispatch):
    x, weight, bias, state = make_inputs(2, 1, 4)
    y_ref, window_ref = naive_causal_conv1d(x, weight, bias, "silu", state.clone(), True)
    with torch.no_grad():
        y, window = dispatch.causal_conv1d(x, weight, bias, "silu", state, True)
    assert window is state
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, window_ref, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["grad", "no_final_state", "packed", "long", "relu"])
def test_dispatch_leaves_the_state_alone_outside_decode(on_cuda_dispatch, case):
    T = dispatch.CONV_UPDATE_MAX_T + 1 if case == "long" else 3
    x, weight, bias, state = make_inputs(1, T, 4)
    before = state.clone()
    if case == "grad":
        weight.requires_grad_()
    kwargs = {"cu_seqlens": torch.tensor([0, 3])} if case == "packed" else {}
    activation = "relu" if case == "relu" else "silu"
    try:
        dispatch.causal_conv1d(x, weight, bias, activation, state, case != "no_final_state", **kwargs)
    except ValueError as error:  # the torch path's one line for an activation it does not have
        assert case == "relu" and "unsupported activation" in str(error)
    torch.testing.assert_close(state, before, rtol=0, atol=0)


@pytest.mark.parametrize(
    "family,fields",
    [("mamba2", {"statex_layers": [1]}), ("gla", {"use_short_conv": True, "statex_layers": [0]})],
    ids=["mamba2", "gla_short_conv"],
)
def test_generate_with_the_conv_on_the_kernels_equals_the_torch_path(monkeypatch, family, fields):
    # Only the conv runs as on a GPU (prefill: the Triton conv; decode steps: the update kernel, in place
    # on the cache's window); everything else stays on the torch path.
    from tiny_models import VOCAB, build, returned_cache

    model = build(family, **fields)
    prompt = torch.randint(3, VOCAB, (2, 6))

    def generate():
        out = model.generate(
            prompt, max_new_tokens=4, do_sample=False, eos_token_id=None, return_dict_in_generate=True,
            output_logits=True,
        )  # fmt: skip
        cache = returned_cache(out)
        windows = [w.clone() for layer in cache.layers for w in layer.conv_states.values()]
        return out.sequences, torch.stack(out.logits), windows

    ids_ref, logits_ref, windows_ref = generate()
    real_conv, steps = dispatch.causal_conv1d, []

    def conv_as_on_gpu(*args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(dispatch, "use_triton", lambda *tensors: True)
            return real_conv(*args, **kwargs)

    def counted_update(x, weight, conv_state, *args):
        steps.append(x.shape[1])
        return causal_conv1d_update(x, weight, conv_state, *args)

    monkeypatch.setattr(dispatch, "causal_conv1d", conv_as_on_gpu)
    monkeypatch.setattr(update_module, "causal_conv1d_update", counted_update)
    ids, logits, windows = generate()
    convs_per_step = model.config.num_hidden_layers * model.config.number_of_conv_states
    assert steps == [1] * 3 * convs_per_step  # every decode step after the prompt's, every conv
    assert torch.equal(ids, ids_ref)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-4, atol=1e-4)
    for got, want in zip(windows, windows_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
