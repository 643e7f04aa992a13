"""Training text through the ``datasets`` library: local text / jsonl / parquet / csv files, or a Hub dataset.

Local files pick the ``datasets`` builder by extension. A plain-text file is one document by
default (long-context post-training wants whole documents; ``text_sample_by="paragraph"`` or
``"line"`` splits it). ``streaming=True`` reads lazily, for corpora larger than the disk cache.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from typing import TYPE_CHECKING

from statex_hf.paths import looks_like_local_path
from statex_hf.training.errors import PosttrainDataNotFound, PosttrainInputError

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

# File extension -> ``datasets`` packaged builder.
BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}
COMPRESSION = (".gz", ".bz2", ".xz", ".zst")


def _extension(path: str) -> str:
    stem = path
    for suffix in COMPRESSION:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return os.path.splitext(stem)[1].lower()


def local_data_files(data: str) -> list[str] | None:
    """The files a local ``data`` argument names (a file, a directory or a glob), or ``None`` for a Hub id."""
    if os.path.isdir(data):
        files = sorted(
            os.path.join(root, name)
            for root, dirs, names in os.walk(data)
            # Hidden folders (.git, .cache) hold no training data.
            if not any(part.startswith(".") for part in os.path.relpath(root, data).split(os.sep) if part != ".")
            for name in names
            if _extension(name) in BUILDERS and not name.startswith(".")
        )
        if not files:
            raise PosttrainDataNotFound(f"{data}: no data files ({', '.join(sorted(BUILDERS))}) in this directory")
        return files
    if os.path.isfile(data):
        return [data]
    if glob.has_magic(data):
        files = sorted(glob.glob(data, recursive=True))
        if not files:
            raise PosttrainDataNotFound(f"{data}: the pattern matches no file")
        return files
    return None


def is_local_data(data: str) -> bool:
    """``data`` names local files: a glob, a data-file extension, or a local path by the one shared rule."""
    return glob.has_magic(data) or _extension(data) in BUILDERS or looks_like_local_path(data)


def check_data_files(data: str, files: list[str]) -> None:
    """The files hold something: an empty file is one line here, not a ``StopIteration`` from inside ``datasets``."""
    if all(os.path.getsize(f) == 0 for f in files):
        which = files[0] if len(files) == 1 else f"all {len(files)} data files in {data}"
        raise PosttrainInputError(f"{which} is empty; give data files that hold documents")


def find_data_files(data: str) -> list[str] | None:
    """The local files ``data`` names, checked (they exist and are not all empty), or ``None`` for a Hub dataset id."""
    files = local_data_files(data)
    if files is None:
        if is_local_data(data):
            raise PosttrainDataNotFound(
                f"{data}: no such file or directory (a local path; a Hub dataset id looks like org/name)"
            )
        return None
    check_data_files(data, files)
    builder_for(files)  # one known format
    return files


def builder_for(files: list[str]) -> str:
    """The one ``datasets`` builder for these files; mixed formats are an error."""
    kinds = Counter(BUILDERS.get(_extension(f)) for f in files)
    if None in kinds:
        bad = next(f for f in files if BUILDERS.get(_extension(f)) is None)
        raise PosttrainInputError(f"{bad}: unknown data file type; use one of {', '.join(sorted(BUILDERS))}")
    if len(kinds) > 1:
        raise PosttrainInputError(f"data files mix formats ({', '.join(sorted(kinds))}); give files of one format")
    return next(iter(kinds))


def load_text_dataset(
    data: str,
    *,
    split: str = "train",
    dataset_config: str | None = None,
    streaming: bool = False,
    text_sample_by: str = "document",
    cache_dir: str | None = None,
) -> Dataset | IterableDataset:
    """Load training text as a ``datasets`` dataset (one row per document).

    Args:
        data: a local file, directory or glob (``.txt``, ``.md``, ``.json``, ``.jsonl``, ``.parquet``,
            ``.csv``, optionally compressed), or a Hub dataset id (``org/name``).
        split: the split to read (local files are all ``train``).
        dataset_config: the Hub dataset's configuration name, if it has several.
        streaming: read lazily (an ``IterableDataset``); training then needs ``max_steps``.
        text_sample_by: for plain-text files: ``"document"`` (one file, one document),
            ``"paragraph"`` or ``"line"``.
        cache_dir: the ``datasets`` cache for this load.
    """
    from datasets import load_dataset  # imported with training, not with the package

    files = find_data_files(data)
    if files is None:
        return load_dataset(data, dataset_config, split=split, streaming=streaming, cache_dir=cache_dir)
    builder = builder_for(files)
    kwargs = {"sample_by": text_sample_by} if builder == "text" else {}
    return load_dataset(
        builder, data_files={"train": files}, split="train", streaming=streaming, cache_dir=cache_dir, **kwargs
    )


__all__ = ["BUILDERS", "builder_for", "find_data_files", "load_text_dataset", "local_data_files"]
