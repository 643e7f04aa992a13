"""Readers for the public checkpoint formats, as transformers-style configs plus tensors streamed shard by shard.

- flash-linear-attention GLA: ``model_type`` "gla", safetensors or bin, optionally sharded with an index.
- transformers Mamba2: ``model_type`` "mamba2", same file layouts.
- mamba_ssm Mamba2 as published by state-spaces: ``d_model``/``n_layer``/``ssm_cfg`` config,
  ``pytorch_model.bin`` with ``backbone.embedding`` naming and a padded vocabulary.

Every file is checked (present, readable header) before any tensor is converted, so bad input
fails fast; tensors are then read one shard at a time, never the whole model at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from statex_hf.conversion.source import CONFIG_FILE
from statex_hf.expansion.errors import StateXInputError

SAFE_SINGLE, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN_SINGLE, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"

# mamba_ssm names the embedding in the singular; everything else matches transformers' Mamba2.
MAMBA_SSM_RENAME = {"backbone.embedding.": "backbone.embeddings."}
# Families and the source formats each accepts.
GLA_FORMATS = ("fla-gla",)
MAMBA2_FORMATS = ("transformers-mamba2", "mamba-ssm")


@dataclass
class Checkpoint:
    """A source checkpoint: its format, a transformers-style config dict, and its weight files in order."""

    folder: Path
    format: str
    config: dict[str, Any]
    files: list[Path]
    rename: dict[str, str] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return "gla" if self.format in GLA_FORMATS else "mamba2"

    def iter_shards(self) -> Iterator[tuple[Path, Iterator[tuple[str, torch.Tensor]]]]:
        """Per weight file, its tensors one by one (names already in the StateX/transformers naming)."""
        for path in self.files:
            yield path, self._tensors(path)

    def _tensors(self, path: Path) -> Iterator[tuple[str, torch.Tensor]]:
        if path.suffix == ".safetensors":
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
        for old, new in self.rename.items():
            if name.startswith(old):
                return new + name[len(old) :]
        return name


def load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch ``.bin`` state dict, loaded safely (``weights_only``) and memory-mapped where the file allows."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as err:  # noqa: BLE001
        raise StateXInputError(f"cannot read {path.name}: {err} (corrupt or truncated file?)") from err


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise StateXInputError(f"{folder} has no {CONFIG_FILE}; it is not a checkpoint folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StateXInputError(f"{path} is not valid JSON: {err}") from err


def detect_format(config: dict[str, Any]) -> str:
    """``fla-gla``, ``transformers-mamba2`` or ``mamba-ssm``, from config.json alone."""
    model_type = config.get("model_type")
    if model_type == "gla":
        return "fla-gla"
    if model_type == "mamba2":
        return "transformers-mamba2"
    if model_type is None and "d_model" in config and "n_layer" in config:
        return "mamba-ssm"
    if str(model_type).startswith("statex_"):
        layers = ", ".join(map(str, config.get("statex_layers") or [])) or "none"
        raise StateXInputError(
            f"this is already a StateX checkpoint (model_type {model_type!r}, expanded layers: {layers}); "
            "expanding it again is not supported: convert the original checkpoint with every layer you want "
            "expanded, or post-train this one (statex-hf posttrain)"
        )
    raise StateXInputError(
        f"unknown checkpoint type: config.json has model_type={model_type!r}; "
        "supported: fla GLA ('gla'), transformers Mamba2 ('mamba2'), mamba_ssm Mamba2 (d_model/n_layer/ssm_cfg)"
    )


def open_checkpoint(folder: Path, family: str) -> Checkpoint:
    """Read and check a source folder for ``family`` ('gla' or 'mamba2'): config, format, and every weight file."""
    raw = read_config(folder)
    fmt = detect_format(raw)
    accepted = GLA_FORMATS if family == "gla" else MAMBA2_FORMATS
    if fmt not in accepted:
        other = "mamba2" if family == "gla" else "gla"
        raise StateXInputError(f"{folder} is a {fmt} checkpoint, not {family}; use `statex-hf convert {other}`")
    files = weight_files(folder)
    if fmt == "mamba-ssm":
        return Checkpoint(folder, fmt, mamba_ssm_config(raw), files, rename=MAMBA_SSM_RENAME)
    return Checkpoint(folder, fmt, raw, files)


def weight_files(folder: Path) -> list[Path]:
    """The weight files in load order, after checking that each exists and (safetensors) has a readable header."""
    for index_name in (SAFE_INDEX, BIN_INDEX):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise StateXInputError(f"{index} is not a valid shard index: {err}") from err
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise StateXInputError(f"missing shard {missing[0]} listed in {index_name} ({len(missing)} missing)")
            break
    else:
        files = [folder / name for name in (SAFE_SINGLE, BIN_SINGLE) if (folder / name).is_file()][:1]
        if not files:
            raise StateXInputError(f"{folder} has no weights ({SAFE_SINGLE}, {BIN_SINGLE} or a sharded index)")
    for path in files:
        if path.suffix == ".safetensors":
            check_safetensors(path)
    return files


def check_safetensors(path: Path) -> None:
    """Header readable and every tensor's bytes inside the file: catches corrupt and truncated files up front."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                handle.get_slice(name).get_shape()
    except Exception as err:  # noqa: BLE001
        raise StateXInputError(f"cannot read {path.name}: {err} (corrupt or truncated file?)") from err


def mamba_ssm_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """mamba_ssm's ``MambaConfig`` fields (state-spaces repos) as a transformers ``Mamba2Config`` dict."""
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
        "model_type": "mamba2",
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
