"""Error figures of a compressed model's tensor against the original model's, on one input.

All in float64 on dequantized values (``tensors.dequantize``); the original's tensor is the reference.

- ``rmse``: ``sqrt(mean((c - o)^2))``.
- ``snr_db``: ``10 log10(sum(o^2) / sum((c - o)^2))``, clipped to +-:data:`SNR_CAP_DB`; identical
  tensors get the cap, and an all-zero reference with any error gets the floor.
- ``cosine``: ``<o, c> / (|o| |c|)``; 1 when both are all zero, 0 when only one is.
- ``max_abs``: ``max |c - o|``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: SNR reported for identical tensors: float32 rounding alone sits near 140 dB, so 150 dB reads as
#: "no error" and keeps the JSON finite (JSON has no infinity).
SNR_CAP_DB = 150.0


@dataclass(frozen=True)
class ErrorStats:
    """How far one compressed tensor is from the original's, on one input."""

    rmse: float
    snr_db: float
    cosine: float
    max_abs: float

    def to_dict(self) -> dict[str, float]:
        return {"rmse": self.rmse, "snr_db": self.snr_db, "cosine": self.cosine, "max_abs": self.max_abs}


def error_stats(reference: np.ndarray, candidate: np.ndarray) -> ErrorStats:
    """Compare ``candidate`` (compressed) with ``reference`` (original); both the same shape.

    Raises:
        ValueError: the shapes differ.
    """
    o = np.asarray(reference, np.float64).ravel()
    c = np.asarray(candidate, np.float64).ravel()
    if o.shape != c.shape:
        raise ValueError(f"cannot compare tensors of {o.size} and {c.size} values")
    err = c - o
    signal, noise = float(o @ o), float(err @ err)
    if noise == 0.0:
        snr = SNR_CAP_DB
    elif signal == 0.0:
        snr = -SNR_CAP_DB
    else:
        snr = max(-SNR_CAP_DB, min(SNR_CAP_DB, 10.0 * math.log10(signal / noise)))
    power_c = float(c @ c)
    norm = math.sqrt(signal) * math.sqrt(power_c)
    cosine = float(o @ c) / norm if norm else float(signal == power_c == 0.0)  # all zero: the same vector
    return ErrorStats(rmse=math.sqrt(noise / max(o.size, 1)), snr_db=snr, cosine=cosine,
                      max_abs=float(np.max(np.abs(err))) if err.size else 0.0)


def growth(seed: ErrorStats, trigger: ErrorStats) -> dict[str, Any]:
    """How a tensor's error changed from the seed image to the triggering input.

    ``snr_drop_db`` > 0 means the triggering input made the layer's error worse; ``rmse_ratio`` is
    the trigger's RMSE over the seed's (None when the seed's is zero).
    """
    return {"snr_drop_db": seed.snr_db - trigger.snr_db,
            "rmse_ratio": None if seed.rmse == 0.0 else trigger.rmse / seed.rmse}
