"""The registry of model families: everything the package knows about GLA and Mamba2, in one place.

Every command and module asks this registry (``get_family``, ``family_of_model_type``) instead of
branching on a family's name, and an unknown name fails loudly. A family is its modeling folder
(config and model classes, named as transformers names them), its kernels, its expansion module, and
one :class:`Family` entry here holding the rest: source formats, init modes, the command-line option
that grows the state, the model card's text, the training layout and the demo's small model (README,
"Add a family").

Nothing heavy is imported here (the command line reads this module before it parses arguments);
classes are imported when first asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from statex_hf.errors import StateXUserError


class UnknownFamilyError(StateXUserError):
    """A family name or model_type that no registry entry has."""


@dataclass(frozen=True)
class StateOption:
    """The one command-line option by which a family grows its state, and the config field it sets."""

    flag: str  # e.g. "--num-heads"
    config_field: str  # e.g. "statex_num_heads"
    default: int | None  # None: the config class's default
    metavar: str
    help: str

    @property
    def dest(self) -> str:
        """The keyword argument (and argparse destination) that carries the value: ``num_heads``."""
        return self.flag.removeprefix("--").replace("-", "_")


@dataclass(frozen=True)
class TrainingLayout:
    """Module names of one family's causal LM (the source model's names), for freezing and LoRA."""

    layers: str  # the ModuleList of blocks
    mixer: str  # the token mixer inside a block
    mixer_norm: str  # the RMSNorm in front of the token mixer
    lora_targets: tuple[str, ...]  # nn.Linear names LoRA adapts by default

    def block(self, layer_idx: int) -> str:
        return f"{self.layers}.{layer_idx}"

    def mixer_modules(self, layer_idx: int) -> tuple[str, str]:
        """The token mixer and its pre-norm: what ``--freeze mixers`` trains, and LoRA trains in full when expanded."""
        return f"{self.block(layer_idx)}.{self.mixer}", f"{self.block(layer_idx)}.{self.mixer_norm}"


@dataclass(frozen=True)
class Family:
    """One model family. Module and class names follow transformers' conventions, so they are derived."""

    name: str  # the command-line word (`statex-hf convert gla`) and the model-card tag
    title: str  # in sentences: "GLA"
    model_type: str  # the StateX config's model_type
    class_prefix: str  # StateXGLA -> StateXGLAConfig, StateXGLAModel, StateXGLAForCausalLM
    modeling_package: str  # holds configuration_<model_type>.py and modeling_<model_type>.py
    expansion: str  # "module.Class" of the family's statex_hf.expansion.Expansion subclass
    source_model_type: str  # model_type of the transformers-style config the source formats translate to
    source_title: str  # what the native source checkpoints are, in messages: "fla GLA"
    # Names in statex_hf.conversion.readers.SOURCE_FORMATS; the first is the native one (a config.json
    # with model_type `source_model_type`, tensors named as the StateX model names them).
    source_formats: tuple[str, ...]
    source_help: str  # what `statex-hf convert <name>` reads, for --help
    # The init modes of the expanded parts, the first the default, each with what the model card says it did.
    init_cards: dict[str, str] = field(hash=False)
    state_option: StateOption
    card_method: str  # the model card's one-line account of how the state grows
    layout: TrainingLayout
    # The demo's small source model: config fields (besides vocabulary and special tokens).
    demo_config: dict[str, Any] = field(hash=False)

    @property
    def init_modes(self) -> tuple[str, ...]:
        return tuple(self.init_cards)

    @property
    def config_module(self) -> str:
        return f"{self.modeling_package}.configuration_{self.model_type}"

    @property
    def modeling_module(self) -> str:
        return f"{self.modeling_package}.modeling_{self.model_type}"

    @property
    def config_class_name(self) -> str:
        return f"{self.class_prefix}Config"

    @property
    def model_class_name(self) -> str:
        return f"{self.class_prefix}Model"

    @property
    def causal_lm_class_name(self) -> str:
        return f"{self.class_prefix}ForCausalLM"

    @property
    def config_class(self) -> Any:
        return _load(self.config_module, self.config_class_name)

    @property
    def model_class(self) -> Any:
        return _load(self.modeling_module, self.model_class_name)

    @property
    def causal_lm_class(self) -> Any:
        return _load(self.modeling_module, self.causal_lm_class_name)

    @property
    def expansion_class(self) -> Any:
        module, _, name = self.expansion.rpartition(".")
        return _load(module, name)


def _load(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


_REFERENCE = "the initialization of the paper's released code (thunlp/StateX at 76d15ef, {where})"
_CARD_INIT_WEIGHTS = (
    "the expanded parts were re-initialized by the StateX model class's own `_init_weights` (what training "
    "from scratch would give; not the paper's initialization, which is `reinit`)"
)

GLA = Family(
    name="gla",
    title="GLA",
    model_type="statex_gla",
    class_prefix="StateXGLA",
    modeling_package="statex_hf.modeling.gla",
    expansion="statex_hf.expansion.gla.GLAExpansion",
    source_model_type="gla",
    source_title="fla GLA",
    source_formats=("fla-gla",),
    source_help="fla GLA checkpoint (e.g. fla-hub/gla-1.3B-100B)",
    init_cards={
        "reinit": "the chosen layers' token mixers and pre-mixer RMSNorms were re-initialized with "
        + _REFERENCE.format(where="`modeling/gla/model.py` `drop_layers`, `modeling/gla/layer.py`")
        + ": every linear layer `xavier_uniform_(gain=2**-2.5)` with zero bias, norm weights 1, short "
        "convolutions PyTorch's `nn.Conv1d` default; the MLPs were kept",
        "reinit-init-weights": _CARD_INIT_WEIGHTS,
        "inherit": "the pretrained projections were kept; the output-norm weight was tiled over the merged head",
    },
    state_option=StateOption(
        "--num-heads", "statex_num_heads", default=1, metavar="H", help="heads of an expanded layer (default 1)"
    ),
    card_method="head merging: each expanded layer runs its token mixer with fewer heads (same projections), "
    "so its recurrent state (heads x dk x dv) grows",
    layout=TrainingLayout(
        layers="model.layers",
        mixer="attn",
        mixer_norm="attn_norm",
        # Every projection of the mixer and the MLP; the tiny low-rank forget-gate projection
        # (gk_proj, rank 16) is left alone.
        lora_targets=("q_proj", "k_proj", "v_proj", "g_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ),
    demo_config={"hidden_size": 64, "num_heads": 4, "num_hidden_layers": 4},
)

MAMBA2 = Family(
    name="mamba2",
    title="Mamba2",
    model_type="statex_mamba2",
    class_prefix="StateXMamba2",
    modeling_package="statex_hf.modeling.mamba2",
    expansion="statex_hf.expansion.mamba2.Mamba2Expansion",
    source_model_type="mamba2",
    source_title="transformers Mamba2",
    source_formats=("transformers-mamba2", "mamba-ssm", "mistral-mamba2"),
    source_help="Mamba2: transformers, state-spaces (mamba_ssm) or mistral (Mamba-Codestral) checkpoint",
    init_cards={
        "reinit": "all B/C rows of `in_proj` (old and new) and B/C channels of `conv1d` were drawn with "
        + _REFERENCE.format(where="`modeling/mamba2/layer.py` `drop_layer`")
        + ": PyTorch's `nn.Linear` / `nn.Conv1d` default, U(±1/sqrt(fan_in)); `dt_bias` 1, `A_log` log(1..H), "
        "gated norm weight 1; z, x and dt rows, x channels, `D` and `out_proj` were kept",
        "reinit-init-weights": _CARD_INIT_WEIGHTS,
        "copy": "the old B/C rows and conv channels were tiled over the new state size",
        "zero": "the old B/C rows and conv channels were kept first, zeros after",
    },
    state_option=StateOption(
        "--state-size", "statex_state_size", default=None, metavar="N", help="new state size N' (default 4x N)"
    ),
    card_method="state-dimension expansion: each expanded layer's SSM state dimension N grows (only the B and C "
    "rows of `in_proj` and channels of `conv1d` grow)",
    layout=TrainingLayout(
        layers="backbone.layers",
        mixer="mixer",
        mixer_norm="norm",
        # Mamba2's two projections carry nearly all of a layer's weights (peft's choice for Mamba too).
        lora_targets=("in_proj", "out_proj"),
    ),
    demo_config={
        "hidden_size": 64,
        "num_heads": 8,
        "head_dim": 16,
        "state_size": 16,
        "n_groups": 1,
        "num_hidden_layers": 4,
        "chunk_size": 32,
    },
)

FAMILIES: dict[str, Family] = {family.name: family for family in (GLA, MAMBA2)}


def get_family(name: str) -> Family:
    """The family called ``name`` (the command line's word: ``gla``, ``mamba2``)."""
    if name not in FAMILIES:
        raise UnknownFamilyError(f"unknown family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of_model_type(model_type: str | None) -> Family:
    """The family whose StateX config has ``model_type`` (``statex_gla``, ...)."""
    for family in FAMILIES.values():
        if family.model_type == model_type:
            return family
    raise UnknownFamilyError(
        f"model_type={model_type!r} is not a StateX model (one of {', '.join(f.model_type for f in FAMILIES.values())})"
    )


def family_of_source_format(format_name: str) -> Family:
    """The family that reads source format ``format_name`` (``fla-gla``, ``mamba-ssm``, ...)."""
    for family in FAMILIES.values():
        if format_name in family.source_formats:
            return family
    raise UnknownFamilyError(f"no family reads the source format {format_name!r}")


__all__ = [
    "FAMILIES",
    "GLA",
    "MAMBA2",
    "Family",
    "StateOption",
    "TrainingLayout",
    "UnknownFamilyError",
    "family_of_model_type",
    "family_of_source_format",
    "get_family",
]
