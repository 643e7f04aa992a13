"""``--init reinit-init-weights``: one layer's parameters as the StateX model class's ``_init_weights`` draws them.

What training the StateX model from scratch would give; not the paper's init, which is ``reinit``
(:mod:`statex_hf.expansion.reference_init`), kept so the two can be compared. The model is built on
the meta device (no memory), only the wanted layer is materialized, and the class's
``_init_weights`` is applied to it module by module, as ``post_init`` does.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig, PreTrainedModel


def layer_seed(seed: int, layer_idx: int) -> int:
    """One seed per (seed, layer): a layer's fresh weights do not depend on which other layers are expanded."""
    return (seed * 1_000_003 + layer_idx) % (2**63)


@torch.no_grad()
def fresh_layer_parameters(
    model_class: type[PreTrainedModel],
    config: PretrainedConfig,
    layer_prefix: str,
    seed: int,
    layer_idx: int,
) -> dict[str, torch.Tensor]:
    """Parameters of submodule ``layer_prefix`` (e.g. ``model.layers.6``) of a fresh ``model_class(config)``.

    Returns fp32 CPU tensors keyed by full state-dict name. Deterministic in ``(seed, layer_idx)``.
    """
    with torch.device("meta"):
        model = model_class(config)
    layer = model.get_submodule(layer_prefix)
    layer.to_empty(device="cpu")
    layer.float()
    # NaN marks anything the class's init does not write, so a gap in _init_weights cannot leak
    # uninitialized memory into a checkpoint.
    for param in layer.parameters():
        param.fill_(float("nan"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(layer_seed(seed, layer_idx))
        layer.apply(model._init_weights)
    params = {f"{layer_prefix}.{name}": param.detach().clone() for name, param in layer.named_parameters()}
    untouched = [name for name, value in params.items() if torch.isnan(value).any()]
    if untouched:
        raise RuntimeError(f"{model_class.__name__}._init_weights left {untouched} uninitialized")
    return params
