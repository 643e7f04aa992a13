"""Packages that import what they export on first use, as transformers' own ``_LazyModule`` does.

``statex-hf --help`` and a bad argument must answer before torch loads, but the command modules live
in packages (``statex_hf.conversion.cli``) whose ``__init__`` would otherwise import the heavy
modules they export. :func:`lazy_exports` keeps the package's public names and imports each one's
module when the name is first used.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping


class _LazyPackage(types.ModuleType):
    """A package whose exported names (``_lazy_exports``: name -> defining module) import on first access."""

    def __getattr__(self, name: str) -> object:
        module = self.__dict__.get("_lazy_exports", {}).get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value: object) -> None:
        # Importing a submodule binds it on its package. Where the package exports a function of the
        # same name (statex_hf.conversion.convert, statex_hf.training.posttrain), the name keeps
        # meaning the function, as it did when the package imported everything up front.
        if isinstance(value, types.ModuleType) and name in self.__dict__.get("_lazy_exports", {}):
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__dict__.get("_lazy_exports", {})))


def lazy_exports(package: str, exports: Mapping[str, str]) -> None:
    """Make ``package`` (its ``__init__`` calls this with ``__name__``) import each export's module on first use.

    Args:
        package: the package's module name.
        exports: public name -> the module that defines it.
    """
    module = sys.modules[package]
    module.__dict__["_lazy_exports"] = dict(exports)
    module.__class__ = _LazyPackage


__all__ = ["lazy_exports"]
