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


def looks_like_hub_id(data: str) -> bool:
    """``name`` or ``org/name`` without a file extension; anything else is meant as a local path."""
    parts = data.split("/")
    if len(parts) > 2 or data.startswith((".", "~")) or _extension(data) in BUILDERS:
        return False
    return all(part and part.replace("-", "").replace("_", "").replace(".", "").isalnum() for part in parts)


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

    files = local_data_files(data)
    if files is None:
        if not looks_like_hub_id(data):
            raise PosttrainDataNotFound(f"{data}: no such file or directory (and not a Hub dataset id like org/name)")
        return load_dataset(data, dataset_config, split=split, streaming=streaming, cache_dir=cache_dir)
    builder = builder_for(files)
    kwargs = {"sample_by": text_sample_by} if builder == "text" else {}
    return load_dataset(
        builder, data_files={"train": files}, split="train", streaming=streaming, cache_dir=cache_dir, **kwargs
    )


__all__ = ["BUILDERS", "builder_for", "load_text_dataset", "local_data_files"]
