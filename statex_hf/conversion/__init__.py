"""Checkpoint formats in and out: readers for fla GLA / mamba_ssm / transformers Mamba2, the atomic writer,
and :func:`convert`, which runs the StateX expansion between them."""

from statex_hf.conversion.convert import ConversionReport, convert

__all__ = ["ConversionReport", "convert"]
