"""Readers for the public checkpoint formats, as transformers-style configs plus tensors streamed shard by shard.

- flash-linear-attention GLA: ``model_type`` "gla", safetensors or bin, optionally sharded with an index.
- transformers Mamba2: ``model_type`` "mamba2", same file layouts.
- mamba_ssm Mamba2 as published by state-spaces: ``d_model``/``n_layer``/``ssm_cfg`` config,
  ``pytorch_model.bin`` with ``backbone.embedding`` naming and a padded vocabulary.
- mistral's Mamba2 (Mamba-Codestral-7B as ``mistral_inference`` loads it): ``params.json`` with
  ``dim``/``n_layers``/``n_groups`` (told apart by ``dim``, as transformers' conversion script does) and
  ``consolidated.safetensors``, mamba_ssm's state dict with names possibly prefixed ``model.``.

Every file is checked (present, readable header) before any tensor is converted, so bad input
fails fast; tensors are then read one shard at a time, never the whole model at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from statex_hf.conversion.source import PARAMS_FILE
from statex_hf.expansion.errors import StateXInputError
from statex_hf.families import FAMILIES, Family
from statex_hf.saved_files import CONFIG_FILE

if TYPE_CHECKING:  # torch and safetensors load when a tensor is read: telling a format apart needs neither
    import torch

SAFE_SINGLE, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN_SINGLE, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
CONSOLIDATED = "consolidated.safetensors"

# mamba_ssm names the embedding in the singular; everything else matches transformers' Mamba2.
MAMBA_SSM_RENAME = (("backbone.embedding.", "backbone.embeddings."),)
# mistral_inference wraps mamba_ssm's model as `self.model`: its state dict may carry that prefix.
MISTRAL_RENAME = (("model.backbone.embedding.", "backbone.embeddings."), ("model.", ""), *MAMBA_SSM_RENAME)


@dataclass(frozen=True)
class SourceFormat:
    """One public checkpoint layout: its config file, how to recognise and translate it, its weights and names."""

    name: str
    title: str  # what the checkpoints are, in messages: "mamba_ssm Mamba2"
    description: str  # how they are told apart
    config_file: str
    matches: Callable[[dict[str, Any]], bool]
    to_transformers: Callable[[dict[str, Any]], dict[str, Any]]  # the family's source model_type is set after
    weight_files: tuple[str, ...] = (SAFE_SINGLE, BIN_SINGLE)  # unsharded names, in preference order
    sharded: bool = True  # may come as shards listed in a transformers index
    rename: tuple[tuple[str, str], ...] = ()  # (old prefix, new prefix): first match wins
    # Set for layouts that ship no transformers tokenizer: what to pass as --tokenizer.
    tokenizer_hint: str | None = None


@dataclass
class Checkpoint:
    """A source checkpoint: its format, a transformers-style config dict, and its weight files in order."""

    folder: Path
    format: SourceFormat
    config: dict[str, Any]
    files: list[Path]

    def iter_shards(self) -> Iterator[tuple[Path, Iterator[tuple[str, torch.Tensor]]]]:
        """Per weight file, its tensors one by one (names already in the StateX/transformers naming)."""
        for path in self.files:
            yield path, self._tensors(path)

    def _tensors(self, path: Path) -> Iterator[tuple[str, torch.Tensor]]:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="pt") as handle:
                    for name in handle.keys():
                        yield self._renamed(name), handle.get_tensor(name)
            except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
                raise StateXInputError(f"cannot read {path.name}: {err} (corrupt or truncated file?)") from err
            return
        for name, tensor in load_bin(path).items():
            yield self._renamed(name), tensor

    def _renamed(self, name: str) -> str:
        for old, new in self.format.rename:
            if name.startswith(old):
                return new + name[len(old) :]
        return name


def load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch ``.bin`` state dict, loaded safely (``weights_only``) and memory-mapped where the file allows."""
    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as err:  # noqa: BLE001
        raise StateXInputError(f"cannot read {path.name}: {err} (corrupt or truncated file?)") from err


def read_config(folder: Path) -> tuple[str, dict[str, Any]]:
    """The folder's config file name and contents: ``config.json``, else mistral's ``params.json``."""
    for name in (CONFIG_FILE, PARAMS_FILE):
        path = folder / name
        if path.is_file():
            try:
                config = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise StateXInputError(f"{path} is not valid JSON: {err}") from err
            if not isinstance(config, dict):
                raise StateXInputError(f"{path} is not a JSON object")
            return name, config
    raise StateXInputError(f"{folder} has no {CONFIG_FILE} (nor {PARAMS_FILE}); it is not a checkpoint folder")


def native_format(family: Family) -> SourceFormat:
    """A family's own layout: config.json with its source model_type, tensors named as the StateX model names them."""
    model_type = family.source_model_type
    return SourceFormat(
        family.source_formats[0],
        family.source_title,
        f"{CONFIG_FILE} with model_type {model_type!r}",
        CONFIG_FILE,
        matches=lambda config: config.get("model_type") == model_type,
        to_transformers=dict,
    )


def source_formats() -> list[tuple[Family, SourceFormat]]:
    """Every format the registry lists, with the family that reads it: the native one first, then translated ones."""
    formats = []
    for family in FAMILIES.values():
        native, *translated = family.source_formats
        formats.append((family, native_format(family)))
        for name in translated:
            if name not in TRANSLATED_FORMATS:
                raise KeyError(f"the {family.name} registry entry lists source format {name!r}, which has no reader")
            formats.append((family, TRANSLATED_FORMATS[name]))
    return formats


def detect_format(config_file: str, config: dict[str, Any]) -> tuple[Family, SourceFormat]:
    """The format whose config file and keys ``config`` has, and the family that reads it."""
    formats = source_formats()
    for family, fmt in formats:
        if fmt.config_file == config_file and fmt.matches(config):
            return family, fmt
    if any(family.model_type == config.get("model_type") for family in FAMILIES.values()):
        layers = ", ".join(map(str, config.get("statex_layers") or [])) or "none"
        raise StateXInputError(
            f"this is already a StateX checkpoint (model_type {config['model_type']!r}, expanded layers: {layers}); "
            "expanding it again is not supported: convert the original checkpoint with every layer you want "
            "expanded, or post-train this one (statex-hf posttrain)"
        )
    supported = "; ".join(f"{fmt.title} ({fmt.description})" for _, fmt in formats)
    raise StateXInputError(
        f"unknown checkpoint type: {config_file} has model_type={config.get('model_type')!r}; supported: {supported}"
    )


def open_checkpoint(folder: Path, family: Family) -> Checkpoint:
    """Read and check a source folder for ``family``: config, format, and every weight file."""
    config_file, raw = read_config(folder)
    found, fmt = detect_format(config_file, raw)
    if found is not family:
        raise StateXInputError(
            f"{folder} is a {fmt.name} checkpoint, not {family.name}; use `statex-hf convert {found.name}`"
        )
    files = weight_files(folder, fmt)
    try:
        translated = fmt.to_transformers(raw)
    except StateXInputError:
        raise
    except (ValueError, TypeError) as err:  # a field of the wrong type: "d_model": "x", "ssm_cfg": [...]
        raise StateXInputError(
            f"{folder / config_file} has a field of the wrong type ({err}); fix the config"
        ) from None
    config = {**translated, "model_type": family.source_model_type}
    return Checkpoint(folder, fmt, config, files)


def weight_files(folder: Path, fmt: SourceFormat) -> list[Path]:
    """The weight files in load order, after checking that each exists and (safetensors) has a readable header."""
    for index_name in (SAFE_INDEX, BIN_INDEX) if fmt.sharded else ():
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise StateXInputError(f"{index} is not a valid shard index: {err}") from err
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise StateXInputError(f"{index} is not a valid shard index: weight_map is not tensor name -> file")
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise StateXInputError(f"missing shard {missing[0]} listed in {index_name} ({len(missing)} missing)")
            break
    else:
        files = [folder / name for name in fmt.weight_files if (folder / name).is_file()][:1]
        if not files:
            expected = ", ".join(fmt.weight_files) + (" or a sharded index" if fmt.sharded else "")
            raise StateXInputError(f"{folder} has no weights ({expected})")
    for path in files:
        if path.suffix == ".safetensors":
            check_safetensors(path)
    return files


def check_safetensors(path: Path) -> None:
    """Header readable and every tensor's bytes inside the file: catches corrupt and truncated files up front."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                handle.get_slice(name).get_shape()
    except Exception as err:  # noqa: BLE001
        raise StateXInputError(f"cannot read {path.name}: {err} (corrupt or truncated file?)") from err


def _require(config: dict[str, Any], keys: tuple[str, ...], config_file: str) -> None:
    missing = [key for key in keys if key not in config]
    if missing:
        raise StateXInputError(f"{config_file} lacks {missing[0]!r}; the checkpoint's config is incomplete")


def mamba_ssm_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """mamba_ssm's ``MambaConfig`` fields (state-spaces repos) as a transformers ``Mamba2Config`` dict."""
    _require(cfg, ("d_model", "n_layer", "vocab_size"), CONFIG_FILE)
    ssm = dict(cfg.get("ssm_cfg") or {})
    layer = ssm.get("layer", "Mamba1")
    if layer != "Mamba2":
        raise StateXInputError(f"this mamba_ssm checkpoint uses ssm_cfg.layer={layer!r}; StateX here needs Mamba2")
    unsupported = {
        "attn_layer_idx": bool(cfg.get("attn_layer_idx")),
        "rms_norm=false": cfg.get("rms_norm", True) is False,
        "ssm_cfg.rmsnorm=false": ssm.get("rmsnorm", True) is False,
        "ssm_cfg.norm_before_gate=true": ssm.get("norm_before_gate", False) is True,
        "d_intermediate>0": bool(cfg.get("d_intermediate", 0)),
    }
    d_model, expand, headdim = int(cfg["d_model"]), int(ssm.get("expand", 2)), int(ssm.get("headdim", 64))
    d_ssm = ssm.get("d_ssm")
    unsupported["ssm_cfg.d_ssm != expand * d_model"] = d_ssm is not None and d_ssm != expand * d_model
    bad = [name for name, hit in unsupported.items() if hit]
    if bad:
        raise StateXInputError(f"unsupported mamba_ssm option {bad[0]}: only plain Mamba2 stacks can be converted")
    multiple = int(cfg.get("pad_vocab_size_multiple", 1))
    return {
        "hidden_size": d_model,
        "num_hidden_layers": int(cfg["n_layer"]),
        # mamba_ssm pads the embedding to a multiple; the weights carry the padded size.
        "vocab_size": math.ceil(int(cfg["vocab_size"]) / multiple) * multiple,
        "state_size": int(ssm.get("d_state", 128)),
        "expand": expand,
        "head_dim": headdim,
        "num_heads": expand * d_model // headdim,
        "n_groups": int(ssm.get("ngroups", 1)),
        "conv_kernel": int(ssm.get("d_conv", 4)),
        "use_bias": bool(ssm.get("bias", False)),
        "use_conv_bias": bool(ssm.get("conv_bias", True)),
        "chunk_size": int(ssm.get("chunk_size", 256)),
        "time_step_min": float(ssm.get("dt_min", 0.001)),
        "time_step_max": float(ssm.get("dt_max", 0.1)),
        "time_step_floor": float(ssm.get("dt_init_floor", 1e-4)),
        "time_step_limit": [float(x) for x in ssm.get("dt_limit", (0.0, float("inf")))],
        "residual_in_fp32": bool(cfg.get("residual_in_fp32", True)),
        "tie_word_embeddings": bool(cfg.get("tie_embeddings", True)),
        "layer_norm_epsilon": 1e-5,
        # mamba_ssm initializes linear layers with std 0.02 (its _init_weights default), not transformers' 0.1.
        "initializer_range": 0.02,
        "hidden_act": "silu",
    }


def mistral_mamba2_config(params: dict[str, Any]) -> dict[str, Any]:
    """mistral_inference's ``MambaArgs`` (``params.json``) as a transformers ``Mamba2Config`` dict.

    mistral_inference builds mamba_ssm's model from them with ``ssm_cfg={"ngroups": n_groups, "layer":
    "Mamba2"}``, so every other Mamba2 field is mamba_ssm's default (N = 128, P = 64, expand 2).
    """
    if params.get("model_type", "mamba") != "mamba":
        raise StateXInputError(
            f"unknown checkpoint type: {PARAMS_FILE} has model_type={params['model_type']!r} (a mistral "
            "transformer?); only mistral's Mamba2 models (model_type 'mamba', e.g. Mamba-Codestral-7B) convert"
        )
    _require(params, ("dim", "n_layers", "vocab_size"), PARAMS_FILE)
    mamba_ssm_fields = {
        "d_model": params["dim"],
        "n_layer": params["n_layers"],
        "vocab_size": params["vocab_size"],
        "ssm_cfg": {"layer": "Mamba2", "ngroups": params.get("n_groups", 1)},
        **{
            key: params[key]
            for key in ("rms_norm", "residual_in_fp32", "pad_vocab_size_multiple", "tie_embeddings")
            if key in params
        },
    }
    return mamba_ssm_config(mamba_ssm_fields)


# Layouts read through a translation of their config; the registry says which family reads each.
TRANSLATED_FORMATS = {
    "mamba-ssm": SourceFormat(
        "mamba-ssm",
        "mamba_ssm (state-spaces) Mamba2",
        f"{CONFIG_FILE} with d_model/n_layer/ssm_cfg",
        CONFIG_FILE,
        matches=lambda c: c.get("model_type") is None and "d_model" in c and "n_layer" in c,
        to_transformers=mamba_ssm_config,
        rename=MAMBA_SSM_RENAME,
        # What the state-spaces models use.
        tokenizer_hint="EleutherAI/gpt-neox-20b",
    ),
    "mistral-mamba2": SourceFormat(
        "mistral-mamba2",
        "mistral Mamba2 (Mamba-Codestral)",
        f"{PARAMS_FILE} with dim/n_layers/n_groups",
        PARAMS_FILE,
        matches=lambda c: "dim" in c,
        to_transformers=mistral_mamba2_config,
        weight_files=(CONSOLIDATED,),
        sharded=False,
        rename=MISTRAL_RENAME,
        # Its tokenizer.model.v3 is mistral's; the same Hub repo ships transformers tokenizer files.
        tokenizer_hint="mistralai/Mamba-Codestral-7B-v0.1",
    ),
}
