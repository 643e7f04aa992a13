"""The model card of a converted checkpoint: it keeps the source's license, and its snippet runs as written
where statex_hf is not installed (no ``[y/N]`` remote-code prompt waiting on stdin)."""

from __future__ import annotations

import re

import pytest
from huggingface_hub import ModelCard
from source_checkpoints import write_fla_gla
from without_statex_hf import run_without_statex_hf

from statex_hf.conversion import convert

SOURCE_CARD = """---
license: other
license_name: source-model-license
license_link: https://example.org/license
---
# A GLA model
"""


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    write_fla_gla(root / "source")
    (root / "source" / "README.md").write_text(SOURCE_CARD)
    convert("gla", str(root / "source"), root / "out", layers=[0], progress=False)
    return root / "out"


def test_the_card_carries_the_sources_license(converted, tmp_path):
    data = ModelCard.load(converted / "README.md").data
    assert (data.license, data.license_name, data.license_link) == (
        "other",
        "source-model-license",
        "https://example.org/license",
    )
    # A source without a card (or without a license in it) gives a card without one.
    write_fla_gla(tmp_path / "bare")
    convert("gla", str(tmp_path / "bare"), tmp_path / "out", progress=False)
    assert ModelCard.load(tmp_path / "out" / "README.md").data.license is None


def test_the_cards_snippet_runs_as_written_without_statex_hf(converted):
    card = (converted / "README.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(snippets) == 1 and str(converted) in snippets[0]
    result = run_without_statex_hf(snippets[0] + "\nprint(type(model).__name__, type(tokenizer).__name__)\n")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.split()[-2] == "StateXGLAForCausalLM"
    assert "[y/N]" not in result.stdout + result.stderr
