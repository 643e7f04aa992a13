"""Hub side of a StateX checkpoint: the remote-code bundle (so ``trust_remote_code=True`` works without
``statex_hf`` installed) and the push of a finished folder in one commit.

Every save of a StateX config writes the bundle beside it (``statex_hf.modeling.remote_code``), so
every folder a StateX model is saved to (``save_pretrained``, ``Trainer`` checkpoints, ``push_to_hub``,
``convert``) is a self-contained Hub repo.

The bundle is the model's own source, flattened: every ``statex_hf.*`` module the modeling file
needs (configuration, modeling, cache, kernels, ...) is copied next to the weights under a flat
name, and its ``from statex_hf.a.b import x`` lines become ``from .a_b import x``, the relative
form transformers' dynamic-module loader resolves and downloads.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from transformers import PretrainedConfig

from statex_hf.families import FAMILIES

PACKAGE = "statex_hf"


class HubPushError(RuntimeError):
    """The upload failed; the repo is left as it was (the Hub applies a commit all or nothing)."""


@dataclass(frozen=True)
class RemoteCode:
    """The entry modules and classes of one family; ``auto_map`` points at their flattened copies."""

    config_module: str
    modeling_module: str
    config_class: str
    base_class: str
    causal_lm_class: str

    def auto_map(self) -> dict[str, str]:
        config_file, modeling_file = flat_name(self.config_module), flat_name(self.modeling_module)
        return {
            "AutoConfig": f"{config_file}.{self.config_class}",
            "AutoModel": f"{modeling_file}.{self.base_class}",
            "AutoModelForCausalLM": f"{modeling_file}.{self.causal_lm_class}",
        }


# Per family (registry name), the classes its bundle carries.
REMOTE_CODE = {
    family.name: RemoteCode(
        family.config_module,
        family.modeling_module,
        family.config_class_name,
        family.model_class_name,
        family.causal_lm_class_name,
    )
    for family in FAMILIES.values()
}


def flat_name(module: str) -> str:
    """File stem of ``module`` in the bundle: the model files keep their names, the rest join their path."""
    parts = module.split(".")[1:]
    if parts[:1] == ["modeling"] and parts[-1].startswith(("configuration_", "modeling_")):
        return parts[-1]
    return "_".join(parts)


def _module_file(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec is not None and spec.origin else None


def _is_package(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.submodule_search_locations is not None


def _rewrite(module: str, source: str) -> tuple[str, list[str]]:
    """``source`` with its ``statex_hf`` imports made relative to the flat bundle, and the modules it needs."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []
    needed: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise ValueError(f"{module}: relative imports cannot be bundled; import statex_hf.* absolutely")
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names):
            raise ValueError(f"{module}: `import {node.names[0].name}` cannot be bundled; use `from ... import ...`")
        if not (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PACKAGE):
            continue
        indent = lines[node.lineno - 1][: node.col_offset]
        statements = []
        plain = []
        for alias in node.names:
            submodule = f"{node.module}.{alias.name}"
            if _is_package(node.module) and _module_file(submodule) is not None:
                # A module imported as an object: bind it, and give transformers' loader (which only
                # follows `from .x import y` lines) a line that makes it fetch the file.
                flat = flat_name(submodule)
                statements.append(f"from .{flat} import __name__ as _bundled_{flat}  # noqa: F401")
                statements.append(f"from . import {flat} as {alias.asname or alias.name}")
                needed.append(submodule)
            else:
                plain.append(alias.name if alias.asname is None else f"{alias.name} as {alias.asname}")
        if plain:
            statements.insert(0, f"from .{flat_name(node.module)} import {', '.join(plain)}")
            needed.append(node.module)
        edits.append((node.lineno, node.end_lineno, "".join(f"{indent}{s}\n" for s in statements)))
    for start, end, text in sorted(edits, reverse=True):
        lines[start - 1 : end] = [text]
    return "".join(lines), needed


def remote_code_files(family: str) -> dict[str, str]:
    """Flat file name -> source for everything the family's modeling file imports from ``statex_hf``."""
    return dict(_bundle(family))


@functools.cache
def _bundle(family: str) -> tuple[tuple[str, str], ...]:
    # Built once per process: Trainer saves a checkpoint every save_steps, and the source does not change.
    code = REMOTE_CODE[family]
    files: dict[str, str] = {}
    todo = [code.config_module, code.modeling_module]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:
            raise ValueError(f"cannot find module {module} to bundle")
        text, needed = _rewrite(module, path.read_text(encoding="utf-8"))
        header = f"# Bundled by statex-hf from {module} for trust_remote_code; edit the package, not this copy.\n"
        files[f"{flat_name(module)}.py"] = header + text
        todo.extend(needed)
    return tuple(sorted(files.items()))


def write_remote_code(folder: Path, family: str, config: PretrainedConfig) -> None:
    """Copy the flattened model code into ``folder`` and point ``config.auto_map`` at it (save the config after)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in _bundle(family):
        (folder / name).write_text(text, encoding="utf-8")
    config.auto_map = REMOTE_CODE[family].auto_map()


def family_of(config: PretrainedConfig) -> str | None:
    """The family whose bundle holds ``config``'s exact class; ``None`` for any other class (a user's subclass)."""
    cls = type(config)
    for family, code in REMOTE_CODE.items():
        if (cls.__module__, cls.__name__) == (code.config_module, code.config_class):
            return family
    return None


def write_remote_code_for(config: PretrainedConfig, save_directory: str | os.PathLike) -> None:
    """The config-save hook: write the bundle of ``config``'s family into ``save_directory``, set ``auto_map``."""
    family = family_of(config)
    if family is not None:
        write_remote_code(Path(save_directory), family, config)


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` in a single commit; returns the commit URL.

    Weight shards and code files on the Hub that the folder no longer has are deleted in the same
    commit, so pushing again never leaves a stale shard beside the new ones.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=commit_message or "Upload StateX checkpoint converted with statex-hf",
            delete_patterns=["*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.py"],
        )
    except Exception as err:  # noqa: BLE001 - transport, auth and LFS errors all mean "nothing was committed"
        cause = err.__cause__ if isinstance(err, RuntimeError) and err.__cause__ is not None else err
        detail = " ".join(f"{err} {cause if cause is not err else ''}".split())
        raise HubPushError(f"push to {repo_id} failed: {detail}") from err
    return info.commit_url
