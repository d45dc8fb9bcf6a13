#!/usr/bin/env python3
"""Write host/search/normal_quantiles.npy: the standard normal's quantiles at 65,536 equally likely levels.

Entry i is round(2**20 * Phi^-1((i + 0.5) / 65536)) as int32 (so +-4.33 at the ends). The noise
operators turn a 16-bit uniform draw into a normal by looking it up (``mutations``): integers in a
committed file, so every platform gets the same noise bits without any transcendental function at
mutation time. Each quantile comes from Acklam's rational approximation refined by three Newton
steps on ``math.erfc`` (error far below the 2**-20 grid).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "host" / "search" / "normal_quantiles.npy"
LEVELS = 65536
SCALE = 2**20

_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
      -3.066479806614716e01, 2.506628277459239e00)
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
      -1.328068155288572e01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
      4.374664141464968e00, 2.938163982698783e00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)


def _acklam(p: float) -> float:
    if p < 0.02425:
        q = math.sqrt(-2 * math.log(p))
        return (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / \
            ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1)
    if p > 1 - 0.02425:
        return -_acklam(1 - p)
    q = p - 0.5
    r = q * q
    return (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q / \
        (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1)


def quantile(p: float) -> float:
    """Phi^-1(p), to about 1e-15."""
    x = _acklam(p)
    for _ in range(3):  # Newton on Phi(x) - p, Phi(x) = erfc(-x / sqrt 2) / 2
        error = 0.5 * math.erfc(-x / math.sqrt(2)) - p
        x -= error * math.sqrt(2 * math.pi) * math.exp(x * x / 2)
    return x


def table() -> np.ndarray:
    half = [round(SCALE * quantile((i + 0.5) / LEVELS)) for i in range(LEVELS // 2)]
    return np.asarray(half + [-v for v in reversed(half)], dtype=np.int32)  # exactly antisymmetric


def main() -> int:
    np.save(OUT, table())
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
