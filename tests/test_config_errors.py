"""Bad configs fail at construction with one message that names the field and the fix."""

import pytest
from tiny_models import gla_config, mamba2_config


@pytest.mark.parametrize(
    "make,fields,message",
    [
        (gla_config, dict(statex_layers=[5]), "statex_layers: layer index 5 is out of range"),
        (gla_config, dict(statex_layers=[0, 0]), "listed twice"),
        (gla_config, dict(statex_layers=[-1]), "out of range"),
        (gla_config, dict(statex_layers="0,1"), "must be a list of layer indices"),
        (gla_config, dict(statex_layers=[0], statex_num_heads=3), "statex_num_heads=3 does not divide num_heads=4"),
        (gla_config, dict(statex_layers=[0], statex_num_heads=4), "statex_num_heads=4 is not fewer than num_heads=4"),
        (gla_config, dict(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
        (gla_config, dict(num_heads=3), "num_heads=3 does not divide"),
        (gla_config, dict(num_kv_heads=2, statex_layers=[0]), "num_kv_heads=2"),
        (gla_config, dict(attn={"layers": [1]}), "hybrid softmax-attention"),
        (gla_config, dict(expand_k=0.33), "non-integer width"),
        (mamba2_config, dict(statex_layers=[2]), "out of range for num_hidden_layers=2"),
        (mamba2_config, dict(statex_layers=[0], statex_state_size=8), "8 is not larger than state_size=8"),
        (mamba2_config, dict(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
        (mamba2_config, dict(n_groups=3), "n_groups=3 does not divide num_heads=4"),
        (mamba2_config, dict(head_dim=4), "must equal num_heads * head_dim"),
        (mamba2_config, dict(chunked_loss_size=0), "chunked_loss_size"),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(make, fields, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("(", r"\(")):
        make(**fields)


def test_valid_statex_configs_round_trip_through_dict():
    config = gla_config(statex_layers=[1, 0])
    assert config.statex_layers == [0, 1]
    assert type(config).from_dict(config.to_dict()).statex_layers == [0, 1]
    assert mamba2_config(statex_layers=[0], statex_state_size=None).statex_state_size == 32
