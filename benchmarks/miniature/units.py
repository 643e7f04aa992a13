"""One unit of the miniature: pretrain a source model, or continue it as one arm; each ends evaluated.

Everything goes through the shipped path: ``statex_hf.training.posttrain`` trains (``transformers.Trainer``,
the paper's recipe with the miniature's steps, batch and learning rate), ``statex-hf convert`` expands,
``statex-hf eval mqar`` / ``eval niah --task passkey`` evaluate the saved checkpoint.

Layout under the output folder (a unit is done when its ``result.json`` exists; a unit cut short leaves
none and runs again from its start)::

    units/{family}-seed{seed}/source/      the pretrained model as its public format (fla GLA / transformers
                                           Mamba2), what `statex-hf convert` reads and LPT starts from; kept
    units/{family}-seed{seed}/original/    its result.json and training curve (the weights are in source/)
    units/{family}-seed{seed}/{arm}/       a continuation: result.json, trainer_state.json (weights deleted)
    evals/{family}-seed{seed}-{arm}/       the eval JSONs (and plots for seed 0)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback

import statex_hf  # also registers the StateX Auto classes for from_pretrained
from miniature.data import build_tokenizer, recall_stream
from miniature.settings import Settings

ORIGINAL = "original"
# Set by the scheduler for pretraining units: a Unix time at which training stops early (and says so), so that
# a source model still comes out of a run that is running out of time. Continuations never stop early: the
# arms' equal token budget is the point of the comparison.
DEADLINE_ENV = "MINIATURE_PRETRAIN_DEADLINE"


class StopAt(TrainerCallback):
    """Ends training at the first step past ``deadline`` (a Unix time)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def on_step_end(self, args, state, control, **kwargs):
        if time.time() > self.deadline:
            control.should_training_stop = True


def unit_dir(out: Path, family: str, seed: int, arm: str | None = None) -> Path:
    base = out / "units" / f"{family}-seed{seed}"
    return base if arm is None else base / arm


def is_done(out: Path, family: str, seed: int, arm: str) -> bool:
    return (unit_dir(out, family, seed, arm) / "result.json").exists()


def run_cli(argv: list[str]) -> None:
    """``statex-hf ARGV`` in this process; its chatter is kept out of the log unless it fails."""
    from statex_hf.cli import main as statex_cli

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = statex_cli(argv)
    if code:
        sys.stdout.write(buffer.getvalue())
        raise RuntimeError(f"statex-hf {' '.join(argv)} exited with {code}")


def new_source_model(family: str, settings: Settings, tokenizer: PreTrainedTokenizerFast, seed: int) -> Any:
    """A randomly initialized, unexpanded StateX model (``statex_layers=[]`` is the plain architecture)."""
    torch.manual_seed(seed)
    special = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "statex_layers": [],
    }
    fields = {**settings.model_config(family), **special}
    if family == "gla":
        return statex_hf.StateXGLAForCausalLM(statex_hf.StateXGLAConfig(**fields))
    return statex_hf.StateXMamba2ForCausalLM(statex_hf.StateXMamba2Config(**fields))


def save_as_source_checkpoint(model_dir: Path, family: str, out: Path) -> None:
    """The unexpanded checkpoint in the public format ``statex-hf convert`` reads (fla GLA / transformers Mamba2).

    Weight names already match (the models' invariant); only config.json's type and StateX fields change.
    """
    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("*.py", "README.md"))
    config = json.loads((out / "config.json").read_text())
    for key in ("statex_layers", "statex_num_heads", "statex_state_size", "chunked_loss_size", "auto_map"):
        config.pop(key, None)
    config["model_type"] = family
    config["architectures"] = ["GLAForCausalLM" if family == "gla" else "Mamba2ForCausalLM"]
    (out / "config.json").write_text(json.dumps(config, indent=2))


def load_source(family: str, source: Path) -> Any:
    """The source checkpoint as an unexpanded StateX model (``statex_layers=[]``: the same architecture)."""
    if family == "gla":
        config_class, model_class = statex_hf.StateXGLAConfig, statex_hf.StateXGLAForCausalLM
    else:
        config_class, model_class = statex_hf.StateXMamba2Config, statex_hf.StateXMamba2ForCausalLM
    # get_config_dict reads config.json as transformers wrote it (its special floats included).
    fields, _ = config_class.get_config_dict(source)
    fields = {k: v for k, v in fields.items() if k not in ("model_type", "architectures", "transformers_version")}
    config = config_class.from_dict(fields, statex_layers=[])
    return model_class.from_pretrained(source, config=config, dtype=torch.float32)


def train(
    model: Any,
    tokenizer: PreTrainedTokenizerFast,
    settings: Settings,
    output_dir: Path,
    *,
    length: int,
    steps: int,
    batch: int,
    lr: float,
    data_seed: int,
    pairs: list[int] | None = None,
    mix: dict[str, float] | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """``posttrain`` on the recall stream (the settings' pairs and mix unless given); returns the loss curve,
    tokens and seconds."""
    from statex_hf.training.posttrain import posttrain

    start = time.time()
    stream = recall_stream(tokenizer, length, pairs or settings.pairs, mix or settings.mix, data_seed)
    trainer = posttrain(
        model,
        stream,
        str(output_dir),
        tokenizer=tokenizer,
        seq_len=length,
        batch_tokens=batch * length,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=lr,
        warmup_steps=max(1, int(settings.warmup_fraction * steps)),
        # The models are small: recomputing activations would only cost time.
        gradient_checkpointing=False,
        logging_steps=max(1, steps // 50),
        save_strategy="no",
        dataloader_num_workers=settings.loader_workers,
        disable_tqdm=True,
        seed=data_seed,
        save=False,
        callbacks=[StopAt(deadline)] if deadline else None,
    )
    curve = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {
        "loss_curve": curve,
        "final_loss": curve[-1][1] if curve else float("nan"),
        "steps": trainer.state.global_step,
        "tokens": trainer.state.global_step * batch * length,
        "seconds": time.time() - start,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",  # the report names it
    }


def evaluate(model_dir: Path, out: Path, settings: Settings, seed: int, plots: bool) -> dict[str, Any]:
    """MQAR and passkey through the ``statex-hf eval`` command line, on the saved checkpoint."""
    common = ["--seed", str(seed), "--no-progress"] + ([] if plots else ["--no-plot"])
    out.mkdir(parents=True, exist_ok=True)
    run_cli(
        ["eval", "mqar", str(model_dir), "--output", str(out / "mqar.json")]
        + ["--num-pairs", ",".join(map(str, settings.eval_pairs))]
        + ["--lengths", ",".join(map(str, settings.eval_lengths))]
        + ["--samples", str(settings.eval_mqar_samples)]
        + common
    )
    run_cli(
        ["eval", "niah", str(model_dir), "--task", "passkey", "--output", str(out / "passkey.json")]
        + ["--lengths", ",".join(map(str, settings.eval_passkey_lengths))]
        + ["--depths", ",".join(f"{d:g}" for d in settings.eval_depths)]
        + ["--samples", str(settings.eval_passkey_samples)]
        + common
    )
    mqar = json.loads((out / "mqar.json").read_text())
    passkey = json.loads((out / "passkey.json").read_text())
    return {
        "mqar_pairs": mqar["num_pairs"],
        "mqar_lengths": mqar["lengths"],
        "mqar_grid": mqar["accuracy"],  # [pairs][length], None where the cell does not fit
        "mqar_mean": mqar["mean_accuracy"],
        "passkey_lengths": passkey["lengths"],
        "passkey_by_length": [sum(row) / len(row) for row in passkey["accuracy"]],
        "passkey_mean": passkey["mean_accuracy"],
    }


def _finish(
    model: Any, tokenizer: PreTrainedTokenizerFast, path: Path, out: Path, family: str, seed: int, arm: str
) -> dict[str, Any]:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    start = time.time()
    evals = evaluate(path, out / "evals" / f"{family}-seed{seed}-{arm}", settings_of(out), seed, plots=seed == 0)
    return {**evals, "eval_seconds": time.time() - start}


def settings_of(out: Path) -> Settings:
    return Settings.from_json(out / "settings.json")


def pretrain_unit(out: Path, family: str, seed: int) -> dict[str, Any]:
    """Pretrain the source model of (family, seed); saves it as ``source/`` and evaluates it."""
    settings, tokenizer = settings_of(out), build_tokenizer()
    root = unit_dir(out, family, seed)
    for stale in ("source", ORIGINAL):  # a unit cut short left these half made
        shutil.rmtree(root / stale, ignore_errors=True)
    model = new_source_model(family, settings, tokenizer, seed)
    s = settings
    deadline = float(os.environ[DEADLINE_ENV]) if os.environ.get(DEADLINE_ENV) else None
    curriculum = None
    if s.curriculum_steps:
        curriculum = train(
            model, tokenizer, s, root / ORIGINAL, length=s.curriculum_length, steps=s.curriculum_steps,
            batch=s.pretrain_batch, lr=s.pretrain_lr, data_seed=10_000 + seed, pairs=s.curriculum_pairs,
            mix={"mqar": 1.0}, deadline=deadline,
        )  # fmt: skip
    training = train(
        model, tokenizer, s, root / ORIGINAL, length=s.pretrain_length, steps=s.pretrain_steps,
        batch=s.pretrain_batch, lr=s.pretrain_lr, data_seed=seed, deadline=deadline,
    )  # fmt: skip
    if curriculum is not None:  # one loss curve over both stages (the short rows' losses first)
        offset = curriculum["steps"]
        training["loss_curve"] = curriculum["loss_curve"] + [
            [step + offset, loss] for step, loss in training["loss_curve"]
        ]
        for key in ("steps", "tokens", "seconds"):
            training[key] += curriculum[key]
    result = {"training": training, **_finish(model, tokenizer, root / ORIGINAL, out, family, seed, ORIGINAL)}
    save_as_source_checkpoint(root / ORIGINAL, family, root / "source")
    for weights in (root / ORIGINAL).glob("*.safetensors"):  # source/ keeps them
        weights.unlink()
    _write_result(root / ORIGINAL, result)
    return result


def arm_unit(out: Path, family: str, seed: int, arm: str) -> dict[str, Any]:
    """Continue the source of (family, seed) as ``arm``: LPT as it is, StateX arms after ``statex-hf convert``."""
    settings, tokenizer = settings_of(out), build_tokenizer()
    root = unit_dir(out, family, seed)
    work = root / arm
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    convert_args = settings.convert_args(family, arm)
    if convert_args is None:
        model = load_source(family, root / "source")
    else:
        expanded = work / "expanded"
        run_cli(["convert", family, str(root / "source"), str(expanded), "--seed", str(seed), "--quiet", *convert_args])
        model = AutoModelForCausalLM.from_pretrained(expanded, dtype=torch.float32)
    training = train(
        model, tokenizer, settings, work, length=settings.continue_length, steps=settings.continue_steps,
        batch=settings.continue_batch, lr=settings.continue_lr, data_seed=1000 + seed,  # the same data for every arm
    )  # fmt: skip
    result = {
        "training": training,
        "statex_layers": list(getattr(model.config, "statex_layers", [])),
        "convert_args": convert_args,
        **_finish(model, tokenizer, work / "model", out, family, seed, arm),
    }
    shutil.rmtree(work / "model")  # small, but 24 of them; the evals keep what the report needs
    shutil.rmtree(work / "expanded", ignore_errors=True)
    _write_result(work, result)
    return result


def _write_result(path: Path, result: dict[str, Any]) -> None:
    tmp = path / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.rename(path / "result.json")  # written last and whole: its presence means the unit is done


def run_unit(out: Path, spec: str) -> dict[str, Any]:
    """``family:seed:arm`` (arm ``original`` pretrains)."""
    family, seed, arm = spec.split(":")
    if arm == ORIGINAL:
        return pretrain_unit(out, family, int(seed))
    return arm_unit(out, family, int(seed), arm)


def copy_sources(earlier: Path, out: Path, families: list[str], seeds: list[int]) -> None:
    """Take the pretrained sources (and their evaluation) of an earlier run, e.g. for a variant of the arms."""
    for family in families:
        for seed in seeds:
            if is_done(out, family, seed, ORIGINAL) or not is_done(earlier, family, seed, ORIGINAL):
                continue
            for part in ("source", ORIGINAL):
                shutil.copytree(unit_dir(earlier, family, seed) / part, unit_dir(out, family, seed) / part)
            evals = f"{family}-seed{seed}-{ORIGINAL}"
            shutil.copytree(earlier / "evals" / evals, out / "evals" / evals, dirs_exist_ok=True)
