"""The family registry (statex_hf.families): every entry is whole, and an unknown family fails loudly."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from statex_hf import families
from statex_hf.conversion import convert
from statex_hf.conversion.readers import source_formats
from statex_hf.expansion import StateXInputError
from statex_hf.families import FAMILIES, UnknownFamilyError, family_of_model_type, family_of_source_format, get_family


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_entry_names_classes_that_exist_and_agree(name):
    family = get_family(name)
    assert family.config_class.model_type == family.model_type
    assert family.causal_lm_class.config_class is family.config_class
    assert family.model_class.config_class is family.config_class
    assert family.expansion_class.family is family
    assert family_of_model_type(family.model_type) is family
    assert family.init_modes[0] == "reinit"  # the paper's init is every family's default
    assert family.state_option.config_field in family.config_class().to_dict()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_source_format_of_an_entry_has_a_reader(name):
    family = get_family(name)
    read = [fmt.name for owner, fmt in source_formats() if owner is family]
    assert read == list(family.source_formats)
    assert all(family_of_source_format(fmt) is family for fmt in read)


def test_an_unknown_family_fails_loudly(tmp_path):
    with pytest.raises(UnknownFamilyError, match="unknown family 'rwkv'; choose one of gla, mamba2"):
        get_family("rwkv")
    with pytest.raises(UnknownFamilyError, match="model_type='llama' is not a StateX model"):
        family_of_model_type("llama")
    with pytest.raises(StateXInputError, match="unknown family 'rwkv'"):
        convert("rwkv", str(tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_registry_entry_listing_a_format_without_a_reader_is_an_error(monkeypatch):
    """A third family added to the registry but not to the readers cannot silently read as another family."""
    third = dataclasses.replace(
        families.MAMBA2, name="third", model_type="statex_third", source_formats=("third-native", "third-special")
    )
    monkeypatch.setitem(families.FAMILIES, "third", third)
    with pytest.raises(KeyError, match="'third-special', which has no reader"):
        source_formats()


def test_another_familys_state_option_is_refused_with_this_familys(tmp_path):
    with pytest.raises(StateXInputError, match="--state-size is a Mamba2 option; GLA grows its state with --num-heads"):
        convert("gla", str(tmp_path), tmp_path / "out", state_size=512)
    with pytest.raises(StateXInputError, match="--num-heads is a GLA option; Mamba2 grows its state with --state-size"):
        convert("mamba2", str(tmp_path), tmp_path / "out", num_heads=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_groups'"):
        convert("mamba2", str(tmp_path), tmp_path / "out", num_groups=2)


def _family_words() -> set[str]:
    return {word for f in FAMILIES.values() for word in (f.name, f.model_type, f.source_model_type)}


def _branches_on_a_family_name(tree: ast.AST, words: set[str]) -> list[int]:
    """Lines comparing with a family's name or model type (``x == "gla"``, ``x in ("gla", "mamba2")``)."""

    def names_a_family(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in words
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(names_a_family(element) for element in node.elts)
        return False

    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare) and any(names_a_family(side) for side in (node.left, *node.comparators))
    ]


def test_no_code_outside_the_registry_branches_on_a_family_name():
    """What a family is lives in statex_hf/families.py; a branch elsewhere would take a third family for another."""
    root = Path(__file__).resolve().parents[1]
    words = _family_words()
    found = {}
    for folder in ("statex_hf", "modeling", "kernels", "conversion_scripts"):
        for path in sorted((root / folder).rglob("*.py")):
            if path == root / "statex_hf" / "families.py":
                continue
            lines = _branches_on_a_family_name(ast.parse(path.read_text(), str(path)), words)
            if lines:
                found[str(path.relative_to(root))] = lines
    assert not found
    assert _branches_on_a_family_name(ast.parse('if family == "gla" or m in ("x", "statex_mamba2"): pass'), words)
