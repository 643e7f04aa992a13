"""``--init reinit``: the weights the paper's released code gives the re-initialized parts (thunlp/StateX at 76d15ef).

The reference builds new modules with PyTorch's and fla's constructors after the checkpoint is loaded,
so no model-level ``_init_weights`` ever runs on them (README, "Convert a checkpoint"):

- GLA (``modeling/gla/model.py`` ``drop_layers`` L193-216, ``modeling/gla/layer.py`` L250-258): a new fla
  ``GatedLinearAttention`` per chosen layer, whose constructor draws every ``nn.Linear`` weight with
  ``xavier_uniform_(gain=2**-2.5)`` and zeroes its bias; new norms (output gate and the block's
  ``attn_norm``) with weight 1; short convolutions keep ``nn.Conv1d``'s default init.
- Mamba2 (``modeling/mamba2/layer.py`` ``drop_layer`` L209-398): a new ``nn.Linear`` ``in_proj`` and
  ``nn.Conv1d`` ``conv1d`` into which z, x, dt rows and x channels are copied, so every B/C row and
  channel keeps PyTorch's default init; ``dt_bias`` = 1, ``A_log`` = log(1..H), gated norm weight 1.

Every tensor is drawn from its own generator, seeded by (seed, layer, tensor name): a layer's weights
do not depend on which other layers are expanded, nor on the order a sharded checkpoint streams in.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from statex_hf.expansion.errors import StateXInputError
from statex_hf.expansion.fresh import layer_seed

# fla's GatedLinearAttention._initialize_weights at the reference's fla version.
GLA_LINEAR_GAIN = 2**-2.5


def tensor_generator(seed: int, layer_idx: int, name_in_layer: str) -> torch.Generator:
    """A CPU generator for one tensor: the layer's seed, split by the tensor's name within the layer."""
    digest = hashlib.sha256(f"{layer_seed(seed, layer_idx)}/{name_in_layer}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % (2**63))


def torch_default_uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> torch.Tensor:
    """What ``nn.Linear`` / ``nn.Conv1d`` ``reset_parameters`` draws, weight and bias alike: U(+-1/sqrt(fan_in)).

    (The weight's ``kaiming_uniform_(a=sqrt(5))`` has bound sqrt(6 / ((1 + 5) * fan_in)) = 1/sqrt(fan_in);
    the bias uses the same bound.) For a depthwise conv, fan_in = in_channels / groups * kernel = kernel.
    """
    bound = 1 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def gla_reference_tensor(layer: nn.Module, name_in_layer: str, generator: torch.Generator) -> torch.Tensor:
    """The reference's value for parameter ``name_in_layer`` (e.g. ``attn.q_proj.weight``) of a GLA block.

    ``layer`` is the StateX block (meta device is enough): it gives each parameter's module and shape.
    """
    module_path, _, param = name_in_layer.rpartition(".")
    module = layer.get_submodule(module_path)
    shape = tuple(getattr(module, param).shape)
    if isinstance(module, nn.Linear):
        if param == "bias":
            return torch.zeros(shape)
        return nn.init.xavier_uniform_(torch.empty(shape), gain=GLA_LINEAR_GAIN, generator=generator)
    if isinstance(module, nn.Conv1d):
        return torch_default_uniform(shape, module.in_channels // module.groups * module.kernel_size[0], generator)
    if "norm" in type(module).__name__.lower():
        return torch.ones(shape) if param == "weight" else torch.zeros(shape)
    raise StateXInputError(
        f"no reference initialization for {name_in_layer} ({type(module).__name__}); "
        "use --init reinit-init-weights or --init inherit"
    )


def mamba2_reference_reset(param: str, shape: tuple[int, ...]) -> torch.Tensor:
    """``dt_bias`` = 1 every head (softplus(1) = 1.31), ``A_log`` = log(1..H), gated norm weight 1.

    dt_bias = 1 is transformers' placeholder that the reference never overwrites; it is what produced
    the paper's numbers, so it is kept.
    """
    if param == "A_log":
        return torch.log(torch.arange(1, shape[0] + 1, dtype=torch.float32))
    if param in ("dt_bias", "norm.weight"):
        return torch.ones(shape)
    raise ValueError(f"{param} is not reset by the reference's Mamba2 re-initialization")
