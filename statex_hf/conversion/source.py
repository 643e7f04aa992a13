"""Where a checkpoint comes from: a local folder, or a Hub repo id fetched with huggingface_hub.

Only the files a conversion needs are downloaded: config, model card (its license), tokenizer, one weight format.
"""

from __future__ import annotations

from pathlib import Path

from statex_hf.expansion.errors import StateXInputError
from statex_hf.paths import looks_like_local_path
from statex_hf.saved_files import CONFIG_FILE, TOKENIZER_FILES

# mistral's own layout (Mamba-Codestral-7B): params.json beside consolidated.safetensors.
PARAMS_FILE = "params.json"
GENERATION_CONFIG_FILE = "generation_config.json"
MODEL_CARD_FILE = "README.md"  # the converted card carries the source's license


def weight_patterns(files: list[str]) -> list[str]:
    """The weight files to fetch, in the order transformers prefers them; never two formats.

    Only what a loader would read is fetched: a repo may also hold e.g. ``consolidated.safetensors``.
    """
    for single, index, shards in (
        ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"),
    ):
        if index in files:
            return [index, shards]
        if single in files:
            return [single]
    if CONFIG_FILE not in files and "consolidated.safetensors" in files:
        return ["consolidated.safetensors"]  # mistral's layout, read only without a transformers config
    return []


def resolve_source(name: str, *, with_weights: bool = True) -> Path:
    """A local folder holding ``name``'s config, weights and tokenizer; downloads a repo id if needed."""
    if looks_like_local_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise StateXInputError(
                f"source folder {name} not found: no such local folder (give a checkpoint folder or a Hub repo id)"
            )
        if not (path / CONFIG_FILE).is_file() and not (path / PARAMS_FILE).is_file():
            raise StateXInputError(f"{name} has no {CONFIG_FILE} (nor {PARAMS_FILE}); it is not a checkpoint folder")
        return path
    return _download(name, with_weights=with_weights)


def _download(repo_id: str, *, with_weights: bool) -> Path:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        # One plain request (no retry loop) answers both "is the Hub reachable" and "which files exist".
        files = [s.rfilename for s in HfApi().model_info(repo_id).siblings or []]
        patterns = [CONFIG_FILE, PARAMS_FILE, GENERATION_CONFIG_FILE, MODEL_CARD_FILE, *TOKENIZER_FILES]
        if with_weights:
            patterns += weight_patterns(files)
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except (RepositoryNotFoundError, GatedRepoError) as err:
        raise StateXInputError(
            f"Hub repo {repo_id} not found or not accessible (no local folder of that name either): "
            f"{type(err).__name__}"
        ) from err
    except Exception as err:  # noqa: BLE001 - any transport failure means the same thing to the user
        raise StateXInputError(
            f"cannot fetch {repo_id} from the Hub ({type(err).__name__}); no local folder of that name either. "
            "Check the network / HF_ENDPOINT, or pass a local checkpoint folder"
        ) from err


def tokenizer_files(folder: Path) -> list[Path]:
    """The tokenizer files present in ``folder``."""
    return [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]


def resolve_tokenizer(name: str) -> list[Path]:
    """Tokenizer files for ``--tokenizer``: a local folder, or a repo id (only tokenizer files are fetched)."""
    if looks_like_local_path(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise StateXInputError(f"--tokenizer folder {name} not found: no such local folder")
        found = tokenizer_files(path)
    else:
        from huggingface_hub import snapshot_download

        try:
            found = tokenizer_files(Path(snapshot_download(name, allow_patterns=list(TOKENIZER_FILES))))
        except Exception as err:  # noqa: BLE001
            raise StateXInputError(
                f"cannot fetch tokenizer {name} from the Hub ({type(err).__name__}); pass a local tokenizer folder"
            ) from err
    if not found:
        raise StateXInputError(f"--tokenizer {name} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)")
    return found
