"""The success criterion: when do the two models' outputs count as a deviation?

DFlare's criterion is that the top-1 labels differ, ``argmax(p_orig) != argmax(p_cps)``. A
quantized output has few distinct values (an int8 softmax has 256), so two classes often share
the top probability, and ``argmax`` then picks the lower class. That changes the deployed label,
but not with any confidence. ``ignore_ties`` counts a deviation only when both models' top-1
labels are unique.
"""

from __future__ import annotations

import numpy as np


def top1_tied(probs: np.ndarray) -> np.ndarray:
    """Per row (last axis: classes): True when two or more classes share the largest probability."""
    probs = np.asarray(probs)
    return np.count_nonzero(probs == probs.max(axis=-1, keepdims=True), axis=-1) > 1


def deviates(probs_original: np.ndarray, probs_compressed: np.ndarray, ignore_ties: bool = False) -> np.ndarray:
    """Per row: the models' top-1 labels differ (and, with ``ignore_ties``, neither top-1 is a tie)."""
    differ = np.argmax(probs_original, axis=-1) != np.argmax(probs_compressed, axis=-1)
    if ignore_ties:
        differ &= ~top1_tied(probs_original) & ~top1_tied(probs_compressed)
    return differ
