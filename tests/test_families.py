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


THIRD_FAMILY_FILES = {
    "__init__.py": "",
    "configuration_statex_foo.py": """
from statex_hf.modeling.mamba2.configuration_statex_mamba2 import StateXMamba2Config


class StateXFooConfig(StateXMamba2Config):
    model_type = "statex_foo"

    def __init__(self, **kwargs):  # its own __init__, as every transformers config has
        super().__init__(**kwargs)
""",
    "modeling_statex_foo.py": """
from statex_hf.modeling.mamba2.modeling_statex_mamba2 import StateXMamba2ForCausalLM, StateXMamba2Model
from statex_third_family.configuration_statex_foo import StateXFooConfig


class StateXFooModel(StateXMamba2Model):
    config_class = StateXFooConfig


class StateXFooForCausalLM(StateXMamba2ForCausalLM):
    config_class = StateXFooConfig
""",
    "expansion_foo.py": """
from statex_hf.expansion.mamba2 import Mamba2Expansion
from statex_hf.families import get_family


class FooExpansion(Mamba2Expansion):
    family = get_family("foo")
""",
}


def test_a_third_family_is_its_modules_and_one_registry_entry(tmp_path, monkeypatch, capsys):
    """The README's recipe, checked: a family "foo" (Mamba2's modules under new names, sources with
    model_type "foo") gets `statex-hf convert foo`, its state option, the model card, Auto loading, the
    training layout and the demo's model from its modules and one entry, with no other edit."""
    import json

    import torch
    from source_checkpoints import VOCAB, write_transformers_mamba2
    from transformers import AutoModelForCausalLM

    from statex_hf import register_auto_classes
    from statex_hf.cli import main
    from statex_hf.training.demo import source_config
    from statex_hf.training.families import layout_of

    package = tmp_path / "statex_third_family"
    package.mkdir()
    for name, text in THIRD_FAMILY_FILES.items():
        (package / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    foo = dataclasses.replace(
        families.MAMBA2,
        name="foo",
        title="Foo",
        model_type="statex_foo",
        class_prefix="StateXFoo",
        modeling_package="statex_third_family",
        expansion="statex_third_family.expansion_foo.FooExpansion",
        source_model_type="foo",
        source_title="Foo",
        source_formats=("foo-native",),
        card_method="foo's state grows",
    )
    monkeypatch.setitem(families.FAMILIES, "foo", foo)
    register_auto_classes()

    source = write_transformers_mamba2(tmp_path / "source", num_layers=3)
    config = json.loads((tmp_path / "source" / "config.json").read_text())
    (tmp_path / "source" / "config.json").write_text(json.dumps({**config, "model_type": "foo"}))
    argv = ["convert", "foo", tmp_path / "source", tmp_path / "out", "--every", "2", "--state-size", "16"]
    assert main([*map(str, argv), "--init", "zero", "--quiet"]) == 0
    assert "expanded layers: 0, 2 of 3" in capsys.readouterr().out

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(model).__name__ == "StateXFooForCausalLM" and model.config.statex_layers == [0, 2]
    ids = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():  # zero init: the expanded model computes what the source computed
        assert (model(ids).logits - source(ids).logits).abs().max() <= 1e-4
    card = (tmp_path / "out" / "README.md").read_text()
    assert "statex-hf convert foo" in card and "foo's state grows" in card
    assert layout_of(model) is foo.layout
    assert source_config("foo", VOCAB, 2)["model_type"] == "foo"
