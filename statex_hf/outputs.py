"""Where a command may write: the one rule every ``statex-hf`` command applies to its outputs, up front.

An output folder (``convert``'s, ``posttrain``'s, each of ``demo``'s) is refused when it is the current
folder or contains it, is or contains one of the command's inputs, is a file, or lies where nothing
can be written. An existing one is replaced only with ``--overwrite`` and only when it is what a StateX
save wrote (:func:`unsaved_reason`): nothing but the files ``save_pretrained``, the remote code,
the tokenizer, peft and ``Trainer`` write, with a StateX ``config.json`` or a ``Trainer`` run in it.
Output files (``eval``'s JSON and figure) follow the same checks; the caller says which existing file
is its own to replace. Every refusal is one :class:`~statex_hf.errors.StateXUserError` line.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from statex_hf.errors import StateXUserError
from statex_hf.saved_files import CONFIG_FILE, TRAINER_STATE_FILE, is_saved_file, is_saved_folder

STATEX_MODEL_TYPE_PREFIX = "statex_"


def _unsaved_entries(folder: Path, prefix: str = "") -> list[str]:
    """Entries of ``folder`` (recursing into checkpoint-N / merged) that no save writes."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            if is_saved_folder(entry.name):
                found += _unsaved_entries(entry, f"{prefix}{entry.name}/")
            else:
                found.append(f"{prefix}{entry.name}/")
        elif not is_saved_file(entry.name):
            found.append(f"{prefix}{entry.name}")
    return found


def _model_type(config: Path) -> object:
    try:
        return json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def unsaved_reason(folder: Path) -> str | None:
    """Why ``folder`` is not a folder a StateX save wrote, or ``None`` when ``--overwrite`` may replace it."""
    entries = list(folder.iterdir())
    if not entries:
        return None
    unsaved = _unsaved_entries(folder)
    if unsaved:
        more = f" and {len(unsaved) - 3} more" if len(unsaved) > 3 else ""
        return f"it holds {', '.join(unsaved[:3])}{more}, which no save writes"
    runs = [folder / TRAINER_STATE_FILE, *(p / TRAINER_STATE_FILE for p in folder.glob("checkpoint-*"))]
    if any(p.is_file() for p in runs):
        return None  # a Trainer / posttrain run
    if not (folder / CONFIG_FILE).is_file():
        return f"it has no {CONFIG_FILE}"
    model_type = _model_type(folder / CONFIG_FILE)
    if not str(model_type).startswith(STATEX_MODEL_TYPE_PREFIX):
        return f"its {CONFIG_FILE} has model_type {model_type!r}, not a StateX model"
    return None


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path, label: str) -> None:
    """``path`` (a folder or file not yet made) can be created: its nearest existing ancestor is a writable folder.

    Writes and removes a nameless probe file there, which is the only test that also holds for root
    and for read-only or special file systems.
    """
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise StateXUserError(f"cannot create {label}: {ancestor} is a file, not a folder; choose another path")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise StateXUserError(
            f"cannot create {label}: no write access to {ancestor} ({err.strerror}); choose a folder you can write to"
        ) from None


def check_place(resolved: Path, label: str, inputs: Mapping[str, str | Path]) -> None:
    """Never the current folder or one that holds it, never an input or a folder that holds one."""
    cwd = Path.cwd().resolve()
    if resolved == cwd:
        raise StateXUserError(f"{label} is the current folder; choose a new folder for the output")
    if resolved in cwd.parents:
        raise StateXUserError(f"{label} contains the current folder; choose a new folder for the output")
    for what, given in inputs.items():
        source = Path(given).expanduser()
        if not source.exists():
            continue  # a Hub id, or checked elsewhere
        source = source.resolve()
        if source == resolved:
            raise StateXUserError(f"{label} is the {what} itself; choose a new folder for the output")
        if resolved in source.parents:
            raise StateXUserError(f"{label} contains the {what} {given}; choose a new folder for the output")


def check_output_folder(
    path: str | Path, *, overwrite: bool, inputs: Mapping[str, str | Path] | None = None, label: str | None = None
) -> Path:
    """Check, before any work, that a command may write the folder ``path``; returns it resolved.

    Args:
        path: the output folder as the user gave it.
        overwrite: ``--overwrite`` was given: an existing folder a StateX save wrote may be replaced.
        inputs: what the command reads, by name (``{"source checkpoint": "src/gla"}``); the output may
            neither be nor contain one of them.
        label: how messages name the output (default ``"output {path}"``).
    """
    label = label or f"output {path}"
    resolved = Path(path).expanduser().resolve()
    check_place(resolved, label, inputs or {})
    if not resolved.exists():
        check_writable(resolved, label)
        return resolved
    if not resolved.is_dir():
        raise StateXUserError(f"{label} is a file, not a folder; choose a folder path for the output")
    reason = unsaved_reason(resolved)
    if reason is not None:
        raise StateXUserError(
            f"{label} already exists and is not a saved StateX model ({reason}); choose another folder "
            "(--overwrite replaces only a folder a StateX save wrote)"
        )
    if not overwrite:
        raise StateXUserError(f"{label} already exists; choose another folder, or pass --overwrite to replace it")
    check_writable(resolved, label)  # replacing renames it: its parent must take writes
    return resolved


def check_output_file(
    path: str | Path,
    *,
    label: str,
    replaceable: Callable[[Path], bool],
    kind: str,
) -> Path:
    """Check, before any work, that a command may write the file ``path``; returns it resolved.

    An existing file is replaced only when ``replaceable(path)`` says it is the command's own earlier
    output (``kind`` names what that is in the message).
    """
    resolved = Path(path).expanduser().resolve()
    if resolved.is_dir():
        raise StateXUserError(f"{label} is a folder; give a file path")
    if resolved.exists() and not replaceable(resolved):
        raise StateXUserError(f"{label} already exists and is not {kind}; choose another file name")
    check_writable(resolved, label)
    if resolved.exists() and not os.access(resolved, os.W_OK):
        raise StateXUserError(f"cannot write {label}: the file is read-only; choose another file name")
    return resolved


__all__ = ["check_output_file", "check_output_folder", "check_place", "check_writable", "unsaved_reason"]
