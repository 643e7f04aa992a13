"""The distribution ships every package of the tree (an editable install would hide a missing one)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALLED_AS = {"statex_hf": "statex_hf", "modeling": "statex_hf.modeling", "kernels": "statex_hf.kernels"}


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for top, name in INSTALLED_AS.items():
        for init in (ROOT / top).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *relative)))
    assert found - listed == set(), f"add these packages to [tool.setuptools] packages: {sorted(found - listed)}"


def test_kernels_and_modeling_import_only_under_statex_hf():
    """A top-level `kernels` would shadow Hugging Face's `kernels` package that transformers probes."""
    for top in ("kernels", "modeling"):
        for path in (ROOT / top).rglob("*.py"):
            text = path.read_text()
            assert "from kernels" not in text and "import kernels" not in text, path
            assert "from modeling" not in text and "import modeling" not in text, path


def test_every_data_file_of_the_package_is_listed_as_package_data():
    """The shipped accelerate configs and the demo corpus must reach a wheel, not only an editable install."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["statex_hf"]
    data = [
        path.relative_to(ROOT / "statex_hf")
        for path in (ROOT / "statex_hf").rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc")
    ]
    assert data, "statex_hf ships data files"
    unlisted = [str(path) for path in data if not any(path.match(pattern) for pattern in patterns)]
    assert unlisted == [], f"add to [tool.setuptools.package-data] statex_hf: {unlisted}"
