"""torch's elementwise formulas in Triton, so that a kernel that inlines them gives torch's result.

On the GPU ``tl.exp`` is an approximation (``ex2.approx`` of ``x * log2(e)``) and fp32 ``/`` is
``div.full`` (not correctly rounded); torch's CUDA kernels call ``expf``, ``log1pf`` and IEEE division. The
functions here call the same libdevice routines and ``div_rn``, with torch's formulas:

    silu(x)       = x / (1 + exp(-x))                          (ATen's ActivationSiluKernel)
    logsigmoid(x) = min(x, 0) - log1p(exp(-|x|))               (ATen's ActivationLogSigmoidKernel)

All in fp32 (torch's ``opmath`` for half types). The Triton interpreter (CPU tests) has no libdevice: there
``exp`` is numpy's and ``log1p`` is Goldberg's ``log(u) * z / (u - 1)`` with ``u = 1 + z``, exact to a few
ulp where ``log(1 + z)`` loses every digit of a small ``z``.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

if INTERPRETED:

    @triton.jit
    def exp(x):
        return tl.exp(x)

    @triton.jit
    def log1p(x):
        u = 1.0 + x
        return tl.where(u == 1.0, x, tl.log(u) * tl.math.div_rn(x, tl.where(u == 1.0, 1.0, u - 1.0)))

else:
    from triton.language.extra import libdevice

    @triton.jit
    def exp(x):
        return libdevice.exp(x)

    @triton.jit
    def log1p(x):
        return libdevice.log1p(x)


@triton.jit
def silu(x):
    """fp32 ``x / (1 + exp(-x))``, torch's formula, correctly rounded division."""
    return tl.math.div_rn(x, 1.0 + exp(-x))


@triton.jit
def logsigmoid(x):
    """fp32 ``min(x, 0) - log1p(exp(-|x|))``, torch's formula (no overflow for any x)."""
    return tl.minimum(x, 0.0) - log1p(exp(-tl.abs(x)))
