"""Checkpoint formats in and out: readers for fla GLA / transformers, mamba_ssm and mistral Mamba2, the atomic writer,
and :func:`convert`, which runs the StateX expansion between them."""

from statex_hf.conversion.convert import ConversionReport, convert

__all__ = ["ConversionReport", "convert"]
