"""One conversion, end to end: read a public checkpoint, expand it, write a ``save_pretrained`` folder atomically.

The CLI (``statex-hf convert``), the scripts in ``conversion_scripts/`` and Python users call
:func:`convert`; the surgery itself is :mod:`statex_hf.expansion`.
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PretrainedConfig

from statex_hf.conversion.model_card import CardFacts, model_card, source_license
from statex_hf.conversion.readers import Checkpoint, open_checkpoint
from statex_hf.conversion.source import (
    GENERATION_CONFIG_FILE,
    looks_like_local_path,
    resolve_source,
    resolve_tokenizer,
    tokenizer_files,
)
from statex_hf.conversion.writer import DEFAULT_MAX_SHARD_BYTES, ShardWriter, atomic_folder, check_destination
from statex_hf.expansion import Expansion, StateXInputError
from statex_hf.families import FAMILIES, Family, UnknownFamilyError, get_family
from statex_hf.hub import push_folder

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SPECIAL_TOKENS = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclass
class ConversionReport:
    """What a conversion did; ``lines()`` is what the CLI prints."""

    output: Path
    family: str
    source: str
    source_format: str
    layers: list[int]
    init: str
    seed: int
    params_before: int
    params_after: int
    params_formula_delta: int
    state_before: list[int]
    state_after: list[int]
    layer_params_before: list[int]
    layer_params_after: list[int]
    config: PretrainedConfig
    source_license: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    commit_url: str | None = None

    def card_facts(self, model_id: str) -> CardFacts:
        """What the model card reports; ``model_id`` is what users will pass to ``from_pretrained``."""
        return CardFacts(
            family=self.family,
            source=self.source,
            source_is_repo=not looks_like_local_path(self.source),
            source_format=self.source_format,
            layers=self.layers,
            num_layers=len(self.state_before),
            init=self.init,
            seed=self.seed,
            state_before=self.state_before,
            state_after=self.state_after,
            params_before=self.params_before,
            params_after=self.params_after,
            layer_params_before=self.layer_params_before,
            layer_params_after=self.layer_params_after,
            architecture=self.config.architectures[0],
            model_id=model_id,
            license=self.source_license,
        )

    def lines(self) -> list[str]:
        delta = self.params_after - self.params_before
        lines = [
            f"source: {self.source} ({self.source_format})",
            f"expanded layers: {', '.join(map(str, self.layers)) or 'none'} of {len(self.state_before)}; "
            f"init {self.init}, seed {self.seed}",
        ]
        for i in self.layers:
            lines.append(
                f"  layer {i}: state {self.state_before[i]:,} -> {self.state_after[i]:,}, "
                f"parameters {self.layer_params_before[i]:,} -> {self.layer_params_after[i]:,}"
            )
        lines.append(f"state, all layers: {sum(self.state_before):,} -> {sum(self.state_after):,}")
        lines.append(
            f"parameters: {self.params_before:,} -> {self.params_after:,} ({delta:+,}; "
            f"formula {self.params_formula_delta:+,})"
        )
        lines.append(f"wrote {self.output}")
        if self.commit_url:
            lines.append(f"pushed: {self.commit_url}")
        return lines


def _check_state_options(family: Family, state_options: dict[str, int | None]) -> None:
    """Only ``family``'s state option may be set; another family's is refused, naming this family's."""
    owners = {other.state_option.dest: other for other in FAMILIES.values()}
    for dest, value in state_options.items():
        if dest not in owners:
            raise TypeError(f"convert() got an unexpected keyword argument {dest!r}")
        owner = owners[dest]
        if owner is not family and value is not None and value != owner.state_option.default:
            raise StateXInputError(
                f"{owner.state_option.flag} is a {owner.title} option; "
                f"{family.title} grows its state with {family.state_option.flag}"
            )


def _check_repo_id(repo_id: str) -> None:
    """A Hub repo id the push can use, checked before the conversion rather than after it."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise StateXInputError(
            f"--push-to-hub {repo_id!r} is not a valid Hub repo id; give org/name (letters, digits, '-', '_' and '.')"
        ) from None


def expected_shapes(family: Family, config: PretrainedConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a StateX checkpoint of ``config`` holds, with its shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = family.causal_lm_class(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def _tokenizer(ckpt: Checkpoint, tokenizer: str | None) -> tuple[list[Path], list[str]]:
    if tokenizer is not None:
        return resolve_tokenizer(tokenizer), []
    found = tokenizer_files(ckpt.folder)
    if found:
        return found, []
    hint = ckpt.format.tokenizer_hint
    if hint is not None:
        raise StateXInputError(
            f"{ckpt.format.name} checkpoints ship no transformers tokenizer; pass --tokenizer {hint} "
            "(the tokenizer these models use) or a local tokenizer folder"
        )
    return [], [f"no tokenizer files in {ckpt.folder}; the output has none (pass --tokenizer to add one)"]


def convert(
    family: str,
    source: str,
    output: str | Path,
    *,
    layers: list[int] | None = None,
    every: int | None = None,
    init: str = "reinit",
    dtype: str = "auto",
    seed: int = 0,
    tokenizer: str | None = None,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    token: str | None = None,
    max_shard_size: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = True,
    **state_options: int | None,
) -> ConversionReport:
    """Convert ``source`` (folder or Hub repo id) of ``family`` (a registry name) into a StateX folder at ``output``.

    ``state_options`` are the families' state options by keyword (:attr:`Family.state_option`):
    ``num_heads`` (GLA), ``state_size`` (Mamba2); ``None`` or absent means the option's default.
    Raises :class:`StateXInputError` for bad input, before anything is written.
    """
    try:
        entry = get_family(family)
    except UnknownFamilyError as err:
        raise StateXInputError(str(err)) from None
    _check_state_options(entry, state_options)
    if dtype not in DTYPES:
        raise StateXInputError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if push_to_hub:
        _check_repo_id(push_to_hub)
    output = Path(output)
    inputs = {"source checkpoint": source, **({"--tokenizer folder": tokenizer} if tokenizer else {})}
    check_destination(output, overwrite, inputs)
    ckpt = open_checkpoint(resolve_source(source), entry)
    option = entry.state_option.dest
    expansion: Expansion = entry.expansion_class(
        ckpt.config, layers=layers, every=every, init=init, seed=seed, **{option: state_options.get(option)}
    )
    config = expansion.config
    target_dtype = DTYPES[dtype]
    if target_dtype is not None:
        config.dtype = dtype
    tokenizer_paths, warnings = _tokenizer(ckpt, tokenizer)
    shapes = expected_shapes(entry, config)

    with atomic_folder(output, overwrite=overwrite) as tmp:
        writer = ShardWriter(tmp, max_shard_bytes=max_shard_size)
        layer_before, layer_after = _convert_tensors(ckpt, expansion, shapes, writer, target_dtype, progress)
        writer.finish()
        if getattr(config, "dtype", None) is None and writer.dtypes:
            # Sources without a dtype in their config (state-spaces): record what the weights are.
            config.dtype = str(writer.dtypes.most_common(1)[0][0]).removeprefix("torch.")
        for path in tokenizer_paths:
            shutil.copy2(path, tmp / path.name)
        _align_special_tokens(config, tmp, ckpt)
        config.save_pretrained(tmp)  # the model code too: the folder loads with trust_remote_code alone
        _generation_config(ckpt, config).save_pretrained(tmp)
        num_layers = config.num_hidden_layers
        report = ConversionReport(
            output=output,
            family=family,
            source=source,
            source_format=ckpt.format.name,
            layers=list(expansion.layers),
            init=init,
            seed=seed,
            params_before=sum(layer_before.values()),
            params_after=writer.num_parameters,
            params_formula_delta=expansion.parameter_delta(),
            state_before=[expansion.state_size(i, expanded=False) for i in range(num_layers)],
            state_after=[expansion.state_size(i, expanded=i in expansion.layers) for i in range(num_layers)],
            layer_params_before=[layer_before[i] for i in range(num_layers)],
            layer_params_after=[layer_after[i] for i in range(num_layers)],
            config=config,
            source_license=source_license(ckpt.folder),
            warnings=warnings,
        )
        model_card(report.card_facts(model_id=push_to_hub or str(output))).save(tmp / "README.md")

    if push_to_hub:
        report.commit_url = push_folder(output, push_to_hub, private=private, token=token)
    return report


def _convert_tensors(
    ckpt: Checkpoint,
    expansion: Expansion,
    shapes: dict[str, tuple[int, ...]],
    writer: ShardWriter,
    dtype: torch.dtype | None,
    progress: bool,
) -> tuple[Counter, Counter]:
    """Stream every source tensor through the expansion into ``writer``.

    Returns parameter counts before and after, keyed by layer index (``None``: outside the layers).
    """
    tied = expansion.config.tie_word_embeddings
    seen: set[str] = set()
    before: Counter = Counter()
    after: Counter = Counter()
    files = list(ckpt.iter_shards())
    for i, (path, tensors) in enumerate(files, start=1):
        desc = f"shard {i}/{len(files)} {path.name}"
        for name, tensor in tqdm(tensors, desc=desc, unit="tensor", disable=not progress, file=sys.stderr):
            if tied and name == "lm_head.weight":
                continue  # the tied head is the embedding; save_pretrained does not store it either
            if name not in shapes:
                raise StateXInputError(
                    f"unexpected tensor {name} in {path.name}: not part of a {ckpt.format.name} model of this config"
                )
            layer = expansion.layer_index(name)
            before[layer] += tensor.numel()
            new = expansion.transform(name, tensor)
            if dtype is not None and new.is_floating_point():
                new = new.to(dtype)
            if tuple(new.shape) != shapes[name]:
                raise StateXInputError(
                    f"{name} has shape {tuple(new.shape)} after conversion, expected {shapes[name]}: "
                    "config.json does not match the weights"
                )
            writer.add(name, new)
            after[layer] += new.numel()
            seen.add(name)
    missing = sorted(set(shapes) - seen)
    if missing:
        raise StateXInputError(f"the checkpoint lacks {len(missing)} tensor(s) the model needs, e.g. {missing[0]}")
    return before, after


def _align_special_tokens(config: PretrainedConfig, folder: Path, ckpt: Checkpoint) -> None:
    """Configs naming no special tokens (state-spaces, mistral) take them from the tokenizer given with the weights."""
    if any(attr in ckpt.config for attr in SPECIAL_TOKENS):
        return
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder)
    except Exception:  # noqa: BLE001 - a tokenizer transformers cannot load keeps the config's defaults
        return
    for attr in SPECIAL_TOKENS:
        value = getattr(tok, attr, None)
        if value is not None:
            setattr(config, attr, value)
    if config.pad_token_id is None:
        config.pad_token_id = config.eos_token_id


def _generation_config(ckpt: Checkpoint, config: PretrainedConfig) -> GenerationConfig:
    """The source's generation config when it has one (special tokens kept in step with the config)."""
    if (ckpt.folder / GENERATION_CONFIG_FILE).is_file():
        generation = GenerationConfig.from_pretrained(ckpt.folder)
        for attr in SPECIAL_TOKENS:
            if getattr(config, attr, None) is not None:
                setattr(generation, attr, getattr(config, attr))
        return generation
    return GenerationConfig.from_model_config(config)
