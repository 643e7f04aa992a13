"""What sizes a miniature run, and the arms it compares.

The models are sized so that MQAR accuracy falls with the number of key-value pairs inside the
evaluated range because the recurrent state is full (Zoology's knee): a GLA head holds about as many
separable keys as its key dimension, a Mamba2 group about as many as its state size N. StateX merges
GLA's heads (key dimension x heads) or grows N 4x in the expanded layers, which moves the knee out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

FAMILIES = ("gla", "mamba2")
# The continuations compared, all from the same pretrained source on the same data and token budget.
ARMS = ("LPT", "StateX", "StateX-no-layer0", "StateX-inherit")


@dataclass
class Settings:
    """Everything that sizes a run; ``TINY`` is the CPU smoke configuration."""

    hidden_size: int = 128
    num_layers: int = 4
    gla_heads: int = 4  # key_dim 64 -> 16 per head; merged: 64
    mamba2_head_dim: int = 16
    mamba2_state_size: int = 16
    every: int = 2  # the paper's layer rule: StateX expands layers range(0, num_layers, every)
    pairs: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32, 48, 64])
    mix: dict[str, float] = field(default_factory=lambda: {"mqar": 0.8, "passkey": 0.2})
    # Pretraining opens with short MQAR rows of few pairs (a curriculum, as Zoology trains on a mix of lengths):
    # from the start, long rows with many pairs leave a small model on the MQAR plateau for thousands of steps.
    curriculum_steps: int = 600
    curriculum_length: int = 64
    curriculum_pairs: list[int] = field(default_factory=lambda: [2, 4, 8, 12])
    pretrain_length: int = 320
    pretrain_steps: int = 2400
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    continue_length: int = 320
    continue_steps: int = 1500
    continue_batch: int = 64
    continue_lr: float = 1e-3
    warmup_fraction: float = 0.05
    eval_pairs: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 48, 64])
    eval_lengths: list[int] = field(default_factory=lambda: [320, 640])
    eval_mqar_samples: int = 32
    eval_passkey_lengths: list[int] = field(default_factory=lambda: [320, 640, 1280])
    eval_depths: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    eval_passkey_samples: int = 4
    loader_workers: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, path: Path) -> Settings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})

    def expanded_layers(self, without_layer0: bool = False) -> list[int]:
        layers = list(range(0, self.num_layers, self.every))
        return [i for i in layers if i != 0] if without_layer0 else layers

    def convert_args(self, family: str, arm: str) -> list[str] | None:
        """``statex-hf convert`` arguments of an arm; ``None`` for LPT (no conversion)."""
        if arm == "LPT":
            return None
        if arm == "StateX":
            return ["--every", str(self.every), "--init", "reinit"]
        if arm == "StateX-no-layer0":
            layers = self.expanded_layers(without_layer0=True)
            if not layers:
                raise ValueError(f"{self.num_layers} layers with --every {self.every} expand only layer 0")
            return ["--layers", ",".join(map(str, layers)), "--init", "reinit"]
        if arm == "StateX-inherit":
            # Mamba2 has no inherit: `copy` (old B/C rows tiled over the grown state) is the mode that keeps
            # what the model learned; `zero` would leave the new rows at a saddle where they get no gradient.
            return ["--every", str(self.every), "--init", "inherit" if family == "gla" else "copy"]
        raise ValueError(f"unknown arm {arm!r}; choose from LPT, StateX, StateX-no-layer0, StateX-inherit")

    def model_config(self, family: str) -> dict[str, Any]:
        """The source architecture's fields (beside vocabulary and special tokens)."""
        common = {"hidden_size": self.hidden_size, "num_hidden_layers": self.num_layers, "tie_word_embeddings": True}
        if family == "gla":
            # A short convolution on q/k/v (fla's use_short_conv): the token shift a small recurrent model needs
            # to learn associative recall in few layers (Zoology); Mamba2 has its own conv1d. initializer_range
            # 0.1 instead of fla's 0.02, which is sized for widths of ~2k: std-0.02 projections at width 128 keep
            # GLA on the MQAR plateau for most of a short run.
            return {
                **common,
                "num_heads": self.gla_heads,
                "expand_k": 0.5,
                "expand_v": 1.0,
                "use_short_conv": True,
                "initializer_range": 0.1,
            }
        return {
            **common,
            "num_heads": 2 * self.hidden_size // self.mamba2_head_dim,
            "head_dim": self.mamba2_head_dim,
            "expand": 2,
            "state_size": self.mamba2_state_size,
            "n_groups": 1,
            "chunk_size": 64,
        }


TINY = Settings(
    hidden_size=32,
    num_layers=4,
    gla_heads=2,
    mamba2_head_dim=16,
    mamba2_state_size=8,
    pairs=[2, 4, 8],
    curriculum_steps=2,
    curriculum_length=32,
    curriculum_pairs=[2, 4],
    pretrain_length=96,  # the passkey prompt's fixed text takes 65 word-level tokens
    pretrain_steps=6,
    pretrain_batch=4,
    continue_length=96,
    continue_steps=4,
    continue_batch=4,
    eval_pairs=[2, 4],
    eval_lengths=[96],
    eval_mqar_samples=2,
    eval_passkey_lengths=[96, 128],
    eval_depths=[0.0, 1.0],
    eval_passkey_samples=1,
    loader_workers=0,
)

# A narrower model whose knee sits at fewer pairs (GLA heads of key dimension 8, Mamba2 N = 8), on shorter rows.
NARROW = Settings(
    hidden_size=64,
    mamba2_state_size=8,
    pairs=[2, 4, 8, 16, 24, 32],
    pretrain_length=160,
    continue_length=160,
    eval_pairs=[2, 4, 8, 16, 24, 32],
    eval_lengths=[160, 320],
    eval_passkey_lengths=[160, 320, 640],
)
PRESETS = {"default": Settings(), "narrow": NARROW, "tiny": TINY}
