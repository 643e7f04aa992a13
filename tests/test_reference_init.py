"""``--init reinit`` draws what the paper's released code draws (thunlp/StateX at 76d15ef; README, "Convert a
checkpoint"): every re-initialized tensor against its distribution, every kept tensor bit for bit."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from source_checkpoints import fla_gla, transformers_mamba2, write_transformers_mamba2

from statex_hf.cli import main
from statex_hf.expansion import expand_gla, expand_mamba2
from statex_hf.expansion.reference_init import GLA_LINEAR_GAIN, torch_default_uniform


def assert_uniform(tensor: torch.Tensor, bound: float, name: str) -> None:
    """``tensor`` looks like iid U(-bound, bound): inside the bound, reaching it, mean 0, std bound/sqrt(3)."""
    values = tensor.double().flatten()
    n = values.numel()
    assert values.abs().max() <= bound * (1 + 1e-6), f"{name}: outside +-{bound}"
    # P(max |x| < 0.98 bound) = 0.98^n: below 1e-4 for n >= 460.
    assert values.abs().max() >= (0.98 if n >= 460 else 0.8) * bound, f"{name}: does not fill +-{bound}"
    expected_std = bound / math.sqrt(3)
    # The sample std of a uniform has relative spread ~0.45/sqrt(n); five of those, at least 2%.
    assert math.isclose(values.std().item(), expected_std, rel_tol=max(0.02, 2.25 / math.sqrt(n))), name
    assert abs(values.mean().item()) <= 5 * expected_std / math.sqrt(n), f"{name}: mean not 0"


def xavier_bound(fan_in: int, fan_out: int) -> float:
    return GLA_LINEAR_GAIN * math.sqrt(6 / (fan_in + fan_out))


# ---- GLA ---------------------------------------------------------------------------------------

GLA_LAYERS = [0, 2]


@pytest.fixture(scope="module", params=[False, True], ids=["no-conv", "short-conv"])
def gla(request):
    model = fla_gla(num_layers=3, num_heads=4, hidden_size=256, use_short_conv=request.param)
    source = {k: v.clone() for k, v in model.state_dict().items()}
    config, out = expand_gla(model.config.to_dict(), source, layers=GLA_LAYERS, seed=11)
    return model.config, source, config, out


def is_reinitialized(name: str) -> bool:
    parts = name.split(".")
    return parts[1] == "layers" and int(parts[2]) in GLA_LAYERS and parts[3] in ("attn", "attn_norm")


def test_gla_every_reinitialized_tensor_has_the_reference_distribution(gla):
    source_config, source, config, out = gla
    checked = set()
    for name, tensor in out.items():
        if not is_reinitialized(name):
            continue
        part = name.split(".", 4)[4] if name.split(".")[3] == "attn" else "attn_norm"
        if name.endswith("norm.weight") or name.endswith("norm_swish_gate.weight"):
            assert torch.equal(tensor, torch.ones_like(tensor)), name  # new norms: weight 1
        elif name.endswith(".bias"):
            assert torch.equal(tensor, torch.zeros_like(tensor)), name  # only gk_proj.1 has one
        elif "conv1d" in part:
            assert tensor.shape[1:] == (1, source_config.conv_size)
            assert_uniform(tensor, 1 / math.sqrt(source_config.conv_size), name)  # nn.Conv1d default, depthwise
        else:
            fan_out, fan_in = tensor.shape
            assert_uniform(tensor, xavier_bound(fan_in, fan_out), name)  # xavier_uniform_(gain=2**-2.5)
        checked.add(part)
    expected = {"attn_norm", "q_proj.weight", "k_proj.weight", "v_proj.weight", "g_proj.weight", "o_proj.weight"}
    expected |= {"gk_proj.0.weight", "gk_proj.1.weight", "gk_proj.1.bias", "g_norm_swish_gate.weight"}
    if source_config.use_short_conv:
        expected |= {"q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight"}
    assert checked == expected


def test_gla_reference_scale_at_the_papers_width():
    """GLA-1.3B's q_proj (1024 x 2048): std ~0.0045, 4.4x below normal(0, 0.02) (README, "Convert a checkpoint")."""
    std = xavier_bound(2048, 1024) / math.sqrt(3)
    assert math.isclose(std, 0.0045, abs_tol=5e-5)


def test_gla_output_norm_spans_the_merged_head(gla):
    _, _, config, out = gla
    assert out["model.layers.0.attn.g_norm_swish_gate.weight"].shape == (config.value_dim,)
    assert out["model.layers.1.attn.g_norm_swish_gate.weight"].shape == (config.value_dim // config.num_heads,)


def test_gla_every_kept_tensor_is_bit_identical(gla):
    _, source, _, out = gla
    assert set(out) == set(source)
    kept = [name for name in out if not is_reinitialized(name)]
    assert any(".mlp." in name and ".layers.0." in name for name in kept)  # the chosen layers' MLPs are kept
    for name in kept:
        assert torch.equal(out[name], source[name]), name
    for name in out:
        if is_reinitialized(name) and out[name].shape == source[name].shape and name.endswith("proj.weight"):
            assert not torch.equal(out[name], source[name]), name


def test_gla_init_is_deterministic_in_the_seed_per_layer_and_order_free():
    model = fla_gla(num_layers=3)
    config, source = model.config.to_dict(), model.state_dict()
    reversed_source = dict(reversed(list(source.items())))  # a checkpoint that streams in another order

    def run(seed, layers, state=source):
        return expand_gla(config, state, layers=layers, seed=seed)[1]

    key = "model.layers.2.attn.q_proj.weight"
    first = run(7, [2])
    assert all(torch.equal(first[k], v) for k, v in run(7, [2]).items())
    assert torch.equal(first[key], run(7, [0, 2])[key])  # independent of the other layers chosen
    assert torch.equal(first[key], run(7, [2], reversed_source)[key])
    assert not torch.equal(first[key], run(8, [2])[key])
    other = run(7, [0, 2])
    assert not torch.equal(other["model.layers.0.attn.q_proj.weight"], other[key])  # layers differ


def test_gla_reinit_keeps_the_checkpoint_dtype():
    model = fla_gla(num_layers=2).to(torch.bfloat16)
    _, out = expand_gla(model.config.to_dict(), model.state_dict(), layers=[0])
    assert {t.dtype for t in out.values()} == {torch.bfloat16}


# ---- Mamba2 ------------------------------------------------------------------------------------

D_MODEL, HEADS, HEAD_DIM, GROUPS, N, N_NEW, KERNEL = 64, 8, 16, 2, 16, 64, 4
D_INNER = HEADS * HEAD_DIM
MAMBA2_LAYERS = [1, 3]


@pytest.fixture(scope="module", params=[False, True], ids=["no-bias", "in-proj-bias"])
def mamba2(request):
    model = transformers_mamba2(
        hidden_size=D_MODEL, num_heads=HEADS, head_dim=HEAD_DIM, state_size=N, n_groups=GROUPS, use_bias=request.param
    )
    source = {k: v.clone() for k, v in model.state_dict().items()}
    config, out = expand_mamba2(model.config.to_dict(), source, layers=MAMBA2_LAYERS, seed=5)
    assert config.statex_state_size == N_NEW and config.conv_kernel == KERNEL
    return source, out, request.param


def split_rows(tensor, param):
    """in_proj [z | x | B | C | dt] or conv1d [x | B | C] along dim 0 -> (z|x or x, B and C, dt or nothing)."""
    head, tail = (2 * D_INNER, HEADS) if param.startswith("in_proj") else (D_INNER, 0)
    return torch.split(tensor, [head, tensor.shape[0] - head - tail, tail])


def test_mamba2_bc_rows_and_channels_are_pytorchs_default_init(mamba2):
    source, out, use_bias = mamba2
    for i in MAMBA2_LAYERS:
        p = f"backbone.layers.{i}.mixer."
        params = ["in_proj.weight", "conv1d.weight", "conv1d.bias"] + (["in_proj.bias"] if use_bias else [])
        for param in params:
            new_head, new_bc, new_tail = split_rows(out[p + param], param)
            old_head, old_bc, old_tail = split_rows(source[p + param], param)
            assert new_bc.shape[0] == 2 * GROUPS * N_NEW and old_bc.shape[0] == 2 * GROUPS * N
            # z, x, dt rows and x conv channels copied bit for bit.
            assert torch.equal(new_head, old_head) and torch.equal(new_tail, old_tail), p + param
            # All B/C rows, old ones included: nn.Linear default U(+-1/sqrt(d_model)), depthwise nn.Conv1d
            # default U(+-1/sqrt(kernel)) for weight and bias.
            fan_in = D_MODEL if param.startswith("in_proj") else KERNEL
            assert_uniform(new_bc, 1 / math.sqrt(fan_in), p + param)
            assert not torch.equal(new_bc[: old_bc.shape[0]], old_bc)


def test_mamba2_reset_parts_are_the_reference_constants(mamba2):
    _, out, _ = mamba2
    for i in MAMBA2_LAYERS:
        p = f"backbone.layers.{i}.mixer."
        assert torch.equal(out[p + "dt_bias"], torch.ones(HEADS))
        assert torch.equal(out[p + "A_log"], torch.log(torch.arange(1, HEADS + 1, dtype=torch.float32)))
        assert torch.equal(out[p + "norm.weight"], torch.ones(D_INNER))


def test_mamba2_every_kept_tensor_is_bit_identical(mamba2):
    source, out, _ = mamba2
    assert set(out) == set(source)
    changed = {"in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "norm.weight"}
    for name, tensor in out.items():
        parts = name.split(".")
        if parts[1] == "layers" and int(parts[2]) in MAMBA2_LAYERS and parts[3] == "mixer":
            if ".".join(parts[4:]) in changed:
                continue
        assert torch.equal(tensor, source[name]), name  # D, out_proj, the block norm, other layers, ...


def test_mamba2_init_is_deterministic_in_the_seed_per_layer_and_order_free():
    model = transformers_mamba2()
    config, source = model.config.to_dict(), model.state_dict()
    reversed_source = dict(reversed(list(source.items())))

    def run(seed, layers, state=source):
        return expand_mamba2(config, state, layers=layers, seed=seed)[1]

    key = "backbone.layers.2.mixer.conv1d.weight"
    first = run(7, [2])
    assert all(torch.equal(first[k], v) for k, v in run(7, [2]).items())
    assert torch.equal(first[key], run(7, [0, 2])[key])
    assert torch.equal(first[key], run(7, [2], reversed_source)[key])
    assert not torch.equal(first[key], run(8, [2])[key])


def test_the_uniform_bound_is_what_pytorch_itself_draws():
    """Our U(+-1/sqrt(fan_in)) against real default-initialized nn.Linear and depthwise nn.Conv1d modules."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(D_MODEL, 4096, bias=True)
    conv = torch.nn.Conv1d(4096, 4096, KERNEL, groups=4096, bias=True)
    generator = torch.Generator().manual_seed(0)
    for real, ours in [
        (linear.weight, torch_default_uniform((4096, D_MODEL), D_MODEL, generator)),
        (linear.bias, torch_default_uniform((4096,), D_MODEL, generator)),
        (conv.weight, torch_default_uniform((4096, 1, KERNEL), KERNEL, generator)),
        (conv.bias, torch_default_uniform((4096,), KERNEL, generator)),
    ]:
        assert math.isclose(real.abs().max().item(), ours.abs().max().item(), rel_tol=1e-2)
        assert math.isclose(real.std().item(), ours.std().item(), rel_tol=0.05)


# ---- the default everywhere --------------------------------------------------------------------


def test_convert_defaults_to_the_reference_init_and_says_so_in_the_card(tmp_path):
    write_transformers_mamba2(tmp_path / "src")
    assert main(["convert", "mamba2", str(tmp_path / "src"), str(tmp_path / "out"), "--layers", "0", "--quiet"]) == 0
    out = load_file(tmp_path / "out" / "model.safetensors")
    assert torch.equal(out["backbone.layers.0.mixer.dt_bias"], torch.ones(4))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Init mode: `reinit`" in card and "thunlp/StateX" in card and "drop_layer" in card


def test_the_model_class_init_is_still_available_by_name():
    model = transformers_mamba2()
    _, out = expand_mamba2(model.config.to_dict(), model.state_dict(), layers=[0], init="reinit-init-weights")
    dt = torch.nn.functional.softplus(out["backbone.layers.0.mixer.dt_bias"])
    assert ((dt >= 1e-3 - 1e-7) & (dt <= 0.1 + 1e-7)).all()  # transformers' dt init, not the reference's 1
