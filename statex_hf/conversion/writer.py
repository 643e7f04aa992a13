"""Atomic output: everything is written into a temporary folder beside the destination and renamed at the end.

An interrupted or failed conversion therefore leaves nothing at the destination (the temporary
folder is removed on any exception, including KeyboardInterrupt; the command line turns SIGTERM into
one). Which destinations may be written or replaced is :mod:`statex_hf.outputs`' rule.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from statex_hf.expansion.errors import StateXInputError
from statex_hf.outputs import check_output_folder

DEFAULT_MAX_SHARD_BYTES = 5_000_000_000  # "5GB", save_pretrained's default


def _umask() -> int:
    """The process's umask (reading it means setting it; it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_destination(dest: Path, overwrite: bool, inputs: Mapping[str, str | Path] | None = None) -> Path:
    """Fail before any work if ``dest`` may not be written (:mod:`statex_hf.outputs`); returns it resolved."""
    return check_output_folder(dest, overwrite=overwrite, inputs=inputs)


@contextmanager
def atomic_folder(dest: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``dest`` when the block finishes without an exception.

    An existing ``dest`` is moved aside first and removed only once the new folder is in place, so a
    crash never loses both.
    """
    dest = check_destination(dest, overwrite)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        # mkdtemp makes the folder 0700; the output gets the mode any new folder gets (save_pretrained's).
        tmp.chmod(0o777 & ~_umask())
    except OSError as err:
        raise StateXInputError(f"cannot create {dest}: {err.strerror}; choose a folder you can write to") from None
    try:
        yield tmp
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            dest.rename(old / dest.name)
            tmp.rename(dest)
            shutil.rmtree(old)
        else:
            tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class ShardWriter:
    """Collects tensors and writes safetensors shards of at most ``max_shard_bytes``, then the index.

    Names follow ``save_pretrained``: ``model.safetensors`` for one shard, else
    ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``.
    """

    def __init__(self, folder: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
        self.folder = folder
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._parts: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0
        self.num_parameters = 0
        self.dtypes: Counter[torch.dtype] = Counter()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self.flush()
        # safetensors refuses tensors sharing storage (tied or memory-mapped views): give each its own.
        self._pending[name] = tensor.detach().contiguous().clone()
        self._pending_bytes += size
        self.total_bytes += size
        self.num_parameters += tensor.numel()
        if tensor.is_floating_point():
            self.dtypes[tensor.dtype] += tensor.numel()

    def flush(self) -> None:
        if not self._pending:
            return
        path = self.folder / f".part-{len(self._parts):05d}.safetensors"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._parts.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def finish(self) -> list[Path]:
        """Write the last shard, give every shard its final name, write the index when sharded."""
        self.flush()
        n = len(self._parts)
        if n == 1:
            final = self.folder / constants.SAFETENSORS_SINGLE_FILE
            self._parts[0][0].rename(final)
            return [final]
        weight_map: dict[str, str] = {}
        finals = []
        for i, (path, names) in enumerate(self._parts, start=1):
            final = self.folder / f"model-{i:05d}-of-{n:05d}.safetensors"
            path.rename(final)
            finals.append(final)
            weight_map.update(dict.fromkeys(names, final.name))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.folder / constants.SAFETENSORS_INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return finals
