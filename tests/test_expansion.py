"""The StateX surgery on state dicts (statex_hf.expansion): what is kept, what is fresh, what it costs."""

from __future__ import annotations

import math

import pytest
import torch
from source_checkpoints import VOCAB, fla_gla, transformers_mamba2

from statex_hf import StateXGLAForCausalLM, StateXMamba2ForCausalLM
from statex_hf.expansion import StateXInputError, choose_layers, expand_gla, expand_mamba2
from statex_hf.expansion.fresh import fresh_layer_parameters

GLA_MIXER = ("attn.", "attn_norm.")


def gla_source(**kw):
    model = fla_gla(**kw)
    return model.config.to_dict(), {k: v.clone() for k, v in model.state_dict().items()}


def mamba2_source(**kw):
    model = transformers_mamba2(**kw)
    return model.config.to_dict(), {k: v.clone() for k, v in model.state_dict().items()}, model


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else None


# ---- which layers ------------------------------------------------------------------------------


def test_default_layers_are_the_papers_four_evenly_spaced_from_zero():
    assert choose_layers(24) == [0, 6, 12, 18]  # GLA-1.3B
    assert choose_layers(48) == [0, 12, 24, 36]  # Mamba2-1.3B
    assert choose_layers(25) == [0, 6, 12, 18]
    assert choose_layers(2) == [0, 1]


def test_every_k_and_explicit_layers():
    assert choose_layers(48, every=1) == list(range(48))
    assert choose_layers(24, every=6) == [0, 6, 12, 18]
    assert choose_layers(24, layers=[12, 0]) == [0, 12]
    with pytest.raises(StateXInputError, match="layer 12 is listed twice"):  # as the CLI and the config refuse it
        choose_layers(24, layers=[12, 0, 12])
    assert choose_layers(24, layers=[]) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [({"every": 0}, "--every must be a positive integer"), ({"layers": [24]}, "layer index 24 is out of range")],
)
def test_bad_layer_choices_name_the_option(kwargs, message):
    with pytest.raises(StateXInputError, match=message):
        choose_layers(24, **kwargs)


# ---- GLA ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["reinit", "reinit-init-weights"])
@pytest.mark.parametrize("layers", [[0, 2], [1]])
def test_gla_reinit_refreshes_only_the_mixer_and_its_pre_norm(layers, init):
    config, source = gla_source()
    statex_config, out = expand_gla(config, source, layers=layers, init=init, seed=3)
    assert statex_config.statex_layers == layers and statex_config.statex_num_heads == 1
    assert set(out) == set(source)
    for name, tensor in out.items():
        expanded = layer_of(name) in layers and name.split(".")[3] + "." in GLA_MIXER
        if not expanded:
            assert torch.equal(tensor, source[name]), f"{name} must be kept bit for bit"
        elif tensor.shape == source[name].shape:
            assert not torch.equal(tensor, source[name]), f"{name} must be re-initialized"


def test_gla_reinit_init_weights_follows_the_model_class_init():
    config, source = gla_source()
    statex_config, out = expand_gla(config, source, layers=[1], seed=0, init="reinit-init-weights")
    reference = StateXGLAForCausalLM(statex_config).state_dict()  # the class's own _init_weights
    for name, tensor in out.items():
        if layer_of(name) != 1 or not name.split(".")[3].startswith("attn"):
            continue
        ref = reference[name]
        assert tensor.shape == ref.shape
        if name.endswith("norm.weight") or name.endswith("norm_swish_gate.weight") or name.endswith(".bias"):
            assert torch.equal(tensor, ref), name  # deterministic parts of the init: ones / zeros
        else:
            assert math.isclose(tensor.std().item(), ref.std().item(), rel_tol=0.35), name


def test_gla_merged_output_norm_spans_the_merged_head():
    config, source = gla_source(num_heads=4, hidden_size=32)  # value_dim 32: dv 8 -> 32
    _, out = expand_gla(config, source, layers=[0])
    assert out["model.layers.0.attn.g_norm_swish_gate.weight"].shape == (32,)
    assert out["model.layers.1.attn.g_norm_swish_gate.weight"].shape == (8,)


def test_gla_inherit_keeps_projections_and_tiles_the_output_norm():
    config, source = gla_source()
    _, out = expand_gla(config, source, layers=[0], init="inherit")
    norm = "model.layers.0.attn.g_norm_swish_gate.weight"
    assert torch.equal(out[norm], source[norm].repeat(4))
    for name in out:
        if name != norm:
            assert torch.equal(out[name], source[name]), name


def test_gla_partial_merge_to_two_heads():
    config, source = gla_source(num_heads=4)
    statex_config, out = expand_gla(config, source, layers=[0], init="inherit", num_heads=2)
    norm = "model.layers.0.attn.g_norm_swish_gate.weight"
    assert statex_config.statex_num_heads == 2 and torch.equal(out[norm], source[norm].repeat(2))


def test_gla_nothing_expanded_is_the_identity():
    config, source = gla_source()
    statex_config, out = expand_gla(config, source, layers=[])
    assert statex_config.statex_layers == []
    assert all(out[k] is source[k] for k in source)


def test_gla_converted_state_dict_loads_into_the_statex_class():
    config, source = gla_source()
    statex_config, out = expand_gla(config, source)
    model = StateXGLAForCausalLM(statex_config)
    assert not model.load_state_dict(out, strict=True).missing_keys


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_heads": 3}, "--num-heads 3 does not divide num_heads=4"),
        ({"num_heads": 4}, "--num-heads 4 is not fewer than num_heads=4"),
        ({"init": "copy"}, "is not a GLA init mode"),
    ],
)
def test_gla_bad_choices(kwargs, message):
    config, source = gla_source(num_layers=2)
    with pytest.raises(StateXInputError, match=message):
        expand_gla(config, source, **kwargs)


def test_gla_rejects_a_mamba2_config():
    config, source, _ = mamba2_source(num_layers=2)
    with pytest.raises(StateXInputError, match="model_type='mamba2'"):
        expand_gla(config, source)


# ---- Mamba2 ------------------------------------------------------------------------------------


def split_in_proj(weight, d_inner, g, n, heads):
    return torch.split(weight, [d_inner, d_inner, g * n, g * n, heads])


def split_conv(weight, d_inner, g, n):
    return torch.split(weight, [d_inner, g * n, g * n])


def test_mamba2_reinit_init_weights_keeps_z_x_dt_d_out_proj_and_resets_the_state_parts():
    config, source, model = mamba2_source(n_groups=2)
    statex_config, out = expand_mamba2(config, source, layers=[1, 3], init="reinit-init-weights", seed=0)
    d_inner, g, n, n_new, heads = 32, 2, 8, 32, 4
    assert statex_config.statex_state_size == n_new  # default 4x
    for i in range(4):
        p = f"backbone.layers.{i}.mixer."
        if i not in (1, 3):
            assert all(torch.equal(out[k], source[k]) for k in out if k.startswith(f"backbone.layers.{i}."))
            continue
        old = split_in_proj(source[p + "in_proj.weight"], d_inner, g, n, heads)
        new = split_in_proj(out[p + "in_proj.weight"], d_inner, g, n_new, heads)
        for part in (0, 1, 4):  # z, x, dt rows kept exactly
            assert torch.equal(new[part], old[part])
        assert new[2].shape == (g * n_new, 16) and new[3].shape == (g * n_new, 16)
        assert not torch.equal(new[2][:n], old[2][:n])  # B is fresh, old rows included
        for key in ("conv1d.weight", "conv1d.bias"):
            old_c, new_c = split_conv(source[p + key], d_inner, g, n), split_conv(out[p + key], d_inner, g, n_new)
            assert torch.equal(new_c[0], old_c[0])  # x channels kept
            assert new_c[1].shape[0] == g * n_new
        for key in ("D", "out_proj.weight"):
            assert torch.equal(out[p + key], source[p + key])
        assert torch.equal(out[p + "A_log"], torch.log(torch.arange(1, heads + 1, dtype=torch.float32)))
        assert torch.equal(out[p + "norm.weight"], torch.ones(d_inner))
        dt = torch.nn.functional.softplus(out[p + "dt_bias"])
        assert ((dt >= 1e-3 - 1e-7) & (dt <= 0.1 + 1e-7)).all()  # reset into [time_step_min, time_step_max]
        assert not torch.equal(out[p + "dt_bias"], source[p + "dt_bias"])


@pytest.mark.parametrize("n_groups", [1, 2])
def test_mamba2_zero_keeps_old_rows_first_in_every_group(n_groups):
    config, source, _ = mamba2_source(n_groups=n_groups)
    _, out = expand_mamba2(config, source, layers=[0], init="zero", state_size=12)
    d_inner, n, n_new = 32, 8, 12
    key = "backbone.layers.0.mixer.in_proj.weight"
    old_b = split_in_proj(source[key], d_inner, n_groups, n, 4)[2].reshape(n_groups, n, -1)
    new_b = split_in_proj(out[key], d_inner, n_groups, n_new, 4)[2].reshape(n_groups, n_new, -1)
    assert torch.equal(new_b[:, :n], old_b) and not new_b[:, n:].any()
    for key in ("dt_bias", "A_log", "norm.weight"):
        assert torch.equal(out[f"backbone.layers.0.mixer.{key}"], source[f"backbone.layers.0.mixer.{key}"])


def test_mamba2_copy_tiles_old_rows_in_every_group():
    config, source, _ = mamba2_source(n_groups=2)
    _, out = expand_mamba2(config, source, layers=[0], init="copy", state_size=16)
    key = "backbone.layers.0.mixer.conv1d.weight"
    old_c = split_conv(source[key], 32, 2, 8)[2].reshape(2, 8, 1, -1)
    new_c = split_conv(out[key], 32, 2, 16)[2].reshape(2, 16, 1, -1)
    assert torch.equal(new_c, old_c.repeat(1, 2, 1, 1))


@pytest.mark.parametrize("n_groups", [1, 2])
def test_mamba2_zero_expansion_computes_what_the_source_computed(n_groups):
    """Zero rows neither write nor read the new state channels: logits equal transformers' on the source."""
    config, source, model = mamba2_source(n_groups=n_groups, num_layers=2)
    statex_config, out = expand_mamba2(config, source, every=1, init="zero")
    ours = StateXMamba2ForCausalLM(statex_config).eval()
    ours.load_state_dict(out, strict=True)
    ids = torch.randint(0, VOCAB, (2, 19))
    with torch.no_grad():
        assert (ours(ids).logits - model(ids).logits).abs().max() <= 1e-4


def test_mamba2_reinit_init_weights_is_the_model_class_init():
    config, source, _ = mamba2_source(num_layers=2)
    statex_config, out = expand_mamba2(config, source, layers=[1], init="reinit-init-weights")
    reference = StateXMamba2ForCausalLM(statex_config).state_dict()
    conv = "backbone.layers.1.mixer.conv1d.bias"
    assert torch.equal(split_conv(out[conv], 32, 2, 32)[1], split_conv(reference[conv], 32, 2, 32)[1])  # zeros
    key = "backbone.layers.1.mixer.in_proj.weight"
    fresh_b = split_in_proj(out[key], 32, 2, 32, 4)[2]
    ref_b = split_in_proj(reference[key], 32, 2, 32, 4)[2]
    assert math.isclose(fresh_b.std().item(), ref_b.std().item(), rel_tol=0.2)


@pytest.mark.parametrize("family", ["gla", "mamba2"])
def test_model_class_init_is_deterministic_under_the_seed_and_per_layer(family):
    init = "reinit-init-weights"  # the reference init: tests/test_reference_init.py
    if family == "gla":
        config, source = gla_source()
        run = lambda seed, layers: expand_gla(config, source, layers=layers, seed=seed, init=init)[1]  # noqa: E731
        key = "model.layers.2.attn.q_proj.weight"
    else:
        config, source, _ = mamba2_source()
        run = lambda seed, layers: expand_mamba2(config, source, layers=layers, seed=seed, init=init)[1]  # noqa: E731
        key = "backbone.layers.2.mixer.in_proj.weight"
    assert torch.equal(run(7, [2])[key], run(7, [2])[key])
    assert torch.equal(run(7, [2])[key], run(7, [0, 2])[key])  # independent of the other layers chosen
    assert not torch.equal(run(7, [2])[key], run(8, [2])[key])


def test_fresh_layer_parameters_catch_an_init_gap():
    """A parameter the class's _init_weights never writes is an error, not uninitialized memory."""

    class Gappy(StateXMamba2ForCausalLM):
        def _init_weights(self, module):
            pass

    config, _, _ = mamba2_source(num_layers=1)
    from statex_hf import StateXMamba2Config

    statex_config = StateXMamba2Config(**{k: v for k, v in config.items() if k != "model_type"})
    with pytest.raises(RuntimeError, match="left .* uninitialized"):
        fresh_layer_parameters(Gappy, statex_config, "backbone.layers.0", seed=0, layer_idx=0)


# ---- accounting --------------------------------------------------------------------------------


def numel(state):
    return sum(t.numel() for t in state.values())


@pytest.mark.parametrize("use_bias, use_conv_bias", [(False, True), (True, False)])
def test_mamba2_parameter_growth_equals_the_formula(use_bias, use_conv_bias):
    config, source, _ = mamba2_source(n_groups=2, use_bias=use_bias, use_conv_bias=use_conv_bias)
    statex_config, out = expand_mamba2(config, source, layers=[0, 2], state_size=20)
    # + 2 * G * (N' - N) * (d_model + conv_kernel + conv bias + in_proj bias) per expanded layer
    per_layer = 2 * 2 * (20 - 8) * (16 + 4 + int(use_conv_bias) + int(use_bias))
    assert numel(out) - numel(source) == 2 * per_layer


def test_gla_parameters_change_only_by_the_merged_output_norm():
    config, source = gla_source(hidden_size=32, num_heads=4)
    _, out = expand_gla(config, source, layers=[0, 1, 3])
    assert numel(out) - numel(source) == 3 * (32 - 32 // 4)  # projections unchanged; norm weight dv -> H*dv
