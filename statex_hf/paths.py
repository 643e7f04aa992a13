"""Local path or Hub id? The one rule every command applies to an argument that names a model, tokenizer or data.

A name is a local path when it exists on disk; starts with ``.``, ``/`` or ``~``; has more than one
``/``; is not a valid Hub repo id; or its first part is a local folder (``out/model`` while ``out/``
exists can only mean a folder inside it). Anything else is a Hub id. A local path that does not exist
is answered at once with one line, before the Hub is ever asked; a local checkpoint folder is
checked for its config and sound weight files (:func:`check_checkpoint_folder`) before anything loads.
"""

from __future__ import annotations

import os
from pathlib import Path

from statex_hf.errors import StateXUserError
from statex_hf.saved_files import CONFIG_FILE, TOKENIZER_FILES


def looks_like_local_path(name: str) -> bool:
    """Whether ``name`` means a file or folder on this machine rather than a Hub repo id (see the module rule)."""
    if os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return True
    if "/" in name and os.path.isdir(name.split("/", 1)[0]):
        return True
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def require_local_folder(name: str, label: str) -> Path:
    """The existing folder ``name`` (a local path), or one line saying there is no such local folder."""
    path = Path(name).expanduser()
    if not path.exists():
        first = name.split("/", 1)[0]
        inside = "/" in name and Path(first).is_dir()
        why = f" ({first}/ is a folder here, so this names a path in it)" if inside else ""
        raise StateXUserError(
            f"{label} {name}: no such local folder{why}; give an existing folder or a Hub repo id (org/name)"
        )
    if not path.is_dir():
        raise StateXUserError(f"{label} {name} is a file; give the folder that holds it")
    return path


def require_tokenizer_folder(name: str, label: str) -> Path:
    """The existing local folder ``name`` holding tokenizer files, or one line saying what is wrong with it."""
    folder = require_local_folder(name, label)
    if not any((folder / file).is_file() for file in TOKENIZER_FILES):
        raise StateXUserError(
            f"{label} {name} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...); "
            "give a tokenizer folder or Hub id"
        )
    return folder


def check_checkpoint_folder(name: str, label: str) -> dict:
    """The config of the local checkpoint folder ``name``, after checking it has weights whose files are whole.

    A truncated download fails here in one line, not halfway through ``from_pretrained``.
    """
    import json

    from statex_hf.conversion.readers import check_safetensors

    folder = require_local_folder(name, label)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise StateXUserError(f"{label} {name} has no {CONFIG_FILE}; give a checkpoint folder") from None
    except ValueError as err:
        raise StateXUserError(f"{label} {name}: {CONFIG_FILE} is not valid JSON ({err})") from None
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin"))
    if not weights:
        raise StateXUserError(f"{label} {name} has no weights (model.safetensors or pytorch_model.bin)")
    for path in weights:
        if path.suffix == ".safetensors":
            try:
                check_safetensors(path)
            except StateXUserError as err:
                raise StateXUserError(f"{label} {name}: {err}; download or save the model again") from None
    return config


__all__ = ["check_checkpoint_folder", "looks_like_local_path", "require_local_folder", "require_tokenizer_folder"]
