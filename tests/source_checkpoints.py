"""Tiny source checkpoints in each public format, written by the real libraries where they exist.

- fla GLA: ``fla.models.GLAForCausalLM(...).save_pretrained`` (runs on CPU under TRITON_INTERPRET=1).
- transformers Mamba2: ``Mamba2ForCausalLM(...).save_pretrained``.
- mamba_ssm (state-spaces): no mamba_ssm on CPU, so its layout is written key by key (config.json
  with d_model/n_layer/ssm_cfg, ``pytorch_model.bin``, ``backbone.embedding``, tied head, padded vocab).
- mistral (Mamba-Codestral-7B as mistral_inference loads it): ``params.json`` with dim/n_layers/n_groups,
  ``consolidated.safetensors`` holding mamba_ssm's ``MambaLMHeadModel`` state dict, names prefixed
  ``model.`` (the wrapper's attribute) or not, an untied head, and no transformers tokenizer.

Every parameter is perturbed after init so that "kept" and "re-initialized" are distinguishable
(a fresh RMSNorm weight of ones would otherwise equal the source's).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = 64


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model.eval()


def write_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over VOCAB tokens, saved the way transformers saves any fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(folder)


def fla_gla(num_layers: int = 4, num_heads: int = 4, hidden_size: int = 32, **overrides):
    from fla.models import GLAConfig, GLAForCausalLM

    torch.manual_seed(0)
    config = GLAConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_heads=num_heads,
        vocab_size=VOCAB,
        attn_mode="fused_recurrent",  # fla's chunk mode does not run in the Triton interpreter
        **overrides,
    )
    return perturb(GLAForCausalLM(config))


def write_fla_gla(folder: Path, *, bin_format: bool = False, max_shard_size: str | None = None, **kw):
    """An fla GLA checkpoint folder (safetensors, sharded safetensors, or pytorch_model.bin) with a tokenizer."""
    model = fla_gla(**kw)
    if bin_format:
        folder.mkdir(parents=True)
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    write_tokenizer(folder)
    return model


def transformers_mamba2(num_layers: int = 4, n_groups: int = 2, **overrides):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(0)
    fields = dict(
        hidden_size=16,
        num_heads=4,
        head_dim=8,
        state_size=8,
        n_groups=n_groups,
        num_hidden_layers=num_layers,
        vocab_size=VOCAB,
        chunk_size=8,
        expand=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    fields.update(overrides)
    return perturb(Mamba2ForCausalLM(Mamba2Config(**fields)))


def write_transformers_mamba2(folder: Path, **kw):
    model = transformers_mamba2(**kw)
    model.save_pretrained(folder)
    write_tokenizer(folder)
    return model


def write_mamba_ssm(folder: Path, *, unpadded_vocab: int = VOCAB - 3, pad_multiple: int = 8, **kw):
    """The state-spaces layout key by key; returns the transformers Mamba2 model holding the same weights.

    The vocabulary is padded as mamba_ssm pads it (``unpadded_vocab`` rounded up to ``pad_multiple``),
    and the LM head is tied to the embedding.
    """
    model = transformers_mamba2(tie_word_embeddings=True, **kw)
    config = model.config
    assert -(-unpadded_vocab // pad_multiple) * pad_multiple == config.vocab_size
    folder.mkdir(parents=True)
    mamba_ssm_config = {
        "d_model": config.hidden_size,
        "d_intermediate": 0,
        "n_layer": config.num_hidden_layers,
        "vocab_size": unpadded_vocab,
        "ssm_cfg": {
            "layer": "Mamba2",
            "d_state": config.state_size,
            "headdim": config.head_dim,
            "ngroups": config.n_groups,
            "chunk_size": config.chunk_size,
        },
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": pad_multiple,
        "tie_embeddings": True,
    }
    (folder / "config.json").write_text(json.dumps(mamba_ssm_config, indent=2))
    state = {}
    for name, tensor in model.state_dict().items():
        state[name.replace("backbone.embeddings.", "backbone.embedding.")] = tensor
    state["lm_head.weight"] = state["backbone.embedding.weight"]  # mamba_ssm saves the tied head too
    torch.save(state, folder / "pytorch_model.bin")
    return model


def write_mistral_mamba2(folder: Path, *, prefixed: bool = True, n_groups: int = 8, dim: int = 512, **kw):
    """Mamba-Codestral's layout key by key; returns the transformers Mamba2 model holding the same weights.

    ``params.json`` cannot set the state size, head size or expansion, so they are mamba_ssm's defaults
    (N = 128, P = 64, expand 2): ``dim`` 512 gives 16 heads, two per group at Codestral's 8 groups.
    """
    from safetensors.torch import save_file

    model = transformers_mamba2(
        hidden_size=dim, head_dim=64, state_size=128, chunk_size=256, n_groups=n_groups, num_heads=2 * dim // 64, **kw
    )
    config = model.config
    folder.mkdir(parents=True)
    params = {
        "dim": config.hidden_size,
        "n_layers": config.num_hidden_layers,
        "vocab_size": config.vocab_size,
        "n_groups": config.n_groups,
        "rms_norm": True,
        "residual_in_fp32": config.residual_in_fp32,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 1,
        "tie_embeddings": config.tie_word_embeddings,
        "model_type": "mamba",
    }
    (folder / "params.json").write_text(json.dumps(params, indent=2))
    prefix = "model." if prefixed else ""
    state = {
        prefix + name.replace("backbone.embeddings.", "backbone.embedding."): tensor.contiguous()
        for name, tensor in model.state_dict().items()
    }
    save_file(state, folder / "consolidated.safetensors")
    (folder / "tokenizer.model.v3").write_bytes(b"sentencepiece model: not a transformers tokenizer")
    return model
