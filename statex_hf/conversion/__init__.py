"""Checkpoint formats in and out: readers for fla GLA / transformers, mamba_ssm and mistral Mamba2, the atomic writer,
and :func:`convert`, which runs the StateX expansion between them (imported on first use)."""

from statex_hf.lazy import lazy_exports

lazy_exports(__name__, {"ConversionReport": "statex_hf.conversion.convert", "convert": "statex_hf.conversion.convert"})

__all__ = ["ConversionReport", "convert"]
